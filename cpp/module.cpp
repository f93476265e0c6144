// graphdsl._ggml: context, tensor handles and the device registry.
#include "common.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <vector>

namespace gd {

Context::Context(size_t n_tensors, size_t graph_size) : graph_size(graph_size) {
    ggml_init_params params = {
        /*.mem_size   =*/ n_tensors * ggml_tensor_overhead() + ggml_graph_overhead_custom(graph_size, false),
        /*.mem_buffer =*/ nullptr,
        /*.no_alloc   =*/ true,
    };
    ctx = ggml_init(params);
    if (!ctx) throw std::runtime_error("ggml_init failed");
}

Context::~Context() {
    if (ctx) ggml_free(ctx);
}

static int g_log_level = GGML_LOG_LEVEL_WARN;

static void log_callback(ggml_log_level level, const char * text, void *) {
    // CONT lines continue the previous message; show them only when everything is shown.
    if (level == GGML_LOG_LEVEL_CONT ? g_log_level <= GGML_LOG_LEVEL_DEBUG : level >= g_log_level) {
        fputs(text, stderr);
    }
}

static py::tuple tensor_ne(const Tensor & x) {
    auto * t = raw(x);
    return py::make_tuple(t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
}

static py::tuple tensor_nb(const Tensor & x) {
    auto * t = raw(x);
    return py::make_tuple(t->nb[0], t->nb[1], t->nb[2], t->nb[3]);
}

static py::list devices() {
    py::list out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        const char * type = "cpu";
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_GPU:   type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU:  type = "igpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_ACCEL: type = "accel"; break;
            default: break;
        }
        py::dict d;
        d["name"] = device_id(dev);
        d["description"] = ggml_backend_dev_description(dev);
        d["type"] = type;
        d["memory_free"] = free;
        d["memory_total"] = total;
        d["backend"] = ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev));
        // what the backend was built with and uses (CPU: SIMD levels, LLAMAFILE, the variant loaded)
        py::dict features;
        auto get = (ggml_backend_get_features_t) ggml_backend_reg_get_proc_address(
            ggml_backend_dev_backend_reg(dev), "ggml_backend_get_features");
        if (get)
            for (ggml_backend_feature * f = get(ggml_backend_dev_backend_reg(dev)); f && f->name; ++f)
                features[f->name] = f->value ? f->value : "";
        d["features"] = features;
        out.append(d);
    }
    return out;
}

// RPC is reached through the registry's proc addresses, so the extension builds and loads
// against a libggml with or without GGML_RPC.
static ggml_backend_reg_t rpc_reg() {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    if (!reg) throw std::invalid_argument(
        "this libggml has no RPC backend; rebuild it with scripts/build_libggml.sh rpc");
    return reg;
}

static std::vector<std::string> rpc_add_server(const std::string & endpoint) {
    using add_fn = ggml_backend_reg_t (*)(const char *);
    auto add = (add_fn) ggml_backend_reg_get_proc_address(rpc_reg(), "ggml_backend_rpc_add_server");
    if (!add) throw std::runtime_error("RPC backend lacks ggml_backend_rpc_add_server");
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        if (std::string(ggml_backend_reg_name(ggml_backend_reg_get(i))) == "RPC[" + endpoint + "]") {
            ggml_backend_reg_t reg = ggml_backend_reg_get(i);
            std::vector<std::string> out;
            for (size_t d = 0; d < ggml_backend_reg_dev_count(reg); ++d)
                out.push_back(device_id(ggml_backend_reg_dev_get(reg, d)));
            return out;  // already registered
        }
    }
    ggml_backend_reg_t reg = add(endpoint.c_str());
    if (!reg) throw std::invalid_argument("could not reach an RPC server at " + endpoint);
    ggml_backend_register(reg);
    std::vector<std::string> out;
    for (size_t d = 0; d < ggml_backend_reg_dev_count(reg); ++d)
        out.push_back(device_id(ggml_backend_reg_dev_get(reg, d)));
    return out;
}

static void rpc_start_server(const std::string & endpoint, size_t n_threads, const std::string & device,
                             const std::string & cache_dir) {
    using start_fn = void (*)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *);
    auto start = (start_fn) ggml_backend_reg_get_proc_address(rpc_reg(), "ggml_backend_rpc_start_server");
    if (!start) throw std::runtime_error("RPC backend lacks ggml_backend_rpc_start_server");
    ggml_backend_dev_t dev = device.empty() ? ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
                                            : find_device(device);
    if (!dev) throw std::invalid_argument("unknown device '" + device + "'");
    py::gil_scoped_release nogil;
    // cache_dir: tensors above 10 MiB are kept there by hash, so a client that uploads the same
    // weights again (a new process, the same model) sends its hash instead of the tensor.
    start(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), n_threads, 1, &dev);
}

}  // namespace gd

PYBIND11_MODULE(_ggml, m) {
    using namespace gd;
    m.doc() = "Thin bindings over ggml: contexts, tensors, op builders, the backend scheduler.";

    ggml_log_set(log_callback, nullptr);
    // Backends built as loadable modules (GGML_BACKEND_DL) register here; static ones already are.
    ggml_backend_load_all();

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const std::invalid_argument & e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });
    py::register_exception<ContextFull>(m, "ContextFull", PyExc_MemoryError);

    m.def("set_log_level", [](int level) { g_log_level = level; }, py::arg("level"),
          "Minimum ggml log level printed to stderr (1 debug, 2 info, 3 warn, 4 error).");
    m.def("devices", &devices, "Devices that ggml's backend registry reports, in registry order.");
    m.def("has_backend", [](const std::string & name) { return ggml_backend_reg_by_name(name.c_str()) != nullptr; },
          py::arg("name"), "Whether this libggml registers a backend (\"CPU\", \"BLAS\", \"RPC\", \"CUDA\", \"Metal\").");
    m.def("load_backend", [](const std::string & path) {
        py::gil_scoped_release nogil;
        return ggml_backend_load(path.c_str()) != nullptr;
    }, py::arg("path"), "Load a ggml backend library (ggml_backend_load) into the registry; False if it cannot load.");
    m.def("rpc_add_server", &rpc_add_server, py::arg("endpoint"),
          "Register ggml's RPC server at host:port; returns its device names.");
    m.def("rpc_start_server", &rpc_start_server, py::arg("endpoint"), py::arg("n_threads"),
          py::arg("device") = "", py::arg("cache_dir") = "",
          "Serve a local device over ggml's RPC protocol (blocks); cache_dir keeps large tensors by hash.");
    m.def("ggml_version", [] { return std::string(ggml_version()); });
    m.def("type_name", [](int type) {
        if (type < 0 || type >= GGML_TYPE_COUNT) throw std::invalid_argument("unknown ggml type");
        return std::string(ggml_type_name((ggml_type) type));
    }, py::arg("type"), "The name of a ggml type (\"f32\", \"q8_0\").");
    m.def("row_size", [](int type, int64_t ne0) {
        if (type < 0 || type >= GGML_TYPE_COUNT) throw std::invalid_argument("unknown ggml type");
        if (ne0 % ggml_blck_size((ggml_type) type) != 0)
            throw std::invalid_argument("row length is not a multiple of the type's block size");
        return ggml_row_size((ggml_type) type, ne0);
    }, py::arg("type"), py::arg("ne0"), "Bytes of one row of ne0 elements of a ggml type.");

    m.def("quantize", [](int type, py::array_t<float, py::array::c_style | py::array::forcecast> src,
                         py::array_t<uint8_t, py::array::c_style> dst) {
        if (type < 0 || type >= GGML_TYPE_COUNT) throw std::invalid_argument("unknown ggml type");
        if (src.ndim() != 2) throw std::invalid_argument("quantize takes a 2-D float32 array");
        int64_t rows = src.shape(0), cols = src.shape(1);
        if (cols % ggml_blck_size((ggml_type) type) != 0)
            throw std::invalid_argument("row length " + std::to_string(cols) + " is not a multiple of the block size " +
                                        std::to_string(ggml_blck_size((ggml_type) type)));
        if ((size_t) dst.size() != rows * ggml_row_size((ggml_type) type, cols))
            throw std::invalid_argument("destination has the wrong size");
        if (ggml_quantize_requires_imatrix((ggml_type) type))
            throw std::invalid_argument("this type needs an importance matrix");
        ggml_quantize_init((ggml_type) type);
        const float * s = src.data();
        void * d = dst.mutable_data();
        py::gil_scoped_release nogil;
        ggml_quantize_chunk((ggml_type) type, s, d, 0, rows, cols, nullptr);
    }, py::arg("type"), py::arg("src"), py::arg("dst"),
       "Quantize rows of a float32 matrix into dst with ggml's own reference quantizer.");

    // Classes are declared before any method is bound, so that signatures (and the .pyi stub)
    // name Python types rather than C++ ones.
    py::class_<Context, std::shared_ptr<Context>> context(m, "Context",
        "A no_alloc ggml context with room for n_tensors tensor headers and one graph.");
    py::class_<Tensor> tensor(m, "Tensor", "A handle to a ggml tensor; shapes are in ggml ne order.");
    py::class_<Graph> graph(m, "Graph", "A ggml compute graph (ggml_cgraph).");

    context
        .def(py::init<size_t, size_t>(), py::arg("n_tensors"), py::arg("graph_size") = 0)
        .def("new_tensor", [](std::shared_ptr<Context> self, int type, std::vector<int64_t> ne, std::string name) {
            if (ne.empty() || ne.size() > 4) throw std::invalid_argument("tensors have 1 to 4 dimensions");
            if (type < 0 || type >= GGML_TYPE_COUNT) throw std::invalid_argument("unknown ggml type");
            for (auto n : ne) if (n <= 0) throw std::invalid_argument("dimensions must be positive");
            if (ne[0] % ggml_blck_size((ggml_type) type) != 0)
                throw std::invalid_argument("innermost dimension is not a multiple of the type's block size");
            ne.resize(4, 1);
            ggml_tensor * t = ggml_new_tensor(fit(self, 1), (ggml_type) type, 4, ne.data());
            ggml_set_name(t, name.c_str());
            return Tensor{t, self};
        }, py::arg("type"), py::arg("ne"), py::arg("name") = "")
        .def("new_graph", [](std::shared_ptr<Context> self, size_t size, std::shared_ptr<Context> tensors) {
            if (self->graph_made || size == 0 || size > self->graph_size)
                throw std::invalid_argument("this context has room for one graph of up to " +
                                            std::to_string(self->graph_size) + " nodes");
            self->graph_made = true;
            return Graph{ggml_new_graph_custom(self->ctx, size, false), self, tensors ? tensors : self};
        }, py::arg("size"), py::arg("tensors") = nullptr,
           "The context's one graph, of up to `size` nodes and as many leafs, over the tensors of "
           "context `tensors` (default: this one).")
        .def_property_readonly("used_mem", [](const Context & c) { return ggml_used_mem(c.ctx); })
        .def_property_readonly("n_tensors", [](const Context & c) {
            size_t n = 0;
            for (ggml_tensor * t = ggml_get_first_tensor(c.ctx); t; t = ggml_get_next_tensor(c.ctx, t)) ++n;
            return n;
        }, "Tensors created in this context so far.");

    tensor
        .def_property_readonly("ne", &tensor_ne)
        .def_property_readonly("nb", &tensor_nb)
        .def_property_readonly("type", [](const Tensor & x) { return (int) raw(x)->type; })
        .def_property_readonly("op", [](const Tensor & x) { return std::string(ggml_op_desc(raw(x))); })
        .def_property_readonly("op_params", [](const Tensor & x) {
            const int32_t * p = raw(x)->op_params;
            return std::vector<int32_t>(p, p + GGML_MAX_OP_PARAMS / sizeof(int32_t));
        }, "the op's parameters as int32 (mul_mat: [0] is the precision, 10 = GGML_PREC_F32)")
        .def_property_readonly("nbytes", [](const Tensor & x) { return ggml_nbytes(raw(x)); })
        .def_property_readonly("is_contiguous", [](const Tensor & x) { return ggml_is_contiguous(raw(x)); })
        .def_property_readonly("is_transposed", [](const Tensor & x) { return ggml_is_transposed(raw(x)); })
        .def_property_readonly("has_data", [](const Tensor & x) { return raw(x)->data != nullptr; })
        .def_property("name",
            [](const Tensor & x) { return std::string(ggml_get_name(raw(x))); },
            [](Tensor & x, const std::string & n) { ggml_set_name(raw(x), n.c_str()); })
        .def("set_input", [](Tensor & x) { ggml_set_input(raw(x)); })
        .def("set_output", [](Tensor & x) { ggml_set_output(raw(x)); })
        .def("__repr__", [](const Tensor & x) {
            auto * t = raw(x);
            return "<ggml " + std::string(ggml_type_name(t->type)) + " " + ggml_get_name(t) + " ne=[" +
                   std::to_string(t->ne[0]) + "," + std::to_string(t->ne[1]) + "," +
                   std::to_string(t->ne[2]) + "," + std::to_string(t->ne[3]) + "] op=" + ggml_op_desc(t) + ">";
        });

    graph
        .def("expand", [](Graph & g, const Tensor & t) {
            // ggml asserts when a graph overflows; the caller sizes it to every tensor it could hold
            ggml_build_forward_expand(g.g, raw(t));
        }, py::arg("tensor"),
             "ggml_build_forward_expand: add t and everything it depends on.")
        .def_property_readonly("n_nodes", [](Graph & g) { return ggml_graph_n_nodes(g.g); })
        .def("node", [](Graph & g, int i) {
            int n = ggml_graph_n_nodes(g.g);
            if (i < -n || i >= n) throw py::index_error("graph node index out of range");
            return Tensor{ggml_graph_node(g.g, i), g.tensors};
        }, py::arg("i"), "The i-th node in execution order (negative counts from the end).");

    register_ops(m);
    register_sched(m);
}
