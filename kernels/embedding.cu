// Embeddings: the sinusoidal timestep embedding and the class-label embedding lookup.
// CPU reference: src/ops/embedding.rs (TimestepEmbedding) and the class embedding in
// src/nn/unet.rs (emb[i] += table[labels[i]]; backward dtable[labels[i]] += demb[i]).
#include "common.cuh"

// t: (N) float (timesteps stay fp32: 999 is not a bf16) → emb: (N, dim) T, rounded once.
// Column layout of a row (half = ⌊dim/2⌋):
//   [sin(t·f_0 … t·f_{half−1}), cos(…)], or [cos, sin] with flip_sin_to_cos, then one zero if dim
//   is odd;   f_j = exp(−ln(max_period) · j / (half − freq_shift)).
// The CPU computes f_j, t·f_j, sin and cos in f64 and rounds once to f32; so does this kernel
// (the double work is N·dim values, negligible), so both agree to the last f32 bit or so — an
// fp32 argument t·f would be off by ~1e-4 at t ≈ 1000.
template <typename T>
__device__ void timestep_embedding(const float* t, T* emb, size_t n, size_t dim, int flip_sin_to_cos, double freq_shift, double max_period) {
    const size_t half = dim / 2;
    GRID_STRIDE_LOOP(i, n * dim) {
        const size_t row = i / dim, col = i % dim;
        if (col >= 2 * half) {  // the zero pad of an odd dim
            emb[i] = from_f32<T>(0.0f);
            continue;
        }
        const bool first_half = col < half;
        const size_t j = first_half ? col : col - half;
        // The same operations in the same order as TimestepEmbedding::frequencies.
        const double f = exp(-log(max_period) * (double)j / ((double)half - freq_shift));
        const double arg = (double)t[row] * f;
        const bool is_sin = first_half != (flip_sin_to_cos != 0);
        emb[i] = from_f32<T>((float)(is_sin ? sin(arg) : cos(arg)));
    }
}

// emb: (N, width) T += table[labels[i]] row by row; table: (classes, width) float (a parameter),
// labels: (N) in [0, classes) (the caller has checked them). Same single fp32 addition per
// element as the CPU, rounded to T once.
template <typename T>
__device__ void class_embedding_forward(const uint32_t* labels, const float* table, T* emb, size_t n, size_t width) {
    GRID_STRIDE_LOOP(i, n * width) {
        const size_t row = i / width, col = i % width;
        emb[i] = from_f32<T>(to_f32(emb[i]) + table[(size_t)labels[row] * width + col]);
    }
}

// dtable[c, :] += Σ_{i : labels[i] = c} demb[i, :]   dtable: (classes, width) float (a parameter
// gradient, accumulated in fp32), demb: (N, width) T.
// Each thread owns one dtable element and walks the batch in order, adding straight into it as the
// CPU loop does: no atomics, and the same order of additions, so the result is bit-identical.
template <typename T>
__device__ void class_embedding_backward(const uint32_t* labels, const T* demb, float* dtable, size_t n, size_t classes, size_t width) {
    GRID_STRIDE_LOOP(i, classes * width) {
        const size_t c = i / width, col = i % width;
        float acc = dtable[i];
        for (size_t r = 0; r < n; ++r) {
            if (labels[r] == c) acc += to_f32(demb[r * width + col]);
        }
        dtable[i] = acc;
    }
}

extern "C" __global__ void timestep_embedding_f32(const float* t, float* emb, size_t n, size_t dim, int flip_sin_to_cos, double freq_shift, double max_period) { timestep_embedding(t, emb, n, dim, flip_sin_to_cos, freq_shift, max_period); }
extern "C" __global__ void timestep_embedding_bf16(const float* t, __nv_bfloat16* emb, size_t n, size_t dim, int flip_sin_to_cos, double freq_shift, double max_period) { timestep_embedding(t, emb, n, dim, flip_sin_to_cos, freq_shift, max_period); }
extern "C" __global__ void timestep_embedding_f16(const float* t, __half* emb, size_t n, size_t dim, int flip_sin_to_cos, double freq_shift, double max_period) { timestep_embedding(t, emb, n, dim, flip_sin_to_cos, freq_shift, max_period); }

extern "C" __global__ void class_embedding_forward_f32(const uint32_t* labels, const float* table, float* emb, size_t n, size_t width) { class_embedding_forward(labels, table, emb, n, width); }
extern "C" __global__ void class_embedding_forward_bf16(const uint32_t* labels, const float* table, __nv_bfloat16* emb, size_t n, size_t width) { class_embedding_forward(labels, table, emb, n, width); }
extern "C" __global__ void class_embedding_forward_f16(const uint32_t* labels, const float* table, __half* emb, size_t n, size_t width) { class_embedding_forward(labels, table, emb, n, width); }

extern "C" __global__ void class_embedding_backward_f32(const uint32_t* labels, const float* demb, float* dtable, size_t n, size_t classes, size_t width) { class_embedding_backward(labels, demb, dtable, n, classes, width); }
extern "C" __global__ void class_embedding_backward_bf16(const uint32_t* labels, const __nv_bfloat16* demb, float* dtable, size_t n, size_t classes, size_t width) { class_embedding_backward(labels, demb, dtable, n, classes, width); }
extern "C" __global__ void class_embedding_backward_f16(const uint32_t* labels, const __half* demb, float* dtable, size_t n, size_t classes, size_t width) { class_embedding_backward(labels, demb, dtable, n, classes, width); }
