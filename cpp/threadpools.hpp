// ggml CPU threadpools shared by the extension's runtimes (sched.cpp).
#pragma once

#include <ggml-backend.h>
#include <ggml.h>

#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

namespace gd {

template <typename F> F cpu_proc(const char * name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CPU");
    auto f = reg ? (F) ggml_backend_reg_get_proc_address(reg, name) : nullptr;
    if (!f) throw std::runtime_error(std::string("the CPU backend does not export ") + name);
    return f;
}

// ggml's CPU threadpools, shared by the process's runtimes. A runtime that keeps its CPU workers
// between splits borrows an idle pool of its size for one compute and gives it back, so worker
// threads grow with the computes running at once, not with the executors alive (one pool per
// executor kept a thread each: 300 executors, 303 threads). A forked child has none of its
// parent's threads: it forgets the pools it inherits (freeing one would join threads that do not
// exist there, and computing on one waits for them forever) and starts its own.
namespace pools {
inline std::mutex mu;
inline std::multimap<int, ggml_threadpool_t> idle;  // n_threads -> a pool no compute is using

inline void forget_after_fork() {
    // Another thread of the parent may have been inside either at the fork: start both afresh
    // (what they held leaks, and the pools with it: their threads live in the parent only).
    new (&mu) std::mutex();
    new (&idle) std::multimap<int, ggml_threadpool_t>();
}

inline ggml_threadpool_t borrow(int n_threads) {
    {
        std::lock_guard<std::mutex> lock(mu);
        auto it = idle.find(n_threads);
        if (it != idle.end()) {
            ggml_threadpool_t pool = it->second;
            idle.erase(it);
            return pool;
        }
    }
    ggml_threadpool_params params = ggml_threadpool_params_default(n_threads);
    params.poll = 0;  // workers sleep between nodes: no spinning against an RPC server or Python
    ggml_threadpool_t pool = cpu_proc<ggml_threadpool_t (*)(ggml_threadpool_params *)>("ggml_threadpool_new")(&params);
    if (!pool) throw std::runtime_error("ggml_threadpool_new failed");
    return pool;
}

inline void give_back(int n_threads, ggml_threadpool_t pool) {
    std::lock_guard<std::mutex> lock(mu);
    idle.emplace(n_threads, pool);
}
}  // namespace pools

}  // namespace gd
