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

#include <memory>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace gd {

// Owns a ggml_context created with no_alloc: tensors get memory from backend buffers or the
// scheduler, never from the context itself.
struct Context {
    ggml_context * ctx = nullptr;
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

struct Graph {
    ggml_cgraph * g = nullptr;
    std::shared_ptr<Context> owner;
};

inline ggml_tensor * raw(const Tensor & x) {
    if (!x.t) throw std::invalid_argument("null tensor handle");
    return x.t;
}

void register_ops(py::module_ & m);
void register_sched(py::module_ & m);

}  // namespace gd
