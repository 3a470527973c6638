// Runs the kernels of kernels/*.cu (compiled as host C++ with cuda_emulator.h) on the CPU.
//
// Launch model. A pool of worker threads, one per thread of the largest block seen so far (at
// most 1024), lives for the whole process. A launch wakes workers 0..n-1 for its n-thread block;
// worker t is thread t of every block and walks the grid's blocks in order (x fastest, then y,
// then z). So all n threads of a block are alive at once and really concurrent, and
// __syncthreads is a std::barrier over them.
//
// Blocks are separated only where they need to be. Because blocks run one after another, each
// kernel's __shared__ arrays are a single static copy; a block that used __syncthreads ends with
// one more block barrier, so the next block cannot overwrite shared memory the previous one is
// still reading. A block that never called __syncthreads cannot have shared data between its
// threads, so its threads go straight on to their next block. This relies on CUDA's own rule
// that __syncthreads is reached by every thread of a block or by none; kernels whose threads
// return early and then let the others reach a __syncthreads are not supported.
//
// Warp shuffles exchange 8-byte values through a per-warp slot array and a 32-thread barrier,
// double-buffered so that one barrier per shuffle is enough: a lane can only come back to the
// same buffer after the next shuffle's barrier, which every lane reaches after its read. As CUDA
// requires, all 32 lanes must make the same shuffles (ddpm's kernels always pass the full mask).
//
// ddpm_emu_launch is synchronous and must be called from one thread at a time (the Rust side
// drives its Gpu from one thread). A fault inside a kernel takes the process down.

#include "runtime.h"

#include <stdint.h>
#include <string.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "cuda_emulator.h"

__thread uint3 threadIdx __attribute__((tls_model("initial-exec")));
__thread uint3 blockIdx __attribute__((tls_model("initial-exec")));
dim3 blockDim;
dim3 gridDim;

namespace ddpm_emu {
namespace {

constexpr unsigned kMaxBlockThreads = 1024;

// A central barrier: count the arrivals, the last one bumps the generation and wakes the rest.
class Barrier {
public:
    explicit Barrier(unsigned threads) : threads_(threads) {}
    void arrive_and_wait() {
        const uint32_t gen = gen_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_) {
            arrived_.store(0, std::memory_order_relaxed);  // published by the release below
            gen_.store(gen + 1, std::memory_order_release);
            gen_.notify_all();
        } else {
            while (gen_.load(std::memory_order_acquire) == gen) gen_.wait(gen, std::memory_order_acquire);
        }
    }

private:
    const unsigned threads_;
    std::atomic<unsigned> arrived_{0};
    std::atomic<uint32_t> gen_{0};
};

struct Warp {
    Barrier arrived{32};
    uint64_t slot[2][32];  // [buffer][lane]
};

// The block-wide synchronisation objects, shared by every block of a launch. Rebuilt only when
// the block size changes: a launch that completes leaves every barrier at a phase boundary.
struct BlockSync {
    unsigned threads = 0;
    std::unique_ptr<Barrier> block;
    std::unique_ptr<Warp[]> warps;
};

// The launch in flight, written by the launching thread before it wakes the workers (the wake-up
// is a release store, the workers' read of it an acquire load).
struct Launch {
    Trampoline run = nullptr;
    void** args = nullptr;
    unsigned threads = 0;
    BlockSync* sync = nullptr;
};
Launch current;

// This worker's place in the block, and what it did in the block it is running.
thread_local unsigned t_lane, t_warp;
thread_local unsigned t_shfl_buffer;  // which of the two slot buffers the next shuffle uses
thread_local bool t_block_synced;     // called __syncthreads in the current block

// Runs thread `t` of every block of the current launch.
void run_thread(unsigned t) {
    const Launch& l = current;
    const unsigned bx = blockDim.x, by = blockDim.y;
    threadIdx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
    t_lane = t % 32;
    t_warp = t / 32;
    t_shfl_buffer = 0;
    for (unsigned z = 0; z < gridDim.z; ++z) {
        for (unsigned y = 0; y < gridDim.y; ++y) {
            for (unsigned x = 0; x < gridDim.x; ++x) {
                blockIdx = uint3{x, y, z};
                t_block_synced = false;
                l.run(l.args);
                if (t_block_synced) l.sync->block->arrive_and_wait();
            }
        }
    }
}

// One per worker, on its own cache line: the serial number of the last launch it was woken for.
struct alignas(64) Doorbell {
    std::atomic<uint64_t> serial{0};
};

class Pool {
public:
    // Runs the current launch on workers 0..threads-1 and waits for all of them.
    void run(unsigned threads) {
        grow(threads);
        ++serial_;
        remaining_.store(threads, std::memory_order_relaxed);
        for (unsigned t = 0; t < threads; ++t) {
            doorbells_[t]->serial.store(serial_, std::memory_order_release);
            doorbells_[t]->serial.notify_one();
        }
        for (unsigned r; (r = remaining_.load(std::memory_order_acquire)) != 0;) remaining_.wait(r, std::memory_order_acquire);
    }

private:
    void grow(unsigned threads) {
        while (doorbells_.size() < threads) {
            const unsigned t = (unsigned)doorbells_.size();
            doorbells_.push_back(std::make_unique<Doorbell>());
            // Detached and never joined: the pool lives until the process exits, with the
            // workers asleep on their doorbells.
            std::thread([this, t, bell = doorbells_.back().get()] { work(t, *bell); }).detach();
        }
    }

    void work(unsigned t, Doorbell& bell) {
        uint64_t seen = 0;
        for (;;) {
            bell.serial.wait(seen, std::memory_order_acquire);
            seen = bell.serial.load(std::memory_order_acquire);
            run_thread(t);
            if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) remaining_.notify_one();
        }
    }

    std::vector<std::unique_ptr<Doorbell>> doorbells_;
    std::atomic<unsigned> remaining_{0};
    uint64_t serial_ = 0;
};

// Leaked on purpose: detached workers may still touch it while static destructors run at exit.
Pool& pool() {
    static Pool* p = new Pool;
    return *p;
}

BlockSync& block_sync(unsigned threads) {
    static BlockSync s;
    if (s.threads != threads) {
        s.block = std::make_unique<Barrier>(threads);
        s.warps = std::make_unique<Warp[]>(threads / 32);
        s.threads = threads;
    }
    return s;
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

}  // namespace

uint64_t shfl(uint64_t bits, Shfl rule, unsigned arg, int width) {
    Warp& w = current.sync->warps[t_warp];
    const unsigned buf = t_shfl_buffer;
    t_shfl_buffer ^= 1;
    w.slot[buf][t_lane] = bits;
    w.arrived.arrive_and_wait();
    // CUDA's rules for a segment of `width` lanes (a power of two up to 32).
    const unsigned wd = (width > 0 && width <= 32) ? (unsigned)width : 32;
    const unsigned lane = t_lane, base = lane & ~(wd - 1), in_seg = lane & (wd - 1);
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

void __syncthreads() {
    ddpm_emu::t_block_synced = true;
    ddpm_emu::current.sync->block->arrive_and_wait();
}

// Runs kernel `kernel` over a gx×gy×gz grid of bx×by×bz blocks with args[i] pointing at the value
// of parameter i (as cuLaunchKernel), and returns when it has finished: 0, or -1 for a kernel not
// in the table, -2 for a launch shape CUDA would reject or a block that is not whole warps
// (the shuffles need full warps), -3 for dynamic shared memory (not emulated).
extern "C" int ddpm_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned shared_bytes, void** args) {
    using namespace ddpm_emu;
    const Kernel* k = kernel ? find(kernel) : nullptr;
    if (!k) return -1;
    const uint64_t threads = (uint64_t)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || gx > 0x7fffffffu || gy > 65535 || gz > 65535) return -2;
    if (bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64) return -2;
    if (threads > kMaxBlockThreads || threads % 32 != 0) return -2;
    if (shared_bytes != 0) return -3;

    blockDim = dim3(bx, by, bz);
    gridDim = dim3(gx, gy, gz);
    current = Launch{k->run, args, (unsigned)threads, &block_sync((unsigned)threads)};
    pool().run((unsigned)threads);
    return 0;
}
