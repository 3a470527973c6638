// Elementwise kernels: SiLU, residual add, scale, per-channel broadcast add, dropout.
// CPU reference: src/ops/{silu,add,dropout}.rs (same names, same formulas).
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

// y = keep(i) ? x * scale : 0 with keep(i) from Philox, so no mask is stored: the backward
// regenerates it from the same (seed, stream).
template <typename T>
__device__ void dropout_forward(const T* x, T* y, size_t n, DropoutArgs a) {
    GRID_STRIDE_LOOP(i, n) {
        bool keep = philox_word(a.seed, a.stream, i) >= a.keep_threshold;
        y[i] = from_f32<T>(keep ? to_f32(x[i]) * a.scale : 0.0f);
    }
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

extern "C" __global__ void scale_f32(const float* x, float* y, float alpha, size_t n) { scale(x, y, alpha, n); }
extern "C" __global__ void scale_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, float alpha, size_t n) { scale(x, y, alpha, n); }
extern "C" __global__ void scale_f16(const __half* x, __half* y, float alpha, size_t n) { scale(x, y, alpha, n); }

extern "C" __global__ void add_channel_bias_f32(const float* x, const float* t, float* y, size_t bc, size_t hw) { add_channel_bias(x, t, y, bc, hw); }
extern "C" __global__ void add_channel_bias_bf16(const __nv_bfloat16* x, const __nv_bfloat16* t, __nv_bfloat16* y, size_t bc, size_t hw) { add_channel_bias(x, t, y, bc, hw); }
extern "C" __global__ void add_channel_bias_f16(const __half* x, const __half* t, __half* y, size_t bc, size_t hw) { add_channel_bias(x, t, y, bc, hw); }

// The dropout backward is the same masked scaling applied to dy.
extern "C" __global__ void dropout_forward_f32(const float* x, float* y, size_t n, DropoutArgs a) { dropout_forward(x, y, n, a); }
extern "C" __global__ void dropout_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, size_t n, DropoutArgs a) { dropout_forward(x, y, n, a); }
extern "C" __global__ void dropout_forward_f16(const __half* x, __half* y, size_t n, DropoutArgs a) { dropout_forward(x, y, n, a); }
