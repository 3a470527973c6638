// Kernels for the emulator's own tests (tests/cuda/emulator.rs), compiled only into the emulator
// (build.rs), never into the GPU image: each one is right or wrong in a known way, so a test can
// show that a check of the emulator catches what it claims to.
#include "common.cuh"

// out[i] = in[i − 1] within each block of a 1-d launch (in[i] for a block's first thread),
// through shared memory: every thread stores its input, then reads its left neighbour's. With
// `sync` = 0 the barrier between the store and the read is missing: the result is then right
// only when every thread runs after its left neighbour has stored — which index order always
// gives, and reversed or random orders do not. in, out: gridDim.x · blockDim.x floats.
extern "C" __global__ void emu_selftest_shift(const float* in, float* out, int sync) {
    __shared__ float s[1024];
    const unsigned t = threadIdx.x;
    const size_t i = (size_t)blockIdx.x * blockDim.x + t;
    s[t] = in[i];
    if (sync) __syncthreads();
    out[i] = s[t == 0 ? 0 : t - 1];
    // The next block reuses s: nobody may store before everyone has read.
    if (sync) __syncthreads();
}

// One store by thread 0 of block 0: p[offset] = value (offset may be negative or past the end:
// the memory checker's target).
extern "C" __global__ void emu_selftest_store(float* p, long long offset, float value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) p[offset] = value;
}

// One load by thread 0 of block 0: out[0] = p[offset].
extern "C" __global__ void emu_selftest_load(const float* p, long long offset, float* out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = p[offset];
}

// out[0] = the float at byte `offset` of p: misaligned unless offset is a multiple of 4.
extern "C" __global__ void emu_selftest_load_bytes(const char* p, long long offset, float* out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = *reinterpret_cast<const float*>(p + offset);
}
