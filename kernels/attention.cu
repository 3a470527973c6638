// Attention pieces that are not matrix products: the row softmax of the scores, its backward,
// and the NCHW <-> token transposes around a spatial attention block. The products themselves
// (S = Q Kᵀ, O = P V and their gradients) are cuBLAS GEMMs issued by src/cuda/ops/attention.rs.
// CPU reference: src/ops/attention.rs (softmax_rows, attention_backward), src/ops/layout.rs.
// Every buffer (scores/probabilities, the dP workspace, tokens) is stored as T (float,
// __nv_bfloat16 or __half); all arithmetic, the row max and the row sums are fp32.
#include "common.cuh"


// Warp `w` of the grid, the number of warps in the grid; rows are handed out warp by warp in a
// grid-stride loop, so any grid size is correct. Blocks must be a multiple of 32 threads.
static __device__ __forceinline__ size_t global_warp() {
    return (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
}
static __device__ __forceinline__ size_t grid_warps() {
    return (size_t)gridDim.x * (blockDim.x / 32);
}

// s: (rows, len), in place:  s[r, :] = softmax(scale · s[r, :])
// One warp per row, three passes over the row (max, Σ exp, write), all in fp32 and with the
// maximum subtracted, as the CPU's softmax_rows does on the already scaled scores. A row is at
// most a few KiB, so the second and third passes mostly hit L1/L2. The scaled score is rounded
// on its own (__fmul_rn: never fused into the following subtraction), so every pass sees the
// same value and the row maximum gives exactly exp(0) = 1, as on the CPU.
template <typename T>
__device__ void softmax_rows_forward(T* s, size_t rows, size_t len, float scale) {
    const unsigned lane = threadIdx.x % 32;
    for (size_t r = global_warp(); r < rows; r += grid_warps()) {
        T* row = s + r * len;
        float m = -INFINITY;
        for (size_t j = lane; j < len; j += 32) m = fmaxf(m, __fmul_rn(scale, to_f32(row[j])));
        m = warp_max(m);
        float sum = 0.0f;
        for (size_t j = lane; j < len; j += 32) sum += expf(__fmul_rn(scale, to_f32(row[j])) - m);
        const float inv = 1.0f / warp_sum(sum);
        for (size_t j = lane; j < len; j += 32) row[j] = from_f32<T>(expf(__fmul_rn(scale, to_f32(row[j])) - m) * inv);
    }
}

// Softmax backward for rows of P and dP that live at different strides:
//   dS[r, :] = scale · P[r, :] ⊙ (dP[r, :] − Σ_j dP[r, j] · P[r, j])     written over dP.
// Row r is row i = r % rows_per_item of item b = r / rows_per_item; its P row starts at
// b·p_item_stride + i·len and its dP row at b·d_item_stride + i·len. The attention backward uses
// this with P = one head of probs (B, heads, L, L) and dP = a (B, L, L) workspace.
template <typename T>
__device__ void softmax_rows_backward(const T* p, T* d, size_t rows, size_t len, size_t rows_per_item,
                                      size_t p_item_stride, size_t d_item_stride, float scale) {
    const unsigned lane = threadIdx.x % 32;
    for (size_t r = global_warp(); r < rows; r += grid_warps()) {
        const size_t b = r / rows_per_item, i = r % rows_per_item;
        const T* p_row = p + b * p_item_stride + i * len;
        T* d_row = d + b * d_item_stride + i * len;
        float dot = 0.0f;
        for (size_t j = lane; j < len; j += 32) dot += to_f32(d_row[j]) * to_f32(p_row[j]);
        dot = warp_sum(dot);
        for (size_t j = lane; j < len; j += 32) {
            const float pv = to_f32(p_row[j]);
            d_row[j] = from_f32<T>(pv * (to_f32(d_row[j]) - dot) * scale);
        }
    }
}

// Per item, a (rows, cols) matrix → its (cols, rows) transpose:  dst[b, c, r] = src[b, r, c].
// 32×32 tiles through shared memory (padded to 33 columns so the transposed read hits 32 banks),
// so both the global reads and the global writes are coalesced. The tiles of all items are
// numbered in one 1-d grid-stride loop. Block: (32, 8).
#define TILE 32
template <typename T>
__device__ void transpose_items(const T* src, T* dst, size_t items, size_t rows, size_t cols) {
    __shared__ float tile[TILE][TILE + 1];
    const size_t col_tiles = (cols + TILE - 1) / TILE, row_tiles = (rows + TILE - 1) / TILE;
    const size_t tiles = items * row_tiles * col_tiles;
    const size_t item_len = rows * cols;
    for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
        const size_t c0 = (t % col_tiles) * TILE;
        const size_t r0 = ((t / col_tiles) % row_tiles) * TILE;
        const size_t b = t / (col_tiles * row_tiles);
        const T* s = src + b * item_len;
        T* d = dst + b * item_len;
        // Read: consecutive threadIdx.x walk along a source row (consecutive c).
        for (unsigned ty = threadIdx.y; ty < TILE; ty += blockDim.y) {
            const size_t r = r0 + ty, c = c0 + threadIdx.x;
            if (r < rows && c < cols) tile[ty][threadIdx.x] = to_f32(s[r * cols + c]);
        }
        __syncthreads();
        // Write: consecutive threadIdx.x walk along a destination row (consecutive r).
        for (unsigned ty = threadIdx.y; ty < TILE; ty += blockDim.y) {
            const size_t c = c0 + ty, r = r0 + threadIdx.x;
            if (r < rows && c < cols) d[c * rows + r] = from_f32<T>(tile[threadIdx.x][ty]);
        }
        __syncthreads();  // the next tile overwrites `tile`
    }
}

// ---- f32: stored as float ----
extern "C" __global__ void softmax_rows_forward_f32(float* s, size_t rows, size_t len, float scale) { softmax_rows_forward(s, rows, len, scale); }
extern "C" __global__ void softmax_rows_backward_f32(const float* p, float* d, size_t rows, size_t len, size_t rows_per_item, size_t p_item_stride, size_t d_item_stride, float scale) { softmax_rows_backward(p, d, rows, len, rows_per_item, p_item_stride, d_item_stride, scale); }
// x: (N, C, H·W) → tokens: (N, H·W, C)
extern "C" __global__ void nchw_to_tokens_f32(const float* x, float* tokens, size_t n, size_t c, size_t hw) { transpose_items(x, tokens, n, c, hw); }
// tokens: (N, H·W, C) → x: (N, C, H·W)
extern "C" __global__ void tokens_to_nchw_f32(const float* tokens, float* x, size_t n, size_t c, size_t hw) { transpose_items(tokens, x, n, hw, c); }

// ---- bf16: stored as __nv_bfloat16 ----
extern "C" __global__ void softmax_rows_forward_bf16(__nv_bfloat16* s, size_t rows, size_t len, float scale) { softmax_rows_forward(s, rows, len, scale); }
extern "C" __global__ void softmax_rows_backward_bf16(const __nv_bfloat16* p, __nv_bfloat16* d, size_t rows, size_t len, size_t rows_per_item, size_t p_item_stride, size_t d_item_stride, float scale) { softmax_rows_backward(p, d, rows, len, rows_per_item, p_item_stride, d_item_stride, scale); }
// x: (N, C, H·W) → tokens: (N, H·W, C)
extern "C" __global__ void nchw_to_tokens_bf16(const __nv_bfloat16* x, __nv_bfloat16* tokens, size_t n, size_t c, size_t hw) { transpose_items(x, tokens, n, c, hw); }
// tokens: (N, H·W, C) → x: (N, C, H·W)
extern "C" __global__ void tokens_to_nchw_bf16(const __nv_bfloat16* tokens, __nv_bfloat16* x, size_t n, size_t c, size_t hw) { transpose_items(tokens, x, n, hw, c); }

// ---- f16: stored as __half ----
extern "C" __global__ void softmax_rows_forward_f16(__half* s, size_t rows, size_t len, float scale) { softmax_rows_forward(s, rows, len, scale); }
extern "C" __global__ void softmax_rows_backward_f16(const __half* p, __half* d, size_t rows, size_t len, size_t rows_per_item, size_t p_item_stride, size_t d_item_stride, float scale) { softmax_rows_backward(p, d, rows, len, rows_per_item, p_item_stride, d_item_stride, scale); }
// x: (N, C, H·W) → tokens: (N, H·W, C)
extern "C" __global__ void nchw_to_tokens_f16(const __half* x, __half* tokens, size_t n, size_t c, size_t hw) { transpose_items(x, tokens, n, c, hw); }
// tokens: (N, H·W, C) → x: (N, C, H·W)
extern "C" __global__ void tokens_to_nchw_f16(const __half* tokens, __half* x, size_t n, size_t c, size_t hw) { transpose_items(tokens, x, n, hw, c); }
