// Elementwise kernels: SiLU, residual add, accumulate, scale, per-channel broadcast add and its
// backward (sum over space), dropout, channel concat/split, and the fp32 <-> storage casts.
// Every buffer is the activation type T (fp32 math; sums rounded to T once), except the fp32
// side of the casts.
// CPU reference: src/ops/{silu,add,dropout,concat}.rs and nn::layers::accumulate (same names,
// same formulas).
#include "common.cuh"


// y = x * sigmoid(x)
template <typename T>
__device__ void silu_forward(const T* x, T* y, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = to_f32(x[i]);
        y[i] = from_f32<T>(v / (1.0f + expf(-v)));
    }
}

// dx = dy * s * (1 + x * (1 - s)),  s = sigmoid(x)
template <typename T>
__device__ void silu_backward(const T* x, const T* dy, T* dx, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        float v = to_f32(x[i]);
        float s = 1.0f / (1.0f + expf(-v));
        dx[i] = from_f32<T>(to_f32(dy[i]) * s * (1.0f + v * (1.0f - s)));
    }
}

// y = a + b (residual add; its backward is two copies of dy)
template <typename T>
__device__ void add(const T* a, const T* b, T* y, size_t n) {
    GRID_STRIDE_LOOP(i, n) { y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i])); }
}

// acc += x (gradient of a tensor read in two places; same order of operands as the CPU)
template <typename T>
__device__ void accumulate(T* acc, const T* x, size_t n) {
    GRID_STRIDE_LOOP(i, n) { acc[i] = from_f32<T>(to_f32(acc[i]) + to_f32(x[i])); }
}

// y = alpha * x
template <typename T>
__device__ void scale(const T* x, T* y, float alpha, size_t n) {
    GRID_STRIDE_LOOP(i, n) { y[i] = from_f32<T>(alpha * to_f32(x[i])); }
}

// y[b, c, p] = x[b, c, p] + t[b, c]   x, y: (B, C, HW), t: (B, C) — the time-embedding add
template <typename T>
__device__ void add_channel_bias(const T* x, const T* t, T* y, size_t bc, size_t hw) {
    GRID_STRIDE_LOOP(i, bc * hw) { y[i] = from_f32<T>(to_f32(x[i]) + to_f32(t[i / hw])); }
}

// dt[r] = Σ_p dy[r, p]   dy: (B·C, HW), dt: (B, C) — the t-gradient of add_channel_bias.
// One warp per (b, c) row in a grid-stride loop over rows: lanes stride along the row (coalesced),
// then a fixed butterfly; no atomics, so the result is the same on every run. Blocks must be a
// multiple of 32 threads.
template <typename T>
__device__ void sum_spatial(const T* dy, T* dt, size_t bc, size_t hw) {
    const unsigned lane = threadIdx.x % 32;
    const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
    for (size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < bc; r += warps) {
        const T* row = dy + r * hw;
        float acc = 0.0f;
        for (size_t p = lane; p < hw; p += 32) acc += to_f32(row[p]);
        acc = warp_sum(acc);
        if (lane == 0) dt[r] = from_f32<T>(acc);
    }
}

// y[b] = a[b] ‖ b[b] along channels; per item a holds a_len = C_a·HW values, b holds b_len.
// a: (N, C_a, H, W), b: (N, C_b, H, W), y: (N, C_a + C_b, H, W). Indexed by y, so writes are
// coalesced and reads are contiguous runs.
template <typename T>
__device__ void concat_channels(const T* a, const T* b, T* y, size_t n, size_t a_len, size_t b_len) {
    const size_t item = a_len + b_len;
    GRID_STRIDE_LOOP(i, n * item) {
        const size_t bi = i / item, k = i % item;
        y[i] = k < a_len ? a[bi * a_len + k] : b[bi * b_len + (k - a_len)];
    }
}

// The backward of concat_channels: dy (N, C_a + C_b, H, W) → da (N, C_a, H, W), db (N, C_b, H, W),
// both written. Indexed by dy, so reads are coalesced and writes are contiguous runs.
template <typename T>
__device__ void split_channels(const T* dy, T* da, T* db, size_t n, size_t a_len, size_t b_len) {
    const size_t item = a_len + b_len;
    GRID_STRIDE_LOOP(i, n * item) {
        const size_t bi = i / item, k = i % item;
        if (k < a_len) da[bi * a_len + k] = dy[i];
        else db[bi * b_len + (k - a_len)] = dy[i];
    }
}

// y = keep(i) ? x * scale : 0 with keep(i) from Philox, so no mask is stored: the backward
// regenerates it from the same (seed, stream).
template <typename T>
__device__ void dropout_forward(const T* x, T* y, size_t n, DropoutArgs a) {
    GRID_STRIDE_LOOP(i, n) {
        bool keep = philox_word(a.seed, a.stream, i) >= a.keep_threshold;
        y[i] = from_f32<T>(keep ? to_f32(x[i]) * a.scale : 0.0f);
    }
}

// y = x rounded to T (to nearest even): fp32 values into the activation type.
template <typename T>
__device__ void cast_from_f32(const float* x, T* y, size_t n) {
    GRID_STRIDE_LOOP(i, n) { y[i] = from_f32<T>(x[i]); }
}

// y = x widened to fp32 (exact).
template <typename T>
__device__ void cast_to_f32(const T* x, float* y, size_t n) {
    GRID_STRIDE_LOOP(i, n) { y[i] = to_f32(x[i]); }
}

extern "C" __global__ void silu_forward_f32(const float* x, float* y, size_t n) { silu_forward(x, y, n); }
extern "C" __global__ void silu_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, size_t n) { silu_forward(x, y, n); }
extern "C" __global__ void silu_forward_f16(const __half* x, __half* y, size_t n) { silu_forward(x, y, n); }

extern "C" __global__ void silu_backward_f32(const float* x, const float* dy, float* dx, size_t n) { silu_backward(x, dy, dx, n); }
extern "C" __global__ void silu_backward_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, __nv_bfloat16* dx, size_t n) { silu_backward(x, dy, dx, n); }
extern "C" __global__ void silu_backward_f16(const __half* x, const __half* dy, __half* dx, size_t n) { silu_backward(x, dy, dx, n); }

extern "C" __global__ void add_f32(const float* a, const float* b, float* y, size_t n) { add(a, b, y, n); }
extern "C" __global__ void add_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* y, size_t n) { add(a, b, y, n); }
extern "C" __global__ void add_f16(const __half* a, const __half* b, __half* y, size_t n) { add(a, b, y, n); }

extern "C" __global__ void accumulate_f32(float* acc, const float* x, size_t n) { accumulate(acc, x, n); }
extern "C" __global__ void accumulate_bf16(__nv_bfloat16* acc, const __nv_bfloat16* x, size_t n) { accumulate(acc, x, n); }
extern "C" __global__ void accumulate_f16(__half* acc, const __half* x, size_t n) { accumulate(acc, x, n); }

extern "C" __global__ void scale_f32(const float* x, float* y, float alpha, size_t n) { scale(x, y, alpha, n); }
extern "C" __global__ void scale_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, float alpha, size_t n) { scale(x, y, alpha, n); }
extern "C" __global__ void scale_f16(const __half* x, __half* y, float alpha, size_t n) { scale(x, y, alpha, n); }

extern "C" __global__ void add_channel_bias_f32(const float* x, const float* t, float* y, size_t bc, size_t hw) { add_channel_bias(x, t, y, bc, hw); }
extern "C" __global__ void add_channel_bias_bf16(const __nv_bfloat16* x, const __nv_bfloat16* t, __nv_bfloat16* y, size_t bc, size_t hw) { add_channel_bias(x, t, y, bc, hw); }
extern "C" __global__ void add_channel_bias_f16(const __half* x, const __half* t, __half* y, size_t bc, size_t hw) { add_channel_bias(x, t, y, bc, hw); }

extern "C" __global__ void sum_spatial_f32(const float* dy, float* dt, size_t bc, size_t hw) { sum_spatial(dy, dt, bc, hw); }
extern "C" __global__ void sum_spatial_bf16(const __nv_bfloat16* dy, __nv_bfloat16* dt, size_t bc, size_t hw) { sum_spatial(dy, dt, bc, hw); }
extern "C" __global__ void sum_spatial_f16(const __half* dy, __half* dt, size_t bc, size_t hw) { sum_spatial(dy, dt, bc, hw); }

extern "C" __global__ void concat_channels_f32(const float* a, const float* b, float* y, size_t n, size_t a_len, size_t b_len) { concat_channels(a, b, y, n, a_len, b_len); }
extern "C" __global__ void concat_channels_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* y, size_t n, size_t a_len, size_t b_len) { concat_channels(a, b, y, n, a_len, b_len); }
extern "C" __global__ void concat_channels_f16(const __half* a, const __half* b, __half* y, size_t n, size_t a_len, size_t b_len) { concat_channels(a, b, y, n, a_len, b_len); }

extern "C" __global__ void split_channels_f32(const float* dy, float* da, float* db, size_t n, size_t a_len, size_t b_len) { split_channels(dy, da, db, n, a_len, b_len); }
extern "C" __global__ void split_channels_bf16(const __nv_bfloat16* dy, __nv_bfloat16* da, __nv_bfloat16* db, size_t n, size_t a_len, size_t b_len) { split_channels(dy, da, db, n, a_len, b_len); }
extern "C" __global__ void split_channels_f16(const __half* dy, __half* da, __half* db, size_t n, size_t a_len, size_t b_len) { split_channels(dy, da, db, n, a_len, b_len); }

// The dropout backward is the same masked scaling applied to dy.
extern "C" __global__ void dropout_forward_f32(const float* x, float* y, size_t n, DropoutArgs a) { dropout_forward(x, y, n, a); }
extern "C" __global__ void dropout_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, size_t n, DropoutArgs a) { dropout_forward(x, y, n, a); }
extern "C" __global__ void dropout_forward_f16(const __half* x, __half* y, size_t n, DropoutArgs a) { dropout_forward(x, y, n, a); }

// Storage conversions (no f32 instantiation: in fp32 the glue copies).
extern "C" __global__ void cast_from_f32_bf16(const float* x, __nv_bfloat16* y, size_t n) { cast_from_f32(x, y, n); }
extern "C" __global__ void cast_from_f32_f16(const float* x, __half* y, size_t n) { cast_from_f32(x, y, n); }
extern "C" __global__ void cast_to_f32_bf16(const __nv_bfloat16* x, float* y, size_t n) { cast_to_f32(x, y, n); }
extern "C" __global__ void cast_to_f32_f16(const __half* x, float* y, size_t n) { cast_to_f32(x, y, n); }
