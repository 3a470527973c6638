// Mean-reduced regression losses: MSE (DDPM eq. 14, the "simple" objective) and L1.
// CPU reference: src/ops/loss.rs (same formulas, same rounding points).
//
// The forward is a two-stage reduction that gives the same bits on every run and every GPU:
// stage 1 always runs LOSS_BLOCKS blocks of LOSS_THREADS threads (never sized from the device),
// so which elements each thread adds, and in what order, is fixed; each block writes one f64
// partial sum. Stage 2 is one block that adds the LOSS_BLOCKS partials in a fixed tree. No atomics.
//
// Like the CPU, the per-element term f(pred − target) is computed in f32 and accumulated in f64,
// and the mean is rounded to f32 once at the end, so the two agree to the last bit except when
// the f64 sum lands within a few f64 ulps of an f32 rounding boundary.
//
// Storage: pred and dpred are the activation type T (pred widened exactly, dpred rounded once);
// target is fp32 (the noise), the partials f64 and the loss f32.
#include "common.cuh"

// Fixed launch shape of stage 1; src/cuda/ops/loss.rs launches exactly this and sizes the scratch
// (LOSS_BLOCKS f64 partials) from the same numbers.
constexpr int LOSS_BLOCKS = 1024;
constexpr int LOSS_THREADS = 256;


// The per-element terms, in f32 as the CPU computes them (`__fmul_rn` keeps nvcc from fusing).
struct SquaredError {
    __device__ float operator()(float d) const { return __fmul_rn(d, d); }
};
struct AbsoluteError {
    __device__ float operator()(float d) const { return fabsf(d); }
};

// Stage 1: partials[block] = Σ f(pred[i] − target[i]) over this block's elements, in f64.
template <typename T, typename F>
__device__ void loss_partials(const T* pred, const float* target, double* partials, size_t n, F f) {
    double acc = 0.0;
    GRID_STRIDE_LOOP(i, n) { acc += (double)f(__fsub_rn(to_f32(pred[i]), target[i])); }
    const double s = block_sum_f64<LOSS_THREADS>(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// dpred = k · (pred − target),  k = dloss · 2/N computed on the host as the CPU does  (written)
template <typename T>
__device__ void mse_backward(const T* pred, const float* target, T* dpred, float k, size_t n) {
    GRID_STRIDE_LOOP(i, n) { dpred[i] = from_f32<T>(__fmul_rn(k, __fsub_rn(to_f32(pred[i]), target[i]))); }
}

// dpred = k · sign(pred − target) with sign(0) = 0 (and NaN → 0, as the CPU's comparisons give),
// k = dloss / N computed on the host  (written)
template <typename T>
__device__ void l1_backward(const T* pred, const float* target, T* dpred, float k, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const float d = __fsub_rn(to_f32(pred[i]), target[i]);
        dpred[i] = from_f32<T>(d > 0.0f ? k : (d < 0.0f ? -k : 0.0f));
    }
}

// Stage 1 of each forward (launch exactly LOSS_BLOCKS × LOSS_THREADS).
extern "C" __global__ void mse_forward_f32(const float* pred, const float* target, double* partials, size_t n) { loss_partials(pred, target, partials, n, SquaredError()); }
extern "C" __global__ void mse_forward_bf16(const __nv_bfloat16* pred, const float* target, double* partials, size_t n) { loss_partials(pred, target, partials, n, SquaredError()); }
extern "C" __global__ void mse_forward_f16(const __half* pred, const float* target, double* partials, size_t n) { loss_partials(pred, target, partials, n, SquaredError()); }
extern "C" __global__ void l1_forward_f32(const float* pred, const float* target, double* partials, size_t n) { loss_partials(pred, target, partials, n, AbsoluteError()); }
extern "C" __global__ void l1_forward_bf16(const __nv_bfloat16* pred, const float* target, double* partials, size_t n) { loss_partials(pred, target, partials, n, AbsoluteError()); }
extern "C" __global__ void l1_forward_f16(const __half* pred, const float* target, double* partials, size_t n) { loss_partials(pred, target, partials, n, AbsoluteError()); }

// Stage 2 (one block of LOSS_THREADS): loss = f32(Σ partials / max(N, 1)), the CPU's mean.
extern "C" __global__ void loss_finish_f32(const double* partials, float* loss, size_t n) {
    double acc = 0.0;
    for (int b = threadIdx.x; b < LOSS_BLOCKS; b += LOSS_THREADS) acc += partials[b];
    const double s = block_sum_f64<LOSS_THREADS>(acc);
    if (threadIdx.x == 0) *loss = (float)(s / (double)(n > 0 ? n : 1));
}

extern "C" __global__ void mse_backward_f32(const float* pred, const float* target, float* dpred, float k, size_t n) { mse_backward(pred, target, dpred, k, n); }
extern "C" __global__ void mse_backward_bf16(const __nv_bfloat16* pred, const float* target, __nv_bfloat16* dpred, float k, size_t n) { mse_backward(pred, target, dpred, k, n); }
extern "C" __global__ void mse_backward_f16(const __half* pred, const float* target, __half* dpred, float k, size_t n) { mse_backward(pred, target, dpred, k, n); }
extern "C" __global__ void l1_backward_f32(const float* pred, const float* target, float* dpred, float k, size_t n) { l1_backward(pred, target, dpred, k, n); }
extern "C" __global__ void l1_backward_bf16(const __nv_bfloat16* pred, const float* target, __nv_bfloat16* dpred, float k, size_t n) { l1_backward(pred, target, dpred, k, n); }
extern "C" __global__ void l1_backward_f16(const __half* pred, const float* target, __half* dpred, float k, size_t n) { l1_backward(pred, target, dpred, k, n); }
