// Shared device helpers for every ddpm kernel.
//
// Conventions (build.rs relies on the first one):
// - every entry point is written on one line as `extern "C" __global__ void <op>_<dtype>(`,
//   with <dtype> one of f32, bf16, f16; the body is a template instantiated per dtype;
// - storage types are float / __nv_bfloat16 / __half, arithmetic is always in fp32;
// - element counts are `size_t` and loops are grid-stride, so any launch size is correct.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ---- fp32 <-> storage type ------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

#define GRID_STRIDE_LOOP(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// ---- warp and block reductions (fixed trees: the same bits on every run) ----------------------
#define FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp with a xor butterfly: every lane ends with the same bits
// (a + b == b + a in fp32), so a row's result does not depend on which lane writes it.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, off));
    return v;
}

// Sum of `v` over the whole (1-d) block, returned to every thread. blockDim.x must be a multiple
// of 32, at most 1024, and every thread must call it. `buf`: 33 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* buf) {
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    __syncthreads(); // every thread has read the previous call's result
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (blockDim.x >> 5) ? buf[lane] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(FULL_MASK, w, o);
        if (lane == 0) buf[32] = w;
    }
    __syncthreads();
    return buf[32];
}

// Sum of an f64 `v` over a block of exactly THREADS threads (shuffle tree inside each warp, then
// over the warp sums); valid in thread 0 only. Called once per kernel (no barrier before reuse).
template <int THREADS>
__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double warp_sums[THREADS / 32];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = 0.0;
    if (warp == 0) {
        v = lane < THREADS / 32 ? warp_sums[lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    }
    return v;
}

// ---- Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) -----
// Counter-based: the random words for element i depend only on (key, counter), never on which
// thread computes them, so the CPU reference (src/rng.rs) reproduces the GPU bit for bit.
struct Philox4 { uint32_t v[4]; };

__host__ __device__ __forceinline__ void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

__host__ __device__ __forceinline__ Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        uint32_t hi0, lo0, hi1, lo1;
        philox_mulhilo(M0, ctr.v[0], &hi0, &lo0);
        philox_mulhilo(M1, ctr.v[2], &hi1, &lo1);
        Philox4 next = {{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
        ctr = next;
        k0 += W0;
        k1 += W1;
    }
    return ctr;
}

// Random word number `i` of the stream (seed, stream): word i%4 of block i/4.
__host__ __device__ __forceinline__ uint32_t philox_word(uint64_t seed, uint64_t stream, uint64_t i) {
    uint64_t block = i >> 2;
    Philox4 ctr = {{(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
    Philox4 out = philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
    return out.v[i & 3];
}

// ---- op parameter structs, field for field the same as their #[repr(C)] twins in src/ops ------

// src/ops/dropout.rs `DropoutArgs`: element i is kept iff its Philox word >= keep_threshold;
// kept elements are multiplied by scale = 1 / (1 - p).
struct DropoutArgs {
    uint64_t seed;
    uint64_t stream;
    uint32_t keep_threshold;
    float scale;
};
