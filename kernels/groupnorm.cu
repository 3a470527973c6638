// Group normalisation, NCHW, fp32 statistics. CPU reference: src/ops/groupnorm.rs (same formulas).
// Launch glue, chunk sizes and the scratch layout: src/cuda/ops/groupnorm.rs.
//
// x: (B, C, HW). Group g of image b is the contiguous run of n = (C/G)·HW elements starting at
// (b·G + g)·n, and "bg" below is that run's index b·G + g. Saved for the backward: mean and rstd,
// (B, G) each.
//
// Forward, group of at most `chunk` elements: one block per group does everything
// (group_norm_forward). Larger groups are split so a few huge groups still fill the GPU:
//   group_norm_partial_stats   per (group, chunk): mean and M2 = Σ (x − mean)², two-pass
//   group_norm_combine_stats   per group: exact merge of the chunks (Chan et al.), in chunk order
//   group_norm_apply           y = (x − μ)·γ·rstd + β
// Backward (every group size):
//   group_norm_backward_sums   per (image, channel, chunk of HW): Σ dy and Σ dy·x̂
//   group_norm_backward_coeffs per group: m1 = mean(γ·dy), m2 = mean(γ·dy·x̂)
//   group_norm_param_grads     per channel: dγ += Σ dy·x̂, dβ += Σ dy over the batch
//   group_norm_backward_dx     dx = rstd·(γ·dy − m1 − x̂·m2)
// Every reduction has a fixed shape and order (no atomics), so results are bitwise reproducible.
// Reductions that use block_sum need blockDim.x to be a multiple of 32; the glue guarantees it.
//
// Precision: the activations x, y, dy, dx are stored as T (float, __nv_bfloat16 or __half) and
// widened on load; γ, β, dγ, dβ, mean, rstd and every partial/scratch value are float, and all
// arithmetic is fp32. Only the kernels that read or write an activation exist per dtype; the
// others (combine_stats, backward_coeffs, param_grads) have just the _f32 entry point.
#include "common.cuh"

// The fused variants (group_norm_silu_*) write a = silu(y) instead of y, and their backward reads
// da instead of dy, recomputing y from x, the statistics, γ and β (so y is never stored) and
// dy = da·silu'(y) on the fly. The formulas are elementwise.cu's SiLU ones.
__device__ __forceinline__ float silu_of(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float silu_grad(float v, float da) {
    const float s = 1.0f / (1.0f + expf(-v));
    return da * s * (1.0f + v * (1.0f - s));
}


// One block per group (n <= chunk): mean, then Σ (x − mean)² (two passes over data the block
// has just read, so no cancellation), then y = (x − μ)·(γ_c·rstd) + β_c.
// x, y: (B·G, n)  gamma, beta: (C)  mean, rstd: (B·G)
template <typename T, bool SILU = false>
__device__ void group_norm_forward(const T* x, const float* gamma, const float* beta, T* y, float* mean, float* rstd,
                                   size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) {
    __shared__ float buf[33];
    const unsigned n = cg * hw;
    for (size_t bg = blockIdx.x; bg < groups_total; bg += gridDim.x) {
        const T* xg = x + bg * n;
        T* yg = y + bg * n;
        float s = 0.0f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += to_f32(xg[j]);
        const float mu = block_sum(s, buf) / (float)n;
        float q = 0.0f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            const float d = to_f32(xg[j]) - mu;
            q += d * d;
        }
        const float var = block_sum(q, buf) / (float)n;
        const float r = 1.0f / sqrtf(var + eps);
        if (threadIdx.x == 0) {
            mean[bg] = mu;
            rstd[bg] = r;
        }
        const unsigned first_c = (unsigned)(bg % groups) * cg;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            const unsigned c = first_c + j / hw;
            const float v = (to_f32(xg[j]) - mu) * (gamma[c] * r) + beta[c];
            yg[j] = from_f32<T>(SILU ? silu_of(v) : v);
        }
    }
}

// Block `blk` = bg·chunks + k reduces elements [k·chunk, min(n, (k+1)·chunk)) of group bg into
// partial[2·blk] = chunk mean, partial[2·blk + 1] = Σ (x − chunk mean)².
// x: (B·G, n)  partial: (B·G, chunks, 2)
template <typename T>
__device__ void group_norm_partial_stats(const T* x, float* partial, size_t groups_total, size_t n, size_t chunk, unsigned chunks) {
    __shared__ float buf[33];
    for (size_t blk = blockIdx.x; blk < groups_total * chunks; blk += gridDim.x) {
        const size_t bg = blk / chunks, k = blk % chunks;
        const size_t start = k * chunk;
        const unsigned len = (unsigned)min(chunk, n - start);
        const T* xc = x + bg * n + start;
        float s = 0.0f;
        for (unsigned j = threadIdx.x; j < len; j += blockDim.x) s += to_f32(xc[j]);
        const float m = block_sum(s, buf) / (float)len;
        float q = 0.0f;
        for (unsigned j = threadIdx.x; j < len; j += blockDim.x) {
            const float d = to_f32(xc[j]) - m;
            q += d * d;
        }
        const float m2 = block_sum(q, buf);
        if (threadIdx.x == 0) {
            partial[2 * blk] = m;
            partial[2 * blk + 1] = m2;
        }
    }
}

// One thread per group merges its chunks in order:
//   μ = Σ_k n_k·μ_k / n,   M2 = Σ_k (M2_k + n_k·(μ_k − μ)²),   var = M2 / n  (biased, as the CPU).
// partial: (B·G, chunks, 2)  mean, rstd: (B·G)
__device__ void group_norm_combine_stats(const float* partial, float* mean, float* rstd, size_t groups_total, size_t n, size_t chunk,
                                         unsigned chunks, float eps) {
    GRID_STRIDE_LOOP(bg, groups_total) {
        const float* p = partial + 2 * bg * chunks;
        float total = 0.0f;
        for (unsigned k = 0; k < chunks; ++k) total += (float)min(chunk, n - k * chunk) * p[2 * k];
        const float mu = total / (float)n;
        float m2 = 0.0f;
        for (unsigned k = 0; k < chunks; ++k) {
            const float d = p[2 * k] - mu;
            m2 += p[2 * k + 1] + (float)min(chunk, n - k * chunk) * d * d;
        }
        mean[bg] = mu;
        rstd[bg] = 1.0f / sqrtf(m2 / (float)n + eps);
    }
}

// One block per (image, channel) plane: y = (x − μ)·(γ_c·rstd) + β_c.
// x, y: (B·C, hw)  mean, rstd: (B·G)
template <typename T, bool SILU = false>
__device__ void group_norm_apply(const T* x, const float* gamma, const float* beta, const float* mean, const float* rstd, T* y,
                                 size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) {
    for (size_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const unsigned c = (unsigned)(plane % channels);
        const size_t bg = plane / channels * groups + c / cg;
        const float mu = mean[bg], scale = gamma[c] * rstd[bg], shift = beta[c];
        const T* xp = x + plane * hw;
        T* yp = y + plane * hw;
        for (size_t p = threadIdx.x; p < hw; p += blockDim.x) {
            const float v = (to_f32(xp[p]) - mu) * scale + shift;
            yp[p] = from_f32<T>(SILU ? silu_of(v) : v);
        }
    }
}

// Block `blk` = plane·chunks + k sums positions [k·chunk, min(hw, (k+1)·chunk)) of one
// (image, channel) plane: partial[2·blk] = Σ dy, partial[2·blk + 1] = Σ dy·x̂ = rstd·Σ dy·(x − μ)
// (from the saved mean: no cancellation, unlike Σ dy·x − μ·Σ dy).
// x, dy: (B·C, hw)  mean, rstd: (B·G)  partial: (B·C, chunks, 2)
// SILU: `dy` holds da, and dy = da·silu'(y) with y = (x − μ)·rstd·γ + β recomputed (γ, β given).
template <typename T, bool SILU = false>
__device__ void group_norm_backward_sums(const T* x, const T* dy, const float* gamma, const float* beta, const float* mean,
                                         const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg,
                                         unsigned groups, size_t hw, size_t chunk, unsigned chunks) {
    __shared__ float buf[33];
    for (size_t blk = blockIdx.x; blk < planes * chunks; blk += gridDim.x) {
        const size_t plane = blk / chunks, k = blk % chunks;
        const unsigned c = (unsigned)(plane % channels);
        const size_t bg = plane / channels * groups + c / cg;
        const float mu = mean[bg];
        const float scale = SILU ? gamma[c] * rstd[bg] : 0.0f, shift = SILU ? beta[c] : 0.0f;
        const size_t start = k * chunk;
        const unsigned len = (unsigned)min(chunk, hw - start);
        const T* xc = x + plane * hw + start;
        const T* gc = dy + plane * hw + start;
        float s1 = 0.0f, s2 = 0.0f;
        for (unsigned j = threadIdx.x; j < len; j += blockDim.x) {
            const float g = SILU ? silu_grad((to_f32(xc[j]) - mu) * scale + shift, to_f32(gc[j])) : to_f32(gc[j]);
            s1 += g;
            s2 += g * (to_f32(xc[j]) - mu);
        }
        s1 = block_sum(s1, buf);
        s2 = block_sum(s2, buf);
        if (threadIdx.x == 0) {
            partial[2 * blk] = s1;
            partial[2 * blk + 1] = s2 * rstd[bg];
        }
    }
}

// One block per group: m1 = Σ_c γ_c·Σ dy / n and m2 = Σ_c γ_c·Σ dy·x̂ / n over the group's
// channels and chunks — whose partials are the contiguous run of cg·chunks pairs at
// (b·C + g·cg)·chunks.
// gamma: (C)  partial: (B·C, chunks, 2)  coef: (B·G, 2)
__device__ void group_norm_backward_coeffs(const float* gamma, const float* partial, float* coef, size_t groups_total, unsigned channels,
                                           unsigned cg, unsigned groups, unsigned chunks, size_t n) {
    __shared__ float buf[33];
    const unsigned items = cg * chunks;
    for (size_t bg = blockIdx.x; bg < groups_total; bg += gridDim.x) {
        const size_t b = bg / groups;
        const unsigned first_c = (unsigned)(bg % groups) * cg;
        const float* p = partial + 2 * ((b * channels + first_c) * chunks);
        float a1 = 0.0f, a2 = 0.0f;
        for (unsigned j = threadIdx.x; j < items; j += blockDim.x) {
            const float gm = gamma[first_c + j / chunks];
            a1 += gm * p[2 * j];
            a2 += gm * p[2 * j + 1];
        }
        a1 = block_sum(a1, buf);
        a2 = block_sum(a2, buf);
        if (threadIdx.x == 0) {
            coef[2 * bg] = a1 / (float)n;
            coef[2 * bg + 1] = a2 / (float)n;
        }
    }
}

// One block per channel: dγ_c += Σ_{b,k} Σ dy·x̂, dβ_c += Σ_{b,k} Σ dy (parameter gradients
// accumulate).
// partial: (B·C, chunks, 2)  dgamma, dbeta: (C)
__device__ void group_norm_param_grads(const float* partial, float* dgamma, float* dbeta, size_t batch, unsigned channels, unsigned chunks) {
    __shared__ float buf[33];
    const size_t items = batch * chunks;
    for (unsigned c = blockIdx.x; c < channels; c += gridDim.x) {
        float s1 = 0.0f, s2 = 0.0f;
        for (size_t j = threadIdx.x; j < items; j += blockDim.x) {
            const size_t b = j / chunks, k = j % chunks;
            const float* p = partial + 2 * ((b * channels + c) * chunks + k);
            s1 += p[0];
            s2 += p[1];
        }
        s1 = block_sum(s1, buf);
        s2 = block_sum(s2, buf);
        if (threadIdx.x == 0) {
            dgamma[c] += s2;
            dbeta[c] += s1;
        }
    }
}

// One block per (image, channel) plane: dx = rstd·(γ_c·dy − m1 − (x − μ)·rstd·m2), written.
// x, dy, dx: (B·C, hw)  mean, rstd: (B·G)  coef: (B·G, 2)
// SILU: as in group_norm_backward_sums, `dy` holds da (β given).
template <typename T, bool SILU = false>
__device__ void group_norm_backward_dx(const T* x, const float* gamma, const float* beta, const float* mean, const float* rstd,
                                       const float* coef, const T* dy, T* dx, size_t planes, unsigned channels, unsigned cg,
                                       unsigned groups, size_t hw) {
    for (size_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const unsigned c = (unsigned)(plane % channels);
        const size_t bg = plane / channels * groups + c / cg;
        const float mu = mean[bg], r = rstd[bg], gm = gamma[c];
        const float m1 = coef[2 * bg], m2 = coef[2 * bg + 1];
        const T* xp = x + plane * hw;
        const T* gp = dy + plane * hw;
        T* dp = dx + plane * hw;
        const float shift = SILU ? beta[c] : 0.0f;
        for (size_t p = threadIdx.x; p < hw; p += blockDim.x) {
            const float xv = to_f32(xp[p]);
            const float g = SILU ? silu_grad((xv - mu) * (gm * r) + shift, to_f32(gp[p])) : to_f32(gp[p]);
            dp[p] = from_f32<T>(r * (gm * g - m1 - (xv - mu) * r * m2));
        }
    }
}

// ---- f32: activations stored as float ----
extern "C" __global__ void group_norm_forward_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd, size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) { group_norm_forward(x, gamma, beta, y, mean, rstd, groups_total, groups, cg, hw, eps); }
extern "C" __global__ void group_norm_partial_stats_f32(const float* x, float* partial, size_t groups_total, size_t n, size_t chunk, unsigned chunks) { group_norm_partial_stats(x, partial, groups_total, n, chunk, chunks); }
extern "C" __global__ void group_norm_apply_f32(const float* x, const float* gamma, const float* beta, const float* mean, const float* rstd, float* y, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_apply(x, gamma, beta, mean, rstd, y, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_backward_sums_f32(const float* x, const float* dy, const float* mean, const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw, size_t chunk, unsigned chunks) { group_norm_backward_sums(x, dy, (const float*)nullptr, (const float*)nullptr, mean, rstd, partial, planes, channels, cg, groups, hw, chunk, chunks); }
extern "C" __global__ void group_norm_backward_dx_f32(const float* x, const float* gamma, const float* mean, const float* rstd, const float* coef, const float* dy, float* dx, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_backward_dx(x, gamma, (const float*)nullptr, mean, rstd, coef, dy, dx, planes, channels, cg, groups, hw); }
// No activation: fp32 only.
extern "C" __global__ void group_norm_combine_stats_f32(const float* partial, float* mean, float* rstd, size_t groups_total, size_t n, size_t chunk, unsigned chunks, float eps) { group_norm_combine_stats(partial, mean, rstd, groups_total, n, chunk, chunks, eps); }
extern "C" __global__ void group_norm_backward_coeffs_f32(const float* gamma, const float* partial, float* coef, size_t groups_total, unsigned channels, unsigned cg, unsigned groups, unsigned chunks, size_t n) { group_norm_backward_coeffs(gamma, partial, coef, groups_total, channels, cg, groups, chunks, n); }
extern "C" __global__ void group_norm_param_grads_f32(const float* partial, float* dgamma, float* dbeta, size_t batch, unsigned channels, unsigned chunks) { group_norm_param_grads(partial, dgamma, dbeta, batch, channels, chunks); }

// ---- bf16: activations stored as __nv_bfloat16 ----
extern "C" __global__ void group_norm_forward_bf16(const __nv_bfloat16* x, const float* gamma, const float* beta, __nv_bfloat16* y, float* mean, float* rstd, size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) { group_norm_forward(x, gamma, beta, y, mean, rstd, groups_total, groups, cg, hw, eps); }
extern "C" __global__ void group_norm_partial_stats_bf16(const __nv_bfloat16* x, float* partial, size_t groups_total, size_t n, size_t chunk, unsigned chunks) { group_norm_partial_stats(x, partial, groups_total, n, chunk, chunks); }
extern "C" __global__ void group_norm_apply_bf16(const __nv_bfloat16* x, const float* gamma, const float* beta, const float* mean, const float* rstd, __nv_bfloat16* y, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_apply(x, gamma, beta, mean, rstd, y, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_backward_sums_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy, const float* mean, const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw, size_t chunk, unsigned chunks) { group_norm_backward_sums(x, dy, (const float*)nullptr, (const float*)nullptr, mean, rstd, partial, planes, channels, cg, groups, hw, chunk, chunks); }
extern "C" __global__ void group_norm_backward_dx_bf16(const __nv_bfloat16* x, const float* gamma, const float* mean, const float* rstd, const float* coef, const __nv_bfloat16* dy, __nv_bfloat16* dx, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_backward_dx(x, gamma, (const float*)nullptr, mean, rstd, coef, dy, dx, planes, channels, cg, groups, hw); }

// ---- f16: activations stored as __half ----
extern "C" __global__ void group_norm_forward_f16(const __half* x, const float* gamma, const float* beta, __half* y, float* mean, float* rstd, size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) { group_norm_forward(x, gamma, beta, y, mean, rstd, groups_total, groups, cg, hw, eps); }
extern "C" __global__ void group_norm_partial_stats_f16(const __half* x, float* partial, size_t groups_total, size_t n, size_t chunk, unsigned chunks) { group_norm_partial_stats(x, partial, groups_total, n, chunk, chunks); }
extern "C" __global__ void group_norm_apply_f16(const __half* x, const float* gamma, const float* beta, const float* mean, const float* rstd, __half* y, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_apply(x, gamma, beta, mean, rstd, y, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_backward_sums_f16(const __half* x, const __half* dy, const float* mean, const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw, size_t chunk, unsigned chunks) { group_norm_backward_sums(x, dy, (const float*)nullptr, (const float*)nullptr, mean, rstd, partial, planes, channels, cg, groups, hw, chunk, chunks); }
extern "C" __global__ void group_norm_backward_dx_f16(const __half* x, const float* gamma, const float* mean, const float* rstd, const float* coef, const __half* dy, __half* dx, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_backward_dx(x, gamma, (const float*)nullptr, mean, rstd, coef, dy, dx, planes, channels, cg, groups, hw); }

// ---- group norm + SiLU, fused: a = silu(group_norm(x)) and its backward from da ----
extern "C" __global__ void group_norm_silu_forward_f32(const float* x, const float* gamma, const float* beta, float* a, float* mean, float* rstd, size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) { group_norm_forward<float, true>(x, gamma, beta, a, mean, rstd, groups_total, groups, cg, hw, eps); }
extern "C" __global__ void group_norm_silu_apply_f32(const float* x, const float* gamma, const float* beta, const float* mean, const float* rstd, float* a, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_apply<float, true>(x, gamma, beta, mean, rstd, a, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_silu_backward_sums_f32(const float* x, const float* da, const float* gamma, const float* beta, const float* mean, const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw, size_t chunk, unsigned chunks) { group_norm_backward_sums<float, true>(x, da, gamma, beta, mean, rstd, partial, planes, channels, cg, groups, hw, chunk, chunks); }
extern "C" __global__ void group_norm_silu_backward_dx_f32(const float* x, const float* gamma, const float* beta, const float* mean, const float* rstd, const float* coef, const float* da, float* dx, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_backward_dx<float, true>(x, gamma, beta, mean, rstd, coef, da, dx, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_silu_forward_bf16(const __nv_bfloat16* x, const float* gamma, const float* beta, __nv_bfloat16* a, float* mean, float* rstd, size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) { group_norm_forward<__nv_bfloat16, true>(x, gamma, beta, a, mean, rstd, groups_total, groups, cg, hw, eps); }
extern "C" __global__ void group_norm_silu_apply_bf16(const __nv_bfloat16* x, const float* gamma, const float* beta, const float* mean, const float* rstd, __nv_bfloat16* a, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_apply<__nv_bfloat16, true>(x, gamma, beta, mean, rstd, a, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_silu_backward_sums_bf16(const __nv_bfloat16* x, const __nv_bfloat16* da, const float* gamma, const float* beta, const float* mean, const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw, size_t chunk, unsigned chunks) { group_norm_backward_sums<__nv_bfloat16, true>(x, da, gamma, beta, mean, rstd, partial, planes, channels, cg, groups, hw, chunk, chunks); }
extern "C" __global__ void group_norm_silu_backward_dx_bf16(const __nv_bfloat16* x, const float* gamma, const float* beta, const float* mean, const float* rstd, const float* coef, const __nv_bfloat16* da, __nv_bfloat16* dx, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_backward_dx<__nv_bfloat16, true>(x, gamma, beta, mean, rstd, coef, da, dx, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_silu_forward_f16(const __half* x, const float* gamma, const float* beta, __half* a, float* mean, float* rstd, size_t groups_total, unsigned groups, unsigned cg, unsigned hw, float eps) { group_norm_forward<__half, true>(x, gamma, beta, a, mean, rstd, groups_total, groups, cg, hw, eps); }
extern "C" __global__ void group_norm_silu_apply_f16(const __half* x, const float* gamma, const float* beta, const float* mean, const float* rstd, __half* a, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_apply<__half, true>(x, gamma, beta, mean, rstd, a, planes, channels, cg, groups, hw); }
extern "C" __global__ void group_norm_silu_backward_sums_f16(const __half* x, const __half* da, const float* gamma, const float* beta, const float* mean, const float* rstd, float* partial, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw, size_t chunk, unsigned chunks) { group_norm_backward_sums<__half, true>(x, da, gamma, beta, mean, rstd, partial, planes, channels, cg, groups, hw, chunk, chunks); }
extern "C" __global__ void group_norm_silu_backward_dx_f16(const __half* x, const float* gamma, const float* beta, const float* mean, const float* rstd, const float* coef, const __half* da, __half* dx, size_t planes, unsigned channels, unsigned cg, unsigned groups, size_t hw) { group_norm_backward_dx<__half, true>(x, gamma, beta, mean, rstd, coef, da, dx, planes, channels, cg, groups, hw); }
