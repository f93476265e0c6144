// Shared handle types of the graphdsl._ggml extension.
//
// The extension binds ggml mechanics only: contexts, tensors, op builders, the backend scheduler
// and buffers. Shapes here are in ggml's `ne` order (innermost first); graphdsl/backends/ggml.py
// is the one place that converts from NumPy order. Every precondition that ggml would
// GGML_ASSERT is checked in Python before these functions are called.
#pragma once

#include <ggml.h>
#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <pybind11/pybind11.h>

#include <array>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace py = pybind11;

namespace gd {

// Owns a ggml_context created with no_alloc: tensors get memory from backend buffers or the
// scheduler, never from the context itself.
struct Context {
    ggml_context * ctx = nullptr;
    size_t graph_size = 0;     // the one graph this context has room for (0: none)
    bool graph_made = false;
    explicit Context(size_t n_tensors, size_t graph_size);
    ~Context();
    Context(const Context &) = delete;
    Context & operator=(const Context &) = delete;
};

// A non-owning tensor handle. It keeps its context alive so that a handle held in Python can
// never point into freed memory.
struct Tensor {
    ggml_tensor * t = nullptr;
    std::shared_ptr<Context> owner;
};

// ggml_backend_sched_split_graph rewrites node->src[] in place to point at the copies it makes
// for inputs that live on another backend (CPU input -> RPC/CUDA). Those copies live in the
// scheduler's own context, which the next split frees, so splitting the same cgraph twice (reserve,
// then alloc; or a second input-shape program in between) finds stale copies instead of the real
// inputs and silently skips the upload. llama.cpp rebuilds its graph each time; we keep the graph
// and put the sources back before every split instead.
using Sources = std::unordered_map<ggml_tensor *, std::array<ggml_tensor *, GGML_MAX_SRC>>;

struct Graph {
    ggml_cgraph * g = nullptr;
    std::shared_ptr<Context> owner;    // holds the graph's node arrays
    std::shared_ptr<Context> tensors;  // holds its tensors (the same context, or the lowering's)
    std::shared_ptr<Sources> sources = std::make_shared<Sources>();

    // Restore the sources recorded before the first split; record those of nodes added since.
    void restore_sources() {
        for (int i = 0; i < ggml_graph_n_nodes(g); ++i) {
            ggml_tensor * node = ggml_graph_node(g, i);
            auto [it, fresh] = sources->try_emplace(node);
            for (int j = 0; j < GGML_MAX_SRC; ++j) {
                if (fresh) it->second[j] = node->src[j];
                else node->src[j] = it->second[j];
            }
        }
    }
};

// Thrown before a builder would overrun its context (ggml asserts there); the lowering catches
// it and starts again with a larger context.
struct ContextFull : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The context, if it has room for the tensors one builder makes (ggml_conv_2d makes several),
// or ContextFull.
inline ggml_context * fit(const std::shared_ptr<Context> & c, size_t n_new = 8) {
    size_t reserved = c->graph_made ? 0 : ggml_graph_overhead_custom(c->graph_size, false);
    if (ggml_get_mem_size(c->ctx) < ggml_used_mem(c->ctx) + reserved + n_new * ggml_tensor_overhead())
        throw ContextFull("ggml context is full (" + std::to_string(ggml_used_mem(c->ctx)) + " bytes used)");
    return c->ctx;
}

inline ggml_tensor * raw(const Tensor & x) {
    if (!x.t) throw std::invalid_argument("null tensor handle");
    return x.t;
}

// A device's name as graphdsl shows and accepts it: ggml's own name, except that every RPC server
// names its first device "RPC0", so RPC devices carry their endpoint ("RPC0[host:port]", which is
// also the name of the backend ggml creates for them).
inline std::string device_id(ggml_backend_dev_t dev) {
    std::string name = ggml_backend_dev_name(dev);
    if (std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev))) == "RPC")
        return name + "[" + ggml_backend_dev_description(dev) + "]";
    return name;
}

inline ggml_backend_dev_t find_device(const std::string & id) {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i)
        if (device_id(ggml_backend_dev_get(i)) == id) return ggml_backend_dev_get(i);
    return nullptr;
}

void register_ops(py::module_ & m);
void register_sched(py::module_ & m);

}  // namespace gd
