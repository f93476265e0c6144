// Ctrl-C during a compute (Runtime::compute in sched.cpp).
#pragma once

#include <atomic>
#include <csignal>

namespace gd {

// The GIL is released and the main thread sits in ggml, so Python's own SIGINT handler only sets
// a flag that nothing reads until the compute ends. While a compute runs on the main thread, a
// handler of ours also raises *that runtime's* flag (and chains to Python's), and the abort
// callback of its backends stops the graph at the CPU's next node or oneDNN's next product.
// Other runtimes, computing on other threads, are not touched: each has its own flag.
inline std::atomic<std::atomic<bool> *> g_sigint_target{nullptr};
inline struct sigaction g_prev_sigint;
inline int g_guard_depth = 0;  // guards are installed on the main thread only, so this needs no lock

inline void on_sigint(int sig, siginfo_t * info, void * uctx) {
    if (std::atomic<bool> * flag = g_sigint_target.load()) flag->store(true);
    if (g_prev_sigint.sa_flags & SA_SIGINFO) {
        if (g_prev_sigint.sa_sigaction && g_prev_sigint.sa_sigaction != on_sigint)
            g_prev_sigint.sa_sigaction(sig, info, uctx);
    } else if (g_prev_sigint.sa_handler != SIG_DFL && g_prev_sigint.sa_handler != SIG_IGN) {
        g_prev_sigint.sa_handler(sig);
    }
}

inline bool flag_set(void * flag) { return static_cast<std::atomic<bool> *>(flag)->load(); }

// Installs on_sigint for its lifetime, aimed at one runtime's flag and chained to the handler in
// place (Python's), unless SIGINT is ignored or left to its default (no Python handler to honour),
// or a guard is already installed (a compute nested in an eval callback: the outer one keeps it).
struct SigintGuard {
    bool active = false;
    SigintGuard(bool want, std::atomic<bool> & flag) {
        if (!want || g_guard_depth > 0) return;
        struct sigaction cur;
        if (sigaction(SIGINT, nullptr, &cur) != 0) return;
        bool python_handles = (cur.sa_flags & SA_SIGINFO) ? cur.sa_sigaction != nullptr
                                                          : cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN;
        if (!python_handles) return;
        struct sigaction mine = {};
        mine.sa_sigaction = on_sigint;
        mine.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&mine.sa_mask);
        g_sigint_target.store(&flag);
        if (sigaction(SIGINT, &mine, &g_prev_sigint) == 0) {
            active = true;
            ++g_guard_depth;
        } else {
            g_sigint_target.store(nullptr);
        }
    }
    ~SigintGuard() {
        if (!active) return;
        sigaction(SIGINT, &g_prev_sigint, nullptr);
        g_sigint_target.store(nullptr);
        --g_guard_depth;
    }
};

}  // namespace gd
