// Runs the kernels of kernels/*.cu (compiled as host C++ with cuda_emulator.h) on the CPU.
//
// Launch model. Each CUDA thread of a block is a fiber: its own stack and registers, switched
// cooperatively on the launching OS thread. All threads of a block are alive at once; a thread
// runs until it reaches a barrier (__syncthreads, or a warp shuffle's exchange) or returns, and
// a barrier lets its threads go on only once every live thread it spans has arrived. Blocks run
// one after another (x fastest, then y, then z), so each kernel's __shared__ arrays are a single
// static copy. A thread that has returned no longer counts at barriers, as on current GPUs.
//
// Why fibers rather than one OS thread per CUDA thread (the first version of this file, in git
// history): with 256 threads on a 2-core machine every barrier phase costs one sleep and one
// wake-up per thread, about 1.4 ms a phase, so a 1024-block reduction took 3 s and the parity
// suite's loss and optimizer tests minutes; a fiber switch is a few nanoseconds, and with fibers
// that reduction takes ~60 ms and the whole suite ~20 s. What is lost is true parallelism inside
// a block; what is gained is determinism: the order in which threads run between barriers is
// chosen by the caller (`order`, `seed`: index order, reversed, or a random permutation drawn
// afresh for every pass from the seed), so a missing __syncthreads shows up the same way on
// every run with the same order, and running under several orders shows what one order hides
// (in index order a thread always runs after its lower-numbered neighbours have stored). A
// barrier that some live threads never reach is reported (-4) instead of hanging.
//
// Warp shuffles exchange 8-byte values through a per-warp slot array and a warp barrier,
// double-buffered so that one barrier per shuffle is enough: a lane can only come back to the
// same buffer after the next shuffle's barrier, which every lane reaches after its read. As CUDA
// requires, all 32 lanes must make the same shuffles (ddpm's kernels always pass the full mask).
//
// ddpm_emu_launch is synchronous and serialised by a mutex. A fault inside a kernel takes the
// process down.

#include "runtime.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <memory>
#include <mutex>

#include "cuda_emulator.h"

#if defined(__x86_64__) && defined(__ELF__) && !defined(DDPM_EMU_UCONTEXT)
#define DDPM_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

__thread uint3 threadIdx __attribute__((tls_model("initial-exec")));
__thread uint3 blockIdx __attribute__((tls_model("initial-exec")));
dim3 blockDim;
dim3 gridDim;

#if DDPM_EMU_ASM_SWITCH
// Saves the callee-saved registers on the current stack and its stack pointer in *save_sp, then
// continues on sp (a stack saved the same way, or a fresh one from init_context). x86-64 SysV.
// Fibers never touch the MXCSR or x87 control word, so those are not switched. ucontext's
// swapcontext does the same but with a signal-mask system call each time (~400 ns).
extern "C" void ddpm_emu_switch(void** save_sp, void* sp);
asm(R"(
    .text
    .globl ddpm_emu_switch
    .hidden ddpm_emu_switch
    .type ddpm_emu_switch, @function
ddpm_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ddpm_emu_switch, .-ddpm_emu_switch
)");
#endif

namespace ddpm_emu {
namespace {

constexpr unsigned kMaxBlockThreads = 1024;
// Per fiber; only the pages a kernel touches are ever committed. A guard page below each stack
// turns an overflow into a fault.
constexpr size_t kStackBytes = 256 << 10;
constexpr size_t kGuardBytes = 4096;

// A barrier among cooperatively scheduled threads: released when every live member has arrived.
struct Barrier {
    unsigned live = 0, arrived = 0;
    uint64_t gen = 0;  // bumped at each release
};

struct Warp {
    Barrier bar;
    uint64_t slot[2][32];  // [buffer][lane]
};

struct Context {
#if DDPM_EMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

struct Fiber {
    Context ctx;
    char* stack = nullptr;       // kStackBytes above a guard page
    bool parked = false;         // sits at the top of fiber_main's loop, ready for a kernel
    bool done = false;           // returned from the kernel in the current block
    Barrier* waits_on = nullptr; // with `gen`: waiting for that barrier's release
    uint64_t gen = 0;
    unsigned shfl_buffer = 0;    // which slot buffer this lane's next shuffle uses
    uint3 idx{};
};

// The launch in flight. Only the launching thread and its fibers touch it.
struct State {
    std::unique_ptr<Fiber[]> fibers;
    unsigned capacity = 0;
    Context scheduler;  // the launching thread while a fiber runs
    unsigned current = 0;
    Trampoline run = nullptr;
    void** args = nullptr;
    Barrier block;
    Warp warps[kMaxBlockThreads / 32];
    // The order of each pass over a block's threads: 0 index, 1 reversed, 2 random (from `rng`).
    int order = 0;
    uint64_t rng = 0;
    unsigned perm[kMaxBlockThreads];
};
State S;

// splitmix64: the random orders' generator (a fixed algorithm, so a seed means one order).
uint64_t next_random(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The order of the next pass over `threads` threads, in S.perm.
void plan_pass(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) S.perm[i] = S.order == 1 ? threads - 1 - i : i;
    if (S.order == 2) {
        for (unsigned i = threads; i > 1; --i) {
            const unsigned j = (unsigned)(next_random(S.rng) % i);
            const unsigned tmp = S.perm[i - 1];
            S.perm[i - 1] = S.perm[j];
            S.perm[j] = tmp;
        }
    }
}

void switch_to(Context& save, Context& to) {
#if DDPM_EMU_ASM_SWITCH
    ddpm_emu_switch(&save.sp, to.sp);
#else
    swapcontext(&save.uc, &to.uc);
#endif
}

// Every fiber runs this forever: the kernel for one block, then back to the scheduler, which
// resumes it for the next block (or, at the next launch, for the next kernel).
[[noreturn]] void fiber_main() {
    for (;;) {
        Fiber& f = S.fibers[S.current];
        f.parked = false;
        S.run(S.args);
        f.done = true;
        f.parked = true;
        // Returned threads stop counting at barriers; the last arrival may have been waiting on us.
        for (Barrier* b : {&S.block, &S.warps[S.current / 32].bar}) {
            --b->live;
            if (b->arrived != 0 && b->arrived == b->live) {
                b->arrived = 0;
                ++b->gen;
            }
        }
        switch_to(f.ctx, S.scheduler);
    }
}

void init_context(Fiber& f) {
    if (!f.stack) {
        void* m = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) abort();
        mprotect(m, kGuardBytes, PROT_NONE);
        f.stack = static_cast<char*>(m) + kGuardBytes;
    }
#if DDPM_EMU_ASM_SWITCH
    // What ddpm_emu_switch pops: six registers, then fiber_main as the return address, entered
    // with the stack 8 off 16-byte alignment as after a call; its own return address is null.
    void** sp = reinterpret_cast<void**>(f.stack + kStackBytes);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    f.ctx.sp = sp;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = f.stack;
    f.ctx.uc.uc_stack.ss_size = kStackBytes;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, fiber_main, 0);
#endif
    f.parked = true;
}

// Called on a fiber: arrive at `b`, and unless this completes it, wait for its release.
void arrive(Barrier& b) {
    if (++b.arrived == b.live) {
        b.arrived = 0;
        ++b.gen;
        return;
    }
    Fiber& f = S.fibers[S.current];
    f.waits_on = &b;
    f.gen = b.gen;
    switch_to(f.ctx, S.scheduler);
}

// Runs one block to completion: passes over its threads in the launch's order, resuming each one
// that is not finished and not held at an unreleased barrier. False if a pass resumes nobody
// while threads are left (a barrier that some live threads never reach).
bool run_block(unsigned threads) {
    S.block.live = threads;
    S.block.arrived = 0;
    for (unsigned w = 0; w < threads / 32; ++w) {
        S.warps[w].bar.live = 32;
        S.warps[w].bar.arrived = 0;
    }
    for (unsigned t = 0; t < threads; ++t) {
        S.fibers[t].done = false;
        S.fibers[t].waits_on = nullptr;
        S.fibers[t].shfl_buffer = 0;
    }
    for (unsigned left = threads; left != 0;) {
        bool resumed = false;
        plan_pass(threads);
        for (unsigned i = 0; i < threads; ++i) {
            const unsigned t = S.perm[i];
            Fiber& f = S.fibers[t];
            if (f.done || (f.waits_on && f.waits_on->gen == f.gen)) continue;
            f.waits_on = nullptr;
            S.current = t;
            threadIdx = f.idx;
            switch_to(S.scheduler, f.ctx);
            resumed = true;
            left -= f.done;
        }
        if (!resumed) return false;
    }
    return true;
}

const Kernel* find(const char* name) {
    size_t lo = 0, hi = kernel_count;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(name, kernels[mid].name);
        if (c == 0) return &kernels[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return nullptr;
}

std::mutex launch_mutex;

}  // namespace

uint64_t shfl(uint64_t bits, Shfl rule, unsigned arg, int width) {
    Fiber& f = S.fibers[S.current];
    Warp& w = S.warps[S.current / 32];
    const unsigned lane = S.current % 32, buf = f.shfl_buffer;
    f.shfl_buffer ^= 1;
    w.slot[buf][lane] = bits;
    arrive(w.bar);
    // CUDA's rules for a segment of `width` lanes (a power of two up to 32).
    const unsigned wd = (width > 0 && width <= 32) ? (unsigned)width : 32;
    const unsigned base = lane & ~(wd - 1), in_seg = lane & (wd - 1);
    unsigned src = lane;
    switch (rule) {
    case Shfl::Idx: src = base + (arg & (wd - 1)); break;
    case Shfl::Up: src = in_seg >= arg ? lane - arg : lane; break;
    case Shfl::Down: src = in_seg + arg < wd ? lane + arg : lane; break;
    case Shfl::Xor: src = (lane ^ arg) < base + wd ? lane ^ arg : lane; break;
    }
    return w.slot[buf][src];
}

}  // namespace ddpm_emu

void __syncthreads() { ddpm_emu::arrive(ddpm_emu::S.block); }

// blockIdx and threadIdx of the thread running now (for the memory checker's fault report, from
// a signal handler: it only reads two thread-locals).
extern "C" void ddpm_emu_position(unsigned* out) {
    out[0] = blockIdx.x;
    out[1] = blockIdx.y;
    out[2] = blockIdx.z;
    out[3] = threadIdx.x;
    out[4] = threadIdx.y;
    out[5] = threadIdx.z;
}

// Runs kernel `kernel` over a gx×gy×gz grid of bx×by×bz blocks with args[i] pointing at the value
// of parameter i (as cuLaunchKernel), the threads of each block in `order` (0 index, 1 reversed,
// 2 random permutations drawn from `seed`), and returns when it has finished: 0, or -1 for a
// kernel not in the table, -2 for a launch shape CUDA would reject (Gpu::launch refuses those
// first, naming the limit), -3 for dynamic shared memory (not emulated), -4 when a
// barrier was never reached by all live threads of its block or warp (the kernel is abandoned
// there), -5 for an unknown order, -6 for a block that is not whole warps.
extern "C" int ddpm_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned shared_bytes, void** args, int order, uint64_t seed) {
    using namespace ddpm_emu;
    const Kernel* k = kernel ? find(kernel) : nullptr;
    if (!k) return -1;
    const uint64_t threads = (uint64_t)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || gx > 0x7fffffffu || gy > 65535 || gz > 65535) return -2;
    if (bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64) return -2;
    if (threads > kMaxBlockThreads) return -2;
    if (threads % 32 != 0) return -6;
    if (shared_bytes != 0) return -3;
    if (order < 0 || order > 2) return -5;

    std::lock_guard<std::mutex> lock(launch_mutex);
    S.order = order;
    S.rng = seed;
    const unsigned nt = (unsigned)threads;
    if (S.capacity < nt) {
        // Only between launches, when no fiber is in the middle of anything: all start afresh.
        auto grown = std::make_unique<Fiber[]>(nt);
        for (unsigned t = 0; t < S.capacity; ++t) grown[t].stack = S.fibers[t].stack;
        S.fibers = std::move(grown);
        S.capacity = nt;
    }
    for (unsigned t = 0; t < nt; ++t) {
        Fiber& f = S.fibers[t];
        if (!f.parked) init_context(f);
        f.idx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
    }
    blockDim = dim3(bx, by, bz);
    gridDim = dim3(gx, gy, gz);
    S.run = k->run;
    S.args = args;
    for (unsigned z = 0; z < gz; ++z) {
        for (unsigned y = 0; y < gy; ++y) {
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = uint3{x, y, z};
                if (!run_block(nt)) {
                    // Fibers stuck at barriers start afresh at the next launch.
                    for (unsigned t = 0; t < nt; ++t) S.fibers[t].parked = S.fibers[t].done;
                    return -4;
                }
            }
        }
    }
    return 0;
}
