// The backend scheduler idiom of ggml's examples/simple/simple-backend.cpp: backends in
// priority order (accelerators first, CPU last) -> ggml_backend_sched_new -> reserve once per
// graph shape -> alloc -> set inputs -> compute -> read outputs.
#include "common.hpp"
#include "interrupt.hpp"
#include "threadpools.hpp"

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <vector>

namespace gd {

// A backend buffer that owns its memory (weights) or wraps host memory it keeps alive (mmap).
struct Buffer {
    ggml_backend_buffer_t buf = nullptr;
    std::shared_ptr<Context> ctx;  // the tensors that live in it
    py::object host;               // memory a host-pointer buffer borrows from
    ~Buffer() { if (buf) ggml_backend_buffer_free(buf); }
    ggml_backend_buffer_t live() const {
        if (!buf) throw std::runtime_error("this buffer was released, or abandoned at exit");
        return buf;
    }
};

static py::buffer_info contiguous_info(const py::buffer & b, bool writable) {
    py::buffer_info info = b.request(writable);
    ssize_t expect = info.itemsize;
    for (ssize_t i = info.ndim - 1; i >= 0; --i) {
        if (info.strides[i] != expect) throw std::invalid_argument("array must be C-contiguous");
        expect *= info.shape[i];
    }
    return info;
}

struct Runtime {
    std::vector<ggml_backend_t> backends;
    ggml_backend_sched_t sched = nullptr;
    int n_reserve = 0;
    std::function<bool(Tensor, bool)> eval_cb;
    std::shared_ptr<Context> running;  // owner of the graph being computed, for callback handles
    std::atomic<bool> interrupted{false};  // set by SIGINT while this runtime computes on the main thread
    std::string cb_error;
    int n_threads = 0;
    bool keep_threads = false;         // borrow a shared CPU threadpool for each compute
    size_t graph_size = 0;             // the scheduler's capacity (hash set) in tensors
    // Memory that tensor data may live in: this runtime's weight and host buffers (kept alive as
    // long as the runtime) and the compute buffers of the graph allocated now. A handle to any
    // other tensor may point into memory that has been freed or reused.
    std::vector<std::shared_ptr<Buffer>> buffers;
    std::shared_ptr<Context> allocated;

    Runtime(const std::vector<std::string> & device_names, int n_threads, size_t graph_size)
        : n_threads(n_threads), graph_size(graph_size) {
        if (device_names.empty()) throw std::invalid_argument("no devices given");
        for (const auto & name : device_names) {
            ggml_backend_dev_t dev = find_device(name);
            if (!dev) throw std::invalid_argument("unknown ggml device '" + name + "'");
            ggml_backend_t be = ggml_backend_dev_init(dev, nullptr);
            if (!be) throw std::runtime_error("could not initialise ggml device '" + name + "'");
            backends.push_back(be);
            auto * set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(
                ggml_backend_dev_backend_reg(dev), "ggml_backend_set_n_threads");
            if (set_threads && n_threads > 0) set_threads(be, n_threads);
        }
        if (ggml_backend_dev_type(ggml_backend_get_device(backends.back())) != GGML_BACKEND_DEVICE_TYPE_CPU)
            throw std::invalid_argument("the last backend must be the CPU (the scheduler's fallback)");
        new_sched();
        // every backend that can stop between its nodes (the CPU; oneDNN between its products)
        for (auto * be : backends) {
            auto set_abort = (ggml_backend_set_abort_callback_t) ggml_backend_reg_get_proc_address(
                ggml_backend_dev_backend_reg(ggml_backend_get_device(be)), "ggml_backend_set_abort_callback");
            if (set_abort) set_abort(be, flag_set, &interrupted);
        }
    }

    void new_sched() {
        sched = ggml_backend_sched_new(backends.data(), nullptr, (int) backends.size(), graph_size,
                                       /*parallel=*/false, /*op_offload=*/true);
        if (!sched) throw std::runtime_error("ggml_backend_sched_new failed");
        if (eval_cb) ggml_backend_sched_set_eval_callback(sched, &Runtime::trampoline, this);
    }

    // The scheduler's hash set has a fixed size and ggml asserts when a graph overflows it: make
    // room for n tensors (nodes + leafs + the copies a split adds) by starting a larger scheduler.
    // Compute buffers are re-reserved on the next run; weight buffers belong to the backends.
    void ensure_capacity(size_t n) {
        idle();
        if (n <= graph_size) return;
        ggml_backend_sched_free(sched);
        sched = nullptr;
        allocated.reset();
        graph_size = std::max(n, 2 * graph_size);
        new_sched();
    }

    // Data of t may be read or written: it lives in this runtime's buffers or the allocated graph.
    // A graph's intermediates share memory the allocator hands on once their consumers have run,
    // so of the allocated graph only inputs and outputs (captures are outputs) hold their values
    // after a compute; during one, the eval callback may read the node it is told about.
    void check_live(const Tensor & t, const char * what) const {
        ggml_tensor * x = raw(t);
        if (allocated && t.owner == allocated) {
            if (running || (x->flags & (GGML_TENSOR_FLAG_INPUT | GGML_TENSOR_FLAG_OUTPUT))) return;
            throw std::invalid_argument(std::string(what) + ": tensor '" + ggml_get_name(x) +
                "' is an intermediate of the graph: its memory is reused once its consumers have run "
                "(capture it to read it)");
        }
        ggml_backend_buffer_t buf = x->view_src ? x->view_src->buffer : x->buffer;
        for (const auto & b : buffers) if (b->buf && b->buf == buf) return;
        throw std::invalid_argument(std::string(what) + ": tensor '" + ggml_get_name(x) +
            "' belongs to no weight buffer of this runtime and to no graph allocated now (its memory may "
            "have been freed or reused): run its graph again first");
    }

    ~Runtime() {
        if (sched) ggml_backend_sched_free(sched);
        for (auto * be : backends) ggml_backend_free(be);
    }

    // Without a threadpool, ggml's CPU backend starts and joins its worker threads on every graph
    // compute, i.e. on every CPU split; node-by-node profiling computes one node at a time, so it
    // would time thread starts. The pool is borrowed for one compute (pools:: above).
    struct Threads {
        const Runtime & r;
        ggml_threadpool_t pool = nullptr;
        int n = 0;
        explicit Threads(const Runtime & r) : r(r) {
            if (!r.keep_threads) return;
            n = r.n_threads > 0 ? r.n_threads : 1;
            pool = pools::borrow(n);
            set(pool);
        }
        ~Threads() {
            if (!pool) return;
            set(nullptr);  // pauses the pool: its workers sleep until the next borrower kicks them
            pools::give_back(n, pool);
        }
        void set(ggml_threadpool_t p) {
            cpu_proc<void (*)(ggml_backend_t, ggml_threadpool_t)>("ggml_backend_cpu_set_threadpool")(r.backends.back(), p);
        }
    };

    ggml_backend_sched_t live() const {
        if (!sched) throw std::runtime_error("this runtime was abandoned at exit");
        return sched;
    }

    // The scheduler while no compute of this runtime is running: a call from its own eval callback
    // would re-plan or re-allocate under the graph being computed.
    ggml_backend_sched_t idle() const {
        if (running) throw std::runtime_error("this runtime is computing (called from its own eval callback?)");
        return live();
    }

    ggml_backend_t backend(int i) const {
        if (i < 0 || i >= (int) backends.size()) throw std::invalid_argument("backend index out of range");
        return backends[i];
    }

    int index_of(ggml_backend_t be) const {
        for (size_t i = 0; i < backends.size(); ++i) if (backends[i] == be) return (int) i;
        return -1;
    }

    static bool trampoline(ggml_tensor * t, bool ask, void * user) {
        auto * self = static_cast<Runtime *>(user);
        py::gil_scoped_acquire gil;
        try {
            return self->eval_cb(Tensor{t, self->running}, ask);
        } catch (const std::exception & e) {
            self->cb_error = e.what();
            return false;  // stops the graph; the error is raised after compute returns
        }
    }
};

void register_sched(py::module_ & m) {
    pthread_atfork(nullptr, nullptr, pools::forget_after_fork);
    py::class_<Buffer, std::shared_ptr<Buffer>>(m, "BackendBuffer", "A ggml backend buffer (ggml_backend_buffer_t).")
        .def_property_readonly("size", [](const Buffer & b) { return ggml_backend_buffer_get_size(b.live()); })
        .def_property_readonly("name", [](const Buffer & b) { return std::string(ggml_backend_buffer_name(b.live())); })
        .def_property_readonly("is_host", [](const Buffer & b) { return ggml_backend_buffer_is_host(b.live()); })
        .def("abandon", [](Buffer & b) { b.buf = nullptr; },
             "Forget the buffer without freeing it (its RPC server frees it when the connection closes).");

    py::class_<Runtime>(m, "Runtime",
        "Backends (accelerators first, CPU last) and the ggml_backend_sched over them.")
        .def(py::init<const std::vector<std::string> &, int, size_t>(),
             py::arg("devices"), py::arg("n_threads") = 0, py::arg("graph_size") = 8192)
        .def_property_readonly("backend_names", [](const Runtime & r) {
            std::vector<std::string> out;
            for (auto * be : r.backends) out.push_back(ggml_backend_name(be));
            return out;
        })
        .def_readonly("n_reserve", &Runtime::n_reserve, "How many times reserve() has run.")
        .def("set_threadpool", [](Runtime & r, bool on) {
            r.live();  // raises once abandoned
            r.keep_threads = on;
        }, py::arg("on"), "Run each compute on a CPU threadpool that outlives it (shared by the process's runtimes, "
           "one per compute running at once) instead of starting threads for every CPU split.")
        .def("abandon", [](Runtime & r) {
            // At exit, an RPC server may already be gone, and ggml's RPC client aborts the process
            // when a free cannot reach it; the server frees a client's buffers when it disconnects.
            r.sched = nullptr;
            r.backends.clear();
            for (auto & b : r.buffers) b->buf = nullptr;  // the weight buffers it keeps alive, too
        }, "Forget the scheduler and backends without freeing them (at exit, for RPC).")
        .def("release", [](Runtime & r, std::shared_ptr<Buffer> b) {
            auto it = std::find(r.buffers.begin(), r.buffers.end(), b);
            if (it == r.buffers.end()) throw std::invalid_argument("release: the buffer is not one of this runtime's");
            r.idle();
            r.buffers.erase(it);
            // handles to its tensors that outlive it find no memory (check_live) rather than freed memory
            if (b->ctx)
                for (ggml_tensor * t = ggml_get_first_tensor(b->ctx->ctx); t; t = ggml_get_next_tensor(b->ctx->ctx, t))
                    t->data = nullptr, t->buffer = nullptr;
            if (b->buf) ggml_backend_buffer_free(b->buf);
            b->buf = nullptr;
        }, py::arg("buffer"), "Free a buffer that alloc_tensors made (a program's constants) and forget it.")
        .def("alloc_tensors", [](Runtime & r, std::shared_ptr<Context> ctx, int i) {
            auto buft = ggml_backend_get_default_buffer_type(r.backend(i));
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx->ctx, buft);
            if (!buf) throw std::runtime_error("could not allocate a weight buffer on " +
                                               std::string(ggml_backend_name(r.backend(i))));
            // Weights usage lets the scheduler run ops next to the weights they read.
            ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            auto out = std::make_shared<Buffer>();
            out->buf = buf;
            out->ctx = ctx;
            r.buffers.push_back(out);
            return out;
        }, py::arg("ctx"), py::arg("backend"), "Allocate every tensor of ctx in one buffer of backend i.")
        .def("host_buffer", [](Runtime & r, py::buffer mem) {
            py::buffer_info info = mem.request();
            if ((uintptr_t) info.ptr % 32 != 0) throw std::invalid_argument("host memory must be 32-byte aligned");
            size_t size = (size_t) info.size * info.itemsize;
            auto out = std::make_shared<Buffer>();
            out->buf = ggml_backend_cpu_buffer_from_ptr(info.ptr, size);
            if (!out->buf) throw std::runtime_error("ggml_backend_cpu_buffer_from_ptr failed");
            ggml_backend_buffer_set_usage(out->buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            out->host = mem;
            r.buffers.push_back(out);
            return out;
        }, py::arg("memory"), "Wrap host memory (e.g. an mmap) as a CPU buffer without copying; the memory is kept alive.")
        .def("place", [](Runtime &, std::shared_ptr<Buffer> b, Tensor & t, size_t offset) {
            ggml_tensor * x = raw(t);
            size_t size = ggml_backend_buffer_get_size(b->buf);
            if (x->buffer || x->data) throw std::invalid_argument("tensor already has memory");
            if (offset % 32 != 0) throw std::invalid_argument("tensor offset must be 32-byte aligned");
            if (offset + ggml_nbytes(x) > size) throw std::invalid_argument("tensor does not fit in the buffer");
            char * base = (char *) ggml_backend_buffer_get_base(b->buf);
            if (ggml_backend_tensor_alloc(b->buf, x, base + offset) != GGML_STATUS_SUCCESS)
                throw std::runtime_error("ggml_backend_tensor_alloc failed");
        }, py::arg("buffer"), py::arg("tensor"), py::arg("offset"), "Place tensor t at offset bytes inside buffer b (zero copy).")
        .def("set_tensor", [](Runtime & r, Tensor & t, py::buffer data) {
            r.check_live(t, "set_tensor");
            ggml_tensor * x = raw(t);
            if (!x->buffer) throw std::invalid_argument("tensor '" + std::string(x->name) + "' has no memory yet");
            py::buffer_info info = contiguous_info(data, false);
            size_t n = (size_t) info.size * info.itemsize;
            if (n != ggml_nbytes(x))
                throw std::invalid_argument("tensor '" + std::string(x->name) + "' holds " +
                                            std::to_string(ggml_nbytes(x)) + " bytes, got " + std::to_string(n));
            ggml_backend_tensor_set(x, info.ptr, 0, n);
        }, py::arg("tensor"), py::arg("data"), "Copy host bytes into a tensor (any backend).")
        .def("get_tensor", [](Runtime & r, Tensor & t, py::buffer out) {
            r.check_live(t, "get_tensor");
            ggml_tensor * x = raw(t);
            if (!x->buffer) throw std::invalid_argument("tensor '" + std::string(x->name) + "' has no memory");
            if (!ggml_is_contiguous(x)) throw std::invalid_argument("tensor is not contiguous");
            py::buffer_info info = contiguous_info(out, true);
            size_t n = (size_t) info.size * info.itemsize;
            if (n != ggml_nbytes(x)) throw std::invalid_argument("output buffer has the wrong size");
            ggml_backend_tensor_get(x, info.ptr, 0, n);
        }, py::arg("tensor"), py::arg("out"), "Copy a tensor's bytes into a writable host array.")
        .def("wait_for", [](Runtime & r, Tensor & t) {
            r.check_live(t, "wait_for");
            // Reading a few bytes waits until the tensor is computed even on backends whose
            // synchronize returns at once (RPC sends graphs without waiting for an answer).
            ggml_tensor * x = raw(t);
            ggml_backend_buffer_t buf = x->view_src ? x->view_src->buffer : x->buffer;
            size_t n = std::min<size_t>(16, ggml_nbytes(x));
            char bytes[16];
            if (buf && x->data && n) ggml_backend_tensor_get(x, bytes, 0, n);
        }, py::arg("tensor"), "Block until tensor t has been computed (one round trip on RPC).")
        .def("reserve", [](Runtime & r, Graph & g) {
            bool ok;
            r.idle();
            {
                py::gil_scoped_release nogil;
                ggml_backend_sched_reset(r.live());  // reserve asserts that no graph is allocated
                r.allocated.reset();
                g.restore_sources();
                ok = ggml_backend_sched_reserve(r.live(), g.g);
            }
            if (!ok) throw std::runtime_error("ggml_backend_sched_reserve failed (out of memory?)");
            ++r.n_reserve;
        }, py::arg("graph"), "Size the compute buffers for this graph (once per set of input shapes).")
        .def("alloc_graph", [](Runtime & r, Graph & g, std::vector<std::pair<Tensor, int>> pinned) {
            ggml_backend_sched_reset(r.idle());  // drop the previous run's allocation
            r.allocated.reset();
            // ggml-alloc skips tensors that already have data; after another graph ran, those
            // pointers may point into a compute buffer that has since been reallocated.
            for (ggml_tensor * t = ggml_get_first_tensor(g.tensors->ctx); t; t = ggml_get_next_tensor(g.tensors->ctx, t)) {
                t->data = nullptr;
                t->buffer = nullptr;
            }
            g.restore_sources();
            for (auto & [t, i] : pinned) ggml_backend_sched_set_tensor_backend(r.live(), raw(t), r.backend(i));
            if (!ggml_backend_sched_alloc_graph(r.live(), g.g))
                throw std::runtime_error("ggml_backend_sched_alloc_graph failed");
            r.allocated = g.tensors;
        }, py::arg("graph"), py::arg("pinned") = std::vector<std::pair<Tensor, int>>{},
           "Allocate a graph for one run; `pinned` assigns tensors (e.g. inputs) to backends first.")
        .def("reset", [](Runtime & r) { ggml_backend_sched_reset(r.idle()); r.allocated.reset(); })
        .def("ensure_capacity", [](Runtime & r, size_t n) { r.ensure_capacity(n); }, py::arg("n"),
             "Make the scheduler hold graphs of n tensors (a new scheduler if it is smaller).")
        .def_readonly("graph_size", &Runtime::graph_size, "The scheduler's capacity in tensors.")
        .def("compute", [](Runtime & r, Graph & g, bool interruptible) {
            r.idle();
            if (!r.allocated || r.allocated != g.tensors)
                throw std::invalid_argument("compute: this graph is not the one allocated (call alloc_graph first)");
            r.cb_error.clear();
            r.running = g.tensors;
            r.interrupted.store(false);
            ggml_status st;
            bool stopped_by_sigint;
            {
                SigintGuard guard(interruptible, r.interrupted);
                py::gil_scoped_release nogil;
                Runtime::Threads threads(r);
                st = ggml_backend_sched_graph_compute(r.live(), g.g);
                stopped_by_sigint = r.interrupted.exchange(false);
            }
            r.running.reset();
            if (!r.cb_error.empty()) throw std::runtime_error("eval callback raised: " + r.cb_error);
            if (st == GGML_STATUS_ABORTED && stopped_by_sigint) {
                // Python's handler has been tripped: run it now (KeyboardInterrupt by default); a
                // handler that does not raise still leaves the outputs unfinished, so raise anyway.
                if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                throw std::runtime_error("ggml graph compute was interrupted by SIGINT; its outputs are incomplete");
            }
            if (st != GGML_STATUS_SUCCESS && st != GGML_STATUS_ABORTED)
                throw std::runtime_error("ggml graph compute failed with status " + std::to_string((int) st));
            return st == GGML_STATUS_SUCCESS;
        }, py::arg("graph"), py::arg("interruptible") = false,
           "Run the graph with the GIL released. Returns False if the eval callback stopped it. With "
           "interruptible (main thread only), SIGINT stops the CPU backend at its next node (oneDNN at its "
           "next product) and the Python handler runs (KeyboardInterrupt).")
        .def("set_eval_callback", [](Runtime & r, std::optional<std::function<bool(Tensor, bool)>> cb) {
            if (cb) {
                r.eval_cb = *cb;
                ggml_backend_sched_set_eval_callback(r.live(), &Runtime::trampoline, &r);
            } else {
                r.eval_cb = nullptr;
                ggml_backend_sched_set_eval_callback(r.live(), nullptr, nullptr);
            }
        }, py::arg("callback"), "cb(tensor, ask) -> bool, ggml_backend_sched_eval_callback semantics; None removes it.")
        .def_property_readonly("n_splits", [](Runtime & r) { return ggml_backend_sched_get_n_splits(r.live()); })
        .def_property_readonly("n_copies", [](Runtime & r) { return ggml_backend_sched_get_n_copies(r.live()); })
        .def("buffer_size", [](Runtime & r, int i) { return ggml_backend_sched_get_buffer_size(r.live(), r.backend(i)); },
             py::arg("backend"), "Compute-buffer bytes the scheduler reserved on backend i.")
        .def("tensor_backend", [](Runtime & r, Tensor & t) {
            return r.index_of(ggml_backend_sched_get_tensor_backend(r.live(), raw(t)));
        }, py::arg("tensor"), "Index of the backend a node was assigned to, or -1.")
        .def("set_tensor_backend", [](Runtime & r, Tensor & t, int i) {
            ggml_backend_sched_set_tensor_backend(r.live(), raw(t), r.backend(i));
        }, py::arg("tensor"), py::arg("backend"), "Assign a tensor to backend i before the graph is allocated.")
        .def("has_host_memory", [](Runtime & r, int i) {
            return ggml_backend_buft_is_host(ggml_backend_get_default_buffer_type(r.backend(i)));
        }, py::arg("backend"), "Whether backend i computes in host memory (CPU, BLAS) rather than its own (CUDA, RPC).")
        .def("supports_op", [](Runtime & r, int i, Tensor & t) { return ggml_backend_supports_op(r.backend(i), raw(t)); },
             py::arg("backend"), py::arg("tensor"), "Whether backend i can run the op that produces tensor.")
        .def("synchronize", [](Runtime & r) { ggml_backend_sched_synchronize(r.live()); });
}

}  // namespace gd
