// Diffusion kernels: the fused training "noise-add" and the sampler steps.
// CPU reference: src/diffusion/{noise,forward,target,sampler}.rs and `Trainer::train_step` in
// src/train/mod.rs. Random numbers are drawn in the kernels from the same Philox words the CPU
// uses (kernels/common.cuh is src/rng.rs bit for bit), so no noise buffer is ever written or read.
//
// Every f32 product and sum goes through an explicit `__f*_rn` intrinsic so nvcc cannot fuse a
// multiply and an add into an FMA (Rust never does): given the same noise, x_t, the targets and
// the step outputs are the CPU's to the last bit.
#include "common.cuh"

// ---- Gaussian noise (src/diffusion/noise.rs) ---------------------------------------------------
// Element j of normal stream s is Box–Muller on words 2j, 2j+1 of (seed, s). Those two words are
// lanes (0, 1) or (2, 3) of Philox block j/2, so one block gives elements 2p and 2p+1: every
// thread below handles one such pair.

// Philox block `block` of stream (seed, stream): words 4·block .. 4·block + 3.
__device__ __forceinline__ Philox4 philox_block(uint64_t seed, uint64_t stream, uint64_t block) {
    Philox4 ctr = {{(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
    return philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
}

// `normal_from_words`: in f64, rounded once to f32.
//   u1 = (w0 + 1)·2⁻³² ∈ (0, 1],  u2 = w1·2⁻³² ∈ [0, 1),  z = √(−2 ln u1) · cos(2π u2)
// Both uniforms are exact; sqrt is correctly rounded on both sides, log and cos can differ from
// the host's libm by an f64 ulp or two, which moves the f32 result only in rare boundary cases.
__device__ __forceinline__ float normal_from_words(uint32_t w0, uint32_t w1) {
    const double two_pow_m32 = 1.0 / 4294967296.0;
    const double tau = 6.283185307179586;  // std::f64::consts::TAU
    const double u1 = __dmul_rn(__dadd_rn((double)w0, 1.0), two_pow_m32);
    const double u2 = __dmul_rn((double)w1, two_pow_m32);
    return (float)__dmul_rn(sqrt(__dmul_rn(-2.0, log(u1))), cos(__dmul_rn(tau, u2)));
}

// ---- training timesteps (`timestep_for`) --------------------------------------------------------
// Uniform on [0, T): Lemire's multiply-shift on words 0, 1, … of the item's TrainTimestep stream,
// rejecting words whose low product half is below 2³² mod T (`reject_below`).
__device__ __forceinline__ uint32_t train_timestep(uint64_t seed, uint64_t stream, uint32_t num_timesteps, uint32_t reject_below) {
    for (uint64_t i = 0;; ++i) {
        const uint64_t m = (uint64_t)philox_word(seed, stream, i) * (uint64_t)num_timesteps;
        if ((m & 0xFFFFFFFFull) >= (uint64_t)reject_below) return (uint32_t)(m >> 32);
    }
}

// Field for field `NoiseAddParams` in src/cuda/ops/diffusion.rs.
struct NoiseAddParams {
    uint64_t seed;
    uint64_t noise_stream;  // stream(TrainNoise, step, 0); item i uses noise_stream | i
    uint64_t t_stream;      // stream(TrainTimestep, step, 0); item i uses t_stream | i
    uint64_t batch;
    uint64_t item_len;
    uint32_t num_timesteps;  // T
    uint32_t reject_below;   // 2³² mod T
    int32_t prediction;      // 0: ε, 1: x₀ ("sample"), 2: v
    uint32_t pad;
};

// x_t = a·x0 + b·ε and target = cx·x0 + ce·ε for element k (the CPU's `mix_items`).
// x_t is the model's input, stored as T (rounded once from the fp32 value); the target stays fp32.
template <typename T>
__device__ __forceinline__ void noise_add_element(const float* x0, T* x_t, float* target, size_t k, float eps, float a, float b, float cx, float ce) {
    const float x = x0[k];
    x_t[k] = from_f32<T>(__fadd_rn(__fmul_rn(a, x), __fmul_rn(b, eps)));
    target[k] = __fadd_rn(__fmul_rn(cx, x), __fmul_rn(ce, eps));
}

// One training step's fused forward process, per item i of the batch (all of it in one pass):
//   t_i ~ U{0..T−1}  (`timestep_for`; every thread of the item draws it again, one Philox block)
//   ε   ~ N(0, I)    (`fill_train_noise`)
//   x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε                       DDPM eq. 4 (`add_noise`)
//   target = ε, x0, or v = √ᾱ_t ε − √(1 − ᾱ_t) x0     (`training_target`)
// and t_i as f32 for the UNet's time embedding. Shapes: x0, x_t, target (B, item_len);
// sqrt_ab, sqrt_1m_ab (T) f32 tables from `Schedule`; t_out (B).
template <typename T>
__device__ void noise_add(const float* x0, const float* sqrt_ab, const float* sqrt_1m_ab, T* x_t, float* target, float* t_out, NoiseAddParams p) {
    const size_t pairs = (size_t)((p.item_len + 1) / 2);
    GRID_STRIDE_LOOP(idx, (size_t)p.batch * pairs) {
        const uint64_t item = idx / pairs, pair = idx % pairs;
        const uint32_t t = train_timestep(p.seed, p.t_stream | item, p.num_timesteps, p.reject_below);
        const float a = sqrt_ab[t], b = sqrt_1m_ab[t];
        // `PredictionType::target_coeffs` rounded to f32: (0, 1), (1, 0), (−√(1 − ᾱ), √ᾱ).
        float cx = -b, ce = a;
        if (p.prediction == 0) { cx = 0.0f; ce = 1.0f; }
        if (p.prediction == 1) { cx = 1.0f; ce = 0.0f; }
        if (pair == 0) t_out[item] = (float)t;
        const Philox4 w = philox_block(p.seed, p.noise_stream | item, pair);
        const size_t j = 2 * (size_t)pair;
        const size_t k = (size_t)item * p.item_len + j;
        noise_add_element(x0, x_t, target, k, normal_from_words(w.v[0], w.v[1]), a, b, cx, ce);
        if (j + 1 < p.item_len) noise_add_element(x0, x_t, target, k + 1, normal_from_words(w.v[2], w.v[3]), a, b, cx, ce);
    }
}

extern "C" __global__ void noise_add_f32(const float* x0, const float* sqrt_ab, const float* sqrt_1m_ab, float* x_t, float* target, float* t_out, NoiseAddParams p) { noise_add(x0, sqrt_ab, sqrt_1m_ab, x_t, target, t_out, p); }
extern "C" __global__ void noise_add_bf16(const float* x0, const float* sqrt_ab, const float* sqrt_1m_ab, __nv_bfloat16* x_t, float* target, float* t_out, NoiseAddParams p) { noise_add(x0, sqrt_ab, sqrt_1m_ab, x_t, target, t_out, p); }
extern "C" __global__ void noise_add_f16(const float* x0, const float* sqrt_ab, const float* sqrt_1m_ab, __half* x_t, float* target, float* t_out, NoiseAddParams p) { noise_add(x0, sqrt_ab, sqrt_1m_ab, x_t, target, t_out, p); }

// ---- sampler updates (src/diffusion/sampler/coeffs.rs) ---------------------------------------
// Field for field `StepCoeffs` in src/diffusion/sampler/coeffs.rs.
struct StepCoeffs {
    float x0_x, x0_out;  // raw x̂₀ = x0_x·x_t + x0_out·o (DDPM eq. 15 for ε)
    float clip;          // |x̂₀| bound, +∞ when off
    float c_x0;          // weight of the clipped x̂₀ in x_new
    float c_x0_raw;      // weight of the unclipped x̂₀
    float c_xt;          // weight of x_t
    float c_out;         // weight of the model output itself
    float c_h;           // weight of the history
    float sigma;         // noise standard deviation; 0: no noise
    float d_x0, d_xt, d_h;  // h_new = d_x0·x̂₀ + d_xt·x_t + d_h·h
    float guidance;      // o = o_u + g·(o_c − o_u) when an unconditional output is given
};

// Field for field `StepNoiseParams` in src/cuda/ops/diffusion.rs.
struct StepNoiseParams {
    uint64_t seed;
    uint64_t stream;  // stream(SampleStep, 0, k): image id goes in bits 24..59 (STREAM_B_BITS = 24)
};

// `step_element_full`, in the same order of f32 operations (no FMA contraction):
//   o = out (or o_u + g·(o_c − o_u)); raw = x0_x·x_t + x0_out·o; x̂₀ = clamp(raw);
//   x_new = c_x0·x̂₀ + c_x0_raw·raw + c_xt·x_t [+ c_out·o] [+ c_h·h] [+ σ z];
//   h_new = d_x0·x̂₀ + d_xt·x_t [+ d_h·h], written when `hist` is given and any d is nonzero.
// The model output `out` (and `out_uncond`) is T; everything else fp32. `x_model`, when given,
// receives x_new rounded to T: the next model input.
template <typename T>
__device__ __forceinline__ void step_element(const StepCoeffs& c, const float* x_t, const T* out, const T* out_uncond, float* hist, float* x_new, T* x_model, float* x0, size_t k, float z) {
    const float xt = x_t[k];
    float o = to_f32(out[k]);
    if (out_uncond != nullptr) {
        const float u = to_f32(out_uncond[k]);
        o = __fadd_rn(u, __fmul_rn(c.guidance, __fsub_rn(o, u)));
    }
    const float raw = __fadd_rn(__fmul_rn(c.x0_x, xt), __fmul_rn(c.x0_out, o));
    float x0v = raw;  // f32::clamp: NaN stays NaN
    if (x0v < -c.clip) x0v = -c.clip;
    if (x0v > c.clip) x0v = c.clip;
    const float h = (hist != nullptr) ? hist[k] : 0.0f;
    float mean = __fadd_rn(__fadd_rn(__fmul_rn(c.c_x0, x0v), __fmul_rn(c.c_x0_raw, raw)), __fmul_rn(c.c_xt, xt));
    if (c.c_out != 0.0f) mean = __fadd_rn(mean, __fmul_rn(c.c_out, o));
    if (c.c_h != 0.0f) mean = __fadd_rn(mean, __fmul_rn(c.c_h, h));
    const float xn = c.sigma > 0.0f ? __fadd_rn(mean, __fmul_rn(c.sigma, z)) : mean;
    x_new[k] = xn;
    if (x_model != nullptr) x_model[k] = from_f32<T>(xn);
    if (x0 != nullptr) x0[k] = x0v;
    if (hist != nullptr && (c.d_x0 != 0.0f || c.d_xt != 0.0f || c.d_h != 0.0f)) {
        float hn = __fadd_rn(__fmul_rn(c.d_x0, x0v), __fmul_rn(c.d_xt, xt));
        if (c.d_h != 0.0f) hn = __fadd_rn(hn, __fmul_rn(c.d_h, h));
        hist[k] = hn;
    }
}

// One sampler update over (n_items, item_len): every sampler (DDPM eq. 11, DDIM eq. 12, Euler,
// Heun, Euler–Maruyama, DPM-Solver++(2M), DDIM inversion) is this map with its own
// coefficients, computed on the host. z of item i, element j is element j of the SampleStep
// stream (image_ids[i], k), drawn only when σ > 0. An image id that does not fit the stream's
// 36 bits (the host checks ids when it makes x_T) gives NaN rather than another image's noise.
// x_new may alias x_t and x0 may alias out (fp32 only): each element is read before it is
// written. `x_model` (or null) receives x_new in T, the next model input.
template <typename T>
__device__ void sampler_update(StepCoeffs c, StepNoiseParams nz, const float* x_t, const T* out, const T* out_uncond, float* hist, float* x_new, T* x_model, float* x0, const uint64_t* image_ids, size_t n_items, size_t item_len) {
    const size_t pairs = (item_len + 1) / 2;
    GRID_STRIDE_LOOP(idx, n_items * pairs) {
        const size_t item = idx / pairs, pair = idx % pairs;
        float z0 = 0.0f, z1 = 0.0f;
        if (c.sigma > 0.0f) {
            const uint64_t id = image_ids[item];
            if ((id >> 36) != 0) {
                z0 = z1 = __int_as_float(0x7fc00000);
            } else {
                const Philox4 w = philox_block(nz.seed, nz.stream | (id << 24), pair);
                z0 = normal_from_words(w.v[0], w.v[1]);
                z1 = normal_from_words(w.v[2], w.v[3]);
            }
        }
        const size_t j = 2 * pair;
        const size_t k = item * item_len + j;
        step_element(c, x_t, out, out_uncond, hist, x_new, x_model, x0, k, z0);
        if (j + 1 < item_len) step_element(c, x_t, out, out_uncond, hist, x_new, x_model, x0, k + 1, z1);
    }
}

extern "C" __global__ void sampler_update_f32(StepCoeffs c, StepNoiseParams nz, const float* x_t, const float* out, const float* out_uncond, float* hist, float* x_new, float* x_model, float* x0, const uint64_t* image_ids, size_t n_items, size_t item_len) { sampler_update(c, nz, x_t, out, out_uncond, hist, x_new, x_model, x0, image_ids, n_items, item_len); }
extern "C" __global__ void sampler_update_bf16(StepCoeffs c, StepNoiseParams nz, const float* x_t, const __nv_bfloat16* out, const __nv_bfloat16* out_uncond, float* hist, float* x_new, __nv_bfloat16* x_model, float* x0, const uint64_t* image_ids, size_t n_items, size_t item_len) { sampler_update(c, nz, x_t, out, out_uncond, hist, x_new, x_model, x0, image_ids, n_items, item_len); }
extern "C" __global__ void sampler_update_f16(StepCoeffs c, StepNoiseParams nz, const float* x_t, const __half* out, const __half* out_uncond, float* hist, float* x_new, __half* x_model, float* x0, const uint64_t* image_ids, size_t n_items, size_t item_len) { sampler_update(c, nz, x_t, out, out_uncond, hist, x_new, x_model, x0, image_ids, n_items, item_len); }
