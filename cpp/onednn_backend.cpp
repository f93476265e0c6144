// A ggml backend that runs matrix products (MUL_MAT with f32 or bf16 weights) through oneDNN and
// nothing else. It computes in host memory and accepts every host buffer type, so when it sits
// before the CPU backend in a scheduler, the products that read weights are placed here and every
// other op stays on the CPU, with no copies between them (ggml's BLAS backend works the same way).
//
// Built as its own shared library (libgraphdsl_onednn.so) and loaded at run time through ggml's
// registry (ggml_backend_load -> ggml_backend_init below), so the extension builds and runs
// without oneDNN. The backend interface structs come from ggml-backend-impl.h, which
// libggml-python does not install: cpp/vendor/ holds the copy from the pinned sdist
// (libggml-python 0.20.2.post1; GGML_BACKEND_API_VERSION is checked by ggml_backend_load).
#include "vendor/ggml-backend-impl.h"

#include <ggml.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace {

using dnnl::memory;
using dt = memory::data_type;

// Below this many rows, columns or inner size a product is too small to pay for a split: the CPU
// backend keeps it (the same cut as ggml's BLAS backend).
constexpr int64_t MIN_DIM = 32;

// (weight type, M, N, K, weight row stride, threads) -> primitive
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int>;

// Primitives kept per backend, the least recently used dropped first: each holds JIT code and a
// scratchpad of its own (about 260 KB for a 2-thread brgemm), and every new row count (input
// shape) is a new primitive, so an unbounded map grew by one per shape an executor ever saw.
constexpr size_t MAX_PRIMS = 64;

struct Prim {
    dnnl::matmul mm;
    dnnl::reorder to_bf16;  // activations f32 -> bf16 (bf16 weights only)
    memory::desc src_f32, src, wei, dst;
};

struct Backend {
    int n_threads = 1;
    ggml_abort_callback abort = nullptr;  // checked between products (Ctrl-C; sched.cpp sets it)
    void * abort_data = nullptr;
    dnnl::engine eng{dnnl::engine::kind::cpu, 0};
    dnnl::stream strm{eng};
    std::map<Key, std::pair<Prim, std::list<Key>::iterator>> cache;
    std::list<Key> lru;  // most recently used first
    std::vector<uint16_t> work;  // activations rounded to bf16
};

// GNU OpenMP keeps one team of worker threads per thread that opened a parallel region. A forked
// child inherits that team's bookkeeping but none of its threads, and the next parallel region
// of that thread waits for them forever (multiprocessing's default start method forks). In such
// a child that thread runs its products on one thread, which opens no parallel region; a thread
// that had no team in the parent starts a fresh one as usual.
thread_local bool t_team_started = false;  // this thread opened a parallel region of 2+ threads
thread_local bool t_team_lost = false;     // ... in the parent of this forked process

void after_fork_in_child() {
    if (t_team_started) t_team_lost = true;
}

int threads_here(const Backend & be) {
    if (!t_team_lost || be.n_threads == 1) return be.n_threads;
    static std::once_flag warned;
    std::call_once(warned, [] {
        std::fprintf(stderr, "graphdsl: oneDNN products run on one thread in this forked process (GNU OpenMP's "
                             "threads do not survive fork; the 'spawn' or 'forkserver' start method keeps them)\n");
    });
    return 1;
}

// oneDNN's AVX/AVX2 f32 GEMM (jit_avx_gemm_f32: CPUs without AVX-512, e.g. Zen 3) points its
// stack pointer into a malloc'd workspace when a K block outgrows the stack room it reserves
// (blocks of 256 against 252 for our 512-wide products). A signal handled on that thread then
// (Ctrl-C: Python's handler or ours) pushes its frame below that pointer, over the heap chunk
// header and the chunk before it: glibc aborts later with "corrupted size vs. prev_size" or the
// process dies of SIGSEGV. So asynchronous signals stay blocked on every thread that runs a
// product, and on the calling thread are let in between products, where the stack is ours.
const sigset_t & async_signals() {
    static const sigset_t set = [] {
        sigset_t s;
        sigfillset(&s);
        for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&s, sig);
        return s;
    }();
    return set;
}

struct SignalsHeld {
    sigset_t before;
    SignalsHeld() { pthread_sigmask(SIG_BLOCK, &async_signals(), &before); }
    ~SignalsHeld() { pthread_sigmask(SIG_SETMASK, &before, nullptr); }
    void let_in() {  // pending signals run their handlers now, on this frame's stack
        pthread_sigmask(SIG_SETMASK, &before, nullptr);
        pthread_sigmask(SIG_BLOCK, &async_signals(), nullptr);
    }
};

// GNU OpenMP's workers of this thread's team block them for good: they run nothing but products.
// (Workers started inside a SignalsHeld inherit the mask; this covers a team started before.)
thread_local int t_masked_team = 1;

void mask_team(int n_threads) {
    if (n_threads <= t_masked_team) return;
#pragma omp parallel num_threads(n_threads)
    pthread_sigmask(SIG_BLOCK, &async_signals(), nullptr);
    t_masked_team = n_threads;
    t_team_started = true;
}

dt weight_dt(ggml_type t) { return t == GGML_TYPE_BF16 ? dt::bf16 : dt::f32; }

// oneDNN picks an implementation per problem; its reference kernels ("ref:") are far slower than
// ggml's, so a weight type is claimed only where a JIT kernel exists for it on this CPU.
bool fast_kernel(dt wdt) {
    static std::once_flag once;
    static bool ok[2] = {false, false};
    std::call_once(once, [] {
        dnnl::engine eng(dnnl::engine::kind::cpu, 0);
        for (int i = 0; i < 2; ++i) {
            dt w = i ? dt::bf16 : dt::f32;
            try {
                memory::desc a({64, 64}, w, {64, 1}), b({64, 64}, w, {1, 64}), c({64, 64}, dt::f32, {64, 1});
                dnnl::matmul::primitive_desc pd(eng, a, b, c);
                ok[i] = std::strncmp(pd.impl_info_str(), "ref", 3) != 0;
            } catch (const dnnl::error &) {
                ok[i] = false;
            }
        }
    });
    return ok[wdt == dt::bf16];
}

bool claims_mul_mat(const ggml_tensor * op) {
    const ggml_tensor * w = op->src[0];
    const ggml_tensor * x = op->src[1];
    if (w->type != GGML_TYPE_F32 && w->type != GGML_TYPE_BF16) return false;  // f16: no JIT kernel without AVX512_FP16
    if (x->type != GGML_TYPE_F32 || op->type != GGML_TYPE_F32) return false;
    if (((const int32_t *) op->op_params)[1] != 0) return false;  // a kernel hint (e.g. Hadamard src0): leave it to ggml
    // a 2-D weight with contiguous rows; activations and output dense, their batch dims folded into rows
    if (w->ne[2] != 1 || w->ne[3] != 1 || w->nb[0] != ggml_type_size(w->type) || w->nb[1] < w->ne[0] * w->nb[0]) return false;
    if (!ggml_is_contiguous(x) || !ggml_is_contiguous(op)) return false;
    const int64_t m = x->ne[1] * x->ne[2] * x->ne[3];
    if (w->ne[0] < MIN_DIM || w->ne[1] < MIN_DIM || m < MIN_DIM) return false;
    return fast_kernel(weight_dt(w->type));
}

// A primitive keeps the thread count that was set when it was made: the key holds it.
Prim & prim_for(Backend & be, const ggml_tensor * op, int n_threads) {
    const ggml_tensor * w = op->src[0];
    const ggml_tensor * x = op->src[1];
    const int64_t k = w->ne[0], n = w->ne[1], m = x->ne[1] * x->ne[2] * x->ne[3];
    const int64_t ldw = w->nb[1] / ggml_type_size(w->type);
    Key key{(int) w->type, m, n, k, ldw, n_threads};
    auto it = be.cache.find(key);
    if (it != be.cache.end()) {
        be.lru.splice(be.lru.begin(), be.lru, it->second.second);
        return it->second.first;
    }
    Prim p;
    const dt wdt = weight_dt(w->type);
    p.src_f32 = memory::desc({m, k}, dt::f32, {k, 1});
    p.src = memory::desc({m, k}, wdt, {k, 1});
    p.wei = memory::desc({k, n}, wdt, {1, ldw});  // ggml's weight rows are oneDNN's columns
    p.dst = memory::desc({m, n}, dt::f32, {n, 1});
    p.mm = dnnl::matmul(dnnl::matmul::primitive_desc(be.eng, p.src, p.wei, p.dst));
    if (wdt == dt::bf16)  // round to nearest even, as ggml's CPU backend rounds activations for bf16 weights
        p.to_bf16 = dnnl::reorder(dnnl::reorder::primitive_desc(be.eng, p.src_f32, be.eng, p.src));
    if (be.cache.size() >= MAX_PRIMS) {
        be.cache.erase(be.lru.back());
        be.lru.pop_back();
    }
    be.lru.push_front(key);
    return be.cache.emplace(key, std::make_pair(std::move(p), be.lru.begin())).first->second.first;
}

void mul_mat(Backend & be, ggml_tensor * op, int n_threads) {
    Prim & p = prim_for(be, op, n_threads);
    memory wei(p.wei, be.eng, op->src[0]->data);
    memory dst(p.dst, be.eng, op->data);
    memory x32(p.src_f32, be.eng, op->src[1]->data);
    if (p.src.get_data_type() == dt::bf16) {
        size_t need = p.src.get_size() / sizeof(uint16_t);
        if (be.work.size() < need) be.work.resize(need);
        memory x16(p.src, be.eng, be.work.data());
        p.to_bf16.execute(be.strm, x32, x16);
        p.mm.execute(be.strm, {{DNNL_ARG_SRC, x16}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    } else {
        p.mm.execute(be.strm, {{DNNL_ARG_SRC, x32}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    }
}

const char * be_name(ggml_backend_t) { return "ONEDNN"; }

void be_free(ggml_backend_t backend) {
    delete static_cast<Backend *>(backend->context);
    delete backend;
}

ggml_status be_graph_compute(ggml_backend_t backend, ggml_cgraph * g) {
    auto & be = *static_cast<Backend *>(backend->context);
    const int n_threads = threads_here(be);
    omp_set_num_threads(n_threads);  // oneDNN's OpenMP runtime reads the calling thread's setting
    SignalsHeld held;
    try {
        mask_team(n_threads);
        for (int i = 0; i < ggml_graph_n_nodes(g); ++i) {
            ggml_tensor * node = ggml_graph_node(g, i);
            if ((node->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) continue;
            switch (node->op) {
                case GGML_OP_MUL_MAT:
                    // a split can hold a long chain of products: stop between them, as ggml's CPU
                    // backend stops between its nodes
                    held.let_in();
                    if (be.abort && be.abort(be.abort_data)) return GGML_STATUS_ABORTED;
                    mul_mat(be, node, n_threads);
                    break;
                case GGML_OP_NONE: case GGML_OP_RESHAPE: case GGML_OP_VIEW:
                case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE: break;
                default: return GGML_STATUS_FAILED;  // never claimed (supports_op); fail rather than abort
            }
        }
        be.strm.wait();
    } catch (const dnnl::error &) {
        return GGML_STATUS_FAILED;
    }
    return GGML_STATUS_SUCCESS;
}

ggml_backend_i backend_iface = {
    /* .get_name            = */ be_name,
    /* .free                = */ be_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ nullptr,
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ be_graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

ggml_guid_t guid() {
    static ggml_guid g = {0x67, 0x64, 0x73, 0x6c, 0x2d, 0x6f, 0x6e, 0x65, 0x64, 0x6e, 0x6e, 0x2d, 0x6d, 0x6d, 0x01, 0x00};
    return &g;
}

void set_n_threads(ggml_backend_t backend, int n) {
    if (backend && ggml_guid_matches(backend->guid, guid()) && n > 0)
        static_cast<Backend *>(backend->context)->n_threads = n;
}

void set_abort_callback(ggml_backend_t backend, ggml_abort_callback cb, void * data) {
    if (!backend || !ggml_guid_matches(backend->guid, guid())) return;
    auto * be = static_cast<Backend *>(backend->context);
    be->abort = cb;
    be->abort_data = data;
}

ggml_backend_reg_t reg();

const char * dev_name(ggml_backend_dev_t) { return "ONEDNN"; }

const char * dev_description(ggml_backend_dev_t) {
    static std::string d = [] {
        const dnnl_version_t * v = dnnl_version();
        return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
               std::to_string(v->patch) + " matmul (f32, bf16 weights) on the host";
    }();
    return d.c_str();
}

void dev_memory(ggml_backend_dev_t, size_t * free, size_t * total) { *free = 0; *total = 0; }

enum ggml_backend_dev_type dev_type(ggml_backend_dev_t) { return GGML_BACKEND_DEVICE_TYPE_ACCEL; }

void dev_props(ggml_backend_dev_t dev, ggml_backend_dev_props * props) {
    props->name = dev_name(dev);
    props->description = dev_description(dev);
    props->type = dev_type(dev);
    dev_memory(dev, &props->memory_free, &props->memory_total);
    props->caps = {/*async=*/false, /*host_buffer=*/false, /*buffer_from_host_ptr=*/true, /*events=*/false, /*mmap_support=*/true};
}

ggml_backend_t dev_init(ggml_backend_dev_t dev, const char *) {
    try {
        auto * ctx = new Backend();
        ctx->n_threads = omp_get_max_threads();
        return new ggml_backend{guid(), backend_iface, dev, ctx};
    } catch (const dnnl::error &) {
        return nullptr;
    }
}

ggml_backend_buffer_type_t dev_buffer_type(ggml_backend_dev_t) { return ggml_backend_cpu_buffer_type(); }

ggml_backend_buffer_t dev_from_host_ptr(ggml_backend_dev_t, void * ptr, size_t size, size_t) {
    return ggml_backend_cpu_buffer_from_ptr(ptr, size);
}

bool dev_supports_op(ggml_backend_dev_t, const ggml_tensor * op) {
    switch (op->op) {
        case GGML_OP_NONE: case GGML_OP_RESHAPE: case GGML_OP_VIEW:
        case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return true;
        case GGML_OP_MUL_MAT:
            return claims_mul_mat(op);
        default:
            return false;
    }
}

bool dev_supports_buft(ggml_backend_dev_t, ggml_backend_buffer_type_t buft) { return ggml_backend_buft_is_host(buft); }

const ggml_backend_device_i device_iface = {
    /* .get_name             = */ dev_name,
    /* .get_description      = */ dev_description,
    /* .get_memory           = */ dev_memory,
    /* .get_type             = */ dev_type,
    /* .get_props            = */ dev_props,
    /* .init_backend         = */ dev_init,
    /* .get_buffer_type      = */ dev_buffer_type,
    /* .get_host_buffer_type = */ nullptr,
    /* .buffer_from_host_ptr = */ dev_from_host_ptr,
    /* .supports_op          = */ dev_supports_op,
    /* .supports_buft        = */ dev_supports_buft,
    /* .offload_op           = */ nullptr,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

const char * reg_name(ggml_backend_reg_t) { return "ONEDNN"; }
size_t reg_count(ggml_backend_reg_t) { return 1; }

ggml_backend_dev_t reg_device(ggml_backend_reg_t r, size_t) {
    static ggml_backend_device dev = {device_iface, r, nullptr};
    return &dev;
}

// "ggml_backend_get_features" is what `graphdsl devices` lists: the ISA oneDNN dispatches to.
ggml_backend_feature * features(ggml_backend_reg_t) {
    static std::string isa;
    static ggml_backend_feature out[4];
    static std::once_flag once;
    std::call_once(once, [] {
        switch (dnnl::get_effective_cpu_isa()) {
            case dnnl::cpu_isa::avx512_core_amx: isa = "avx512_core_amx"; break;
            case dnnl::cpu_isa::avx512_core_bf16: isa = "avx512_core_bf16"; break;
            case dnnl::cpu_isa::avx512_core_vnni: isa = "avx512_core_vnni"; break;
            case dnnl::cpu_isa::avx512_core: isa = "avx512_core"; break;
            case dnnl::cpu_isa::avx2: isa = "avx2"; break;
            default: isa = "other"; break;
        }
        out[0] = {"ISA", isa.c_str()};
        out[1] = {"F32", fast_kernel(dt::f32) ? "1" : "0"};
        out[2] = {"BF16", fast_kernel(dt::bf16) ? "1" : "0"};
        out[3] = {nullptr, nullptr};
    });
    return out;
}

void * reg_proc(ggml_backend_reg_t, const char * name) {
    if (std::strcmp(name, "ggml_backend_set_n_threads") == 0) return (void *) set_n_threads;
    if (std::strcmp(name, "ggml_backend_get_features") == 0) return (void *) features;
    if (std::strcmp(name, "ggml_backend_set_abort_callback") == 0) return (void *) set_abort_callback;
    return nullptr;
}

const ggml_backend_reg_i reg_iface = {reg_name, reg_count, reg_device, reg_proc};

ggml_backend_reg_t reg() {
    static int forks_watched = pthread_atfork(nullptr, nullptr, after_fork_in_child);
    (void) forks_watched;
    static ggml_backend_reg r = {GGML_BACKEND_API_VERSION, reg_iface, nullptr};
    return &r;
}

}  // namespace

// The entry point ggml_backend_load() looks up.
extern "C" __attribute__((visibility("default"))) ggml_backend_reg_t ggml_backend_init(void) { return reg(); }
