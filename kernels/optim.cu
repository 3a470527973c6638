// The optimizer side of a training step, each one pass over the flat parameter arena:
// global gradient norm, clipping, AdamW, EMA; and the fused pass a training step uses, which
// unscales and clips the gradient, updates AdamW, the EMA and the low-precision weight copy
// in one read of the arena (adamw_ema_step).
// CPU reference: src/optim/{clip,adamw,ema}.rs — same formulas, same operation order, same
// rounding points. Every product and sum goes through an explicit `__f*_rn` intrinsic so nvcc
// cannot fuse a multiply and an add into an FMA (Rust never does), which keeps the f32 updates
// bit for bit equal to the CPU's.
#include "common.cuh"

// ---- global gradient norm: a deterministic two-stage reduction ----------------------------
// Stage 1 always runs NORM_BLOCKS blocks of NORM_THREADS threads (never sized from the device),
// so the elements each thread adds and their order are fixed; each block writes one f64 partial.
// Stage 2, one block, adds the partials in a fixed tree. Squares are taken and summed in f64,
// as `global_grad_norm` does. No atomics. src/cuda/ops/optim.rs uses the same two numbers.
constexpr int NORM_BLOCKS = 1024;
constexpr int NORM_THREADS = 256;


// Stage 1 (launch exactly NORM_BLOCKS × NORM_THREADS): partials[block] = Σ g² in f64.
extern "C" __global__ void grad_norm_partials_f32(const float* grads, double* partials, size_t n) {
    double acc = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double g = (double)grads[i];
        acc = __dadd_rn(acc, __dmul_rn(g, g));
    }
    const double s = block_sum_f64<NORM_THREADS>(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Stage 2 (one block of NORM_THREADS): norm = f32(√Σ partials).
extern "C" __global__ void grad_norm_finish_f32(const double* partials, float* norm) {
    double acc = 0.0;
    for (int b = threadIdx.x; b < NORM_BLOCKS; b += NORM_THREADS) acc += partials[b];
    const double s = block_sum_f64<NORM_THREADS>(acc);
    if (threadIdx.x == 0) *norm = (float)sqrt(s);
}

// ---- clipping (Pascanu et al. 2013) ---------------------------------------------------------
// g ← g · f32(max_norm / (‖g‖ + 1e-6)) when ‖g‖ is finite and above max_norm, as
// `clip_grad_norm` does; otherwise nothing is written. ‖g‖ is read from the device (written by
// grad_norm_finish_f32), so no host round trip. The host skips the launch when clipping is off.
extern "C" __global__ void clip_grads_f32(float* grads, const float* norm, double max_norm, size_t n) {
    const double g_norm = (double)*norm;
    if (!(isfinite(g_norm) && g_norm > max_norm)) return;
    const float scale = (float)(max_norm / (g_norm + 1e-6));
    GRID_STRIDE_LOOP(i, n) { grads[i] = __fmul_rn(grads[i], scale); }
}

// ---- AdamW (Loshchilov & Hutter 2019) -------------------------------------------------------
// Field for field `AdamWCoeffs` in src/optim/adamw.rs: one update's scalars, computed on the host
// in f64 and rounded once.
struct AdamWCoeffs {
    float decay;            // 1 − η λ  (decoupled weight decay, scaled by the current η)
    float beta1;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float step_size;        // η / (1 − β₁ᵗ)
    float sqrt_bc2;         // √(1 − β₂ᵗ)
    float eps;
};

// `adamw_element`, in its order:
//   m ← β₁ m + (1 − β₁) g
//   v ← β₂ v + (1 − β₂) g²
//   θ ← θ (1 − η λ) − (η/(1 − β₁ᵗ)) m / (√v / √(1 − β₂ᵗ) + ε)
extern "C" __global__ void adamw_step_f32(float* params, const float* grads, float* m, float* v, AdamWCoeffs c, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = grads[i];
        const float mi = __fadd_rn(__fmul_rn(c.beta1, m[i]), __fmul_rn(c.one_minus_beta1, g));
        const float vi = __fadd_rn(__fmul_rn(c.beta2, v[i]), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.sqrt_bc2), c.eps);
        params[i] = __fsub_rn(__fmul_rn(params[i], c.decay), __fdiv_rn(__fmul_rn(c.step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

// ---- EMA of the weights (DDPM §4) -----------------------------------------------------------
// ema ← ema + rate · (θ − ema), rate = f32(1 − decay) from f64 on the host: the CPU's form, which
// equals decay·ema + (1 − decay)·θ but keeps the small increment representable at decay 0.9999.
extern "C" __global__ void ema_update_f32(float* ema, const float* params, float rate, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        const float e = ema[i];
        ema[i] = __fadd_rn(e, __fmul_rn(rate, __fsub_rn(params[i], e)));
    }
}

// ---- the fused optimizer pass ---------------------------------------------------------------
// Field for field `FusedStep` in src/cuda/ops/optim.rs.
struct FusedStep {
    AdamWCoeffs adam;
    float grad_scale;  // g ← g · grad_scale first (clipping and the loss scale's 1/S); 1: none
    float ema_rate;    // 1 − decay, as ema_update_f32
    int32_t ema_mode;  // 0: leave the EMA, 1: average, 2: copy θ
    uint32_t pad;
};

// One pass, per parameter i, in the order of the separate kernels (clip_grads_f32, then
// adamw_step_f32, then ema_update_f32), so in fp32 it gives their bits:
//   g  = grad · grad_scale                     (clip and loss-scale; skipped when 1)
//   m, v, θ ← AdamW(θ, g)                     (`adamw_element`)
//   ema ← ema + rate · (θ − ema)  or  ema ← θ
//   lowp ← θ rounded to T, the copy the GEMMs read (skipped when lowp is null)
// The gradient array is read, never written.
template <typename T>
__device__ void adamw_ema_step(float* params, const float* grads, float* m, float* v, float* ema, T* lowp, FusedStep s, size_t n) {
    const AdamWCoeffs c = s.adam;
    GRID_STRIDE_LOOP(i, n) {
        float g = grads[i];
        if (s.grad_scale != 1.0f) g = __fmul_rn(g, s.grad_scale);
        const float mi = __fadd_rn(__fmul_rn(c.beta1, m[i]), __fmul_rn(c.one_minus_beta1, g));
        const float vi = __fadd_rn(__fmul_rn(c.beta2, v[i]), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.sqrt_bc2), c.eps);
        const float p = __fsub_rn(__fmul_rn(params[i], c.decay), __fdiv_rn(__fmul_rn(c.step_size, mi), denom));
        params[i] = p;
        m[i] = mi;
        v[i] = vi;
        if (s.ema_mode == 1) {
            const float e = ema[i];
            ema[i] = __fadd_rn(e, __fmul_rn(s.ema_rate, __fsub_rn(p, e)));
        } else if (s.ema_mode == 2) {
            ema[i] = p;
        }
        if (lowp != nullptr) lowp[i] = from_f32<T>(p);
    }
}

extern "C" __global__ void adamw_ema_step_f32(float* params, const float* grads, float* m, float* v, float* ema, float* lowp, FusedStep s, size_t n) { adamw_ema_step(params, grads, m, v, ema, lowp, s, n); }
extern "C" __global__ void adamw_ema_step_bf16(float* params, const float* grads, float* m, float* v, float* ema, __nv_bfloat16* lowp, FusedStep s, size_t n) { adamw_ema_step(params, grads, m, v, ema, lowp, s, n); }
extern "C" __global__ void adamw_ema_step_f16(float* params, const float* grads, float* m, float* v, float* ema, __half* lowp, FusedStep s, size_t n) { adamw_ema_step(params, grads, m, v, ema, lowp, s, n); }
