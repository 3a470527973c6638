// The layout kernels of the shifted-GEMM 3×3 convolution (stride 1, padding 1 all round): the
// products themselves are cuBLAS GEMMs over shifted views of a zero-padded NHWC buffer. Launch
// glue and the whole design: src/cuda/ops/conv_shifted.rs. CPU reference: src/ops/conv2d/mod.rs.
//
// The padded row space: a chunk of `images` images of (H, W) becomes (images, H+2, W+2, C),
// rows r = (n·(H+2) + y')·(W+2) + x' over the padded positions, channels contiguous. The valid
// output pixel (n, y, x) lives at row (n·(H+2) + y)·(W+2) + x (its 3×3 window's top-left tap);
// the other rows of an accumulator are garbage and are never read back.
//
// Storage (common.cuh): activations and the padded buffers are the activation type T; the GEMM
// accumulators, the bias, the weight-gradient scratch and dW are fp32. Pure copies (the padding,
// the weight repack) keep the bits; the crop adds the bias in fp32 and rounds to T once.
// Nothing here uses atomics: every output element is written by one thread.
#include "common.cuh"

// Side of the shared-memory tiles of the transposing kernels; their block is (32, 8).
constexpr unsigned PAD_TILE = 32;

// src (images, C, H, W) → dst (images, H+2, W+2, C): dst[n, y', x', c] = src[n, c, y'−1, x'−1]
// inside, 0 on the one-pixel border (every element of dst is written, so the buffer needs no
// clearing). One 32 padded columns × 32 channels tile per step of a 1-d grid-stride loop over
// (n, y', column tile, channel tile), through shared memory (33 columns: no bank conflicts), so
// the reads walk along x and the writes along c, both coalesced. Block (32, 8).
template <typename T>
__device__ void nchw_to_padded_nhwc(const T* src, T* dst, size_t images, size_t channels, size_t h, size_t w) {
    __shared__ float tile[PAD_TILE][PAD_TILE + 1];
    const size_t hp = h + 2, wp = w + 2;
    const size_t c_tiles = (channels + PAD_TILE - 1) / PAD_TILE, x_tiles = (wp + PAD_TILE - 1) / PAD_TILE;
    const size_t tiles = images * hp * x_tiles * c_tiles;
    for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
        const size_t c0 = (t % c_tiles) * PAD_TILE;
        const size_t x0 = ((t / c_tiles) % x_tiles) * PAD_TILE;
        const size_t row = t / (c_tiles * x_tiles);  // n·(H+2) + y'
        const size_t n = row / hp, yp = row % hp;
        const bool row_inside = yp >= 1 && yp <= h;
        // Read: threadIdx.x along padded columns x', threadIdx.y along channels.
        for (unsigned ty = threadIdx.y; ty < PAD_TILE; ty += blockDim.y) {
            const size_t c = c0 + ty, xp = x0 + threadIdx.x;
            float v = 0.0f;
            if (row_inside && c < channels && xp >= 1 && xp <= w) v = to_f32(src[((n * channels + c) * h + (yp - 1)) * w + (xp - 1)]);
            tile[ty][threadIdx.x] = v;
        }
        __syncthreads();
        // Write: threadIdx.x along channels, threadIdx.y along padded columns.
        for (unsigned ty = threadIdx.y; ty < PAD_TILE; ty += blockDim.y) {
            const size_t xp = x0 + ty, c = c0 + threadIdx.x;
            if (xp < wp && c < channels) dst[(row * wp + xp) * channels + c] = from_f32<T>(tile[threadIdx.x][ty]);
        }
        __syncthreads();  // the next tile overwrites `tile`
    }
}

// The crop: acc (rows, C) fp32 in the padded row space of `images` images → dst (images, C, H, W)
// in T, dst[n, c, y, x] = acc[(n·(H+2) + y)·(W+2) + x, c] (+ bias[c] when bias is not null),
// summed in fp32 and rounded once; written, never accumulated. Only the rows of real pixels are
// read: the garbage rows (x ≥ W or y ≥ H) are dropped. Tiles of 32 pixels of one image row × 32
// channels, read along c and written along x (both coalesced). Block (32, 8).
template <typename T>
__device__ void padded_rows_to_nchw(const float* acc, const float* bias, T* dst, size_t images, size_t channels, size_t h, size_t w) {
    __shared__ float tile[PAD_TILE][PAD_TILE + 1];
    const size_t hp = h + 2, wp = w + 2;
    const size_t x_tiles = (w + PAD_TILE - 1) / PAD_TILE, c_tiles = (channels + PAD_TILE - 1) / PAD_TILE;
    const size_t tiles = images * h * c_tiles * x_tiles;
    for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
        const size_t x0 = (t % x_tiles) * PAD_TILE;
        const size_t c0 = ((t / x_tiles) % c_tiles) * PAD_TILE;
        const size_t row = t / (x_tiles * c_tiles);  // n·H + y
        const size_t n = row / h, y = row % h;
        const float* a = acc + (n * hp + y) * wp * channels;  // padded row of (n, y, x = 0)
        // Read: threadIdx.x along channels, threadIdx.y along x.
        for (unsigned ty = threadIdx.y; ty < PAD_TILE; ty += blockDim.y) {
            const size_t x = x0 + ty, c = c0 + threadIdx.x;
            if (x < w && c < channels) {
                float v = a[x * channels + c];
                if (bias != nullptr) v += bias[c];
                tile[ty][threadIdx.x] = v;
            }
        }
        __syncthreads();
        // Write: threadIdx.x along x, threadIdx.y along channels.
        for (unsigned ty = threadIdx.y; ty < PAD_TILE; ty += blockDim.y) {
            const size_t c = c0 + ty, x = x0 + threadIdx.x;
            if (x < w && c < channels) dst[((n * channels + c) * h + y) * w + x] = from_f32<T>(tile[threadIdx.x][ty]);
        }
        __syncthreads();  // the next tile overwrites `tile`
    }
}

// The weight in tap-major order: w (C_out, C_in, 3, 3) → taps (9, C_out, C_in),
// taps[s, co, ci] = w[co, ci, s] with s = 3·ky + kx. A pure copy in T (the low-precision copy
// the GEMMs read). Indexed by the element written (coalesced writes; the reads stride by 9, and
// the weights are small).
template <typename T>
__device__ void conv3x3_weight_to_taps(const T* w, T* taps, size_t pairs) {
    GRID_STRIDE_LOOP(i, 9 * pairs) {
        const size_t s = i / pairs, p = i % pairs;  // p = co·C_in + ci
        taps[i] = w[p * 9 + s];
    }
}

// The inverse, accumulated: dw[co, ci, s] += taps[s, co, ci], both fp32 (dw is a parameter
// gradient). Indexed by the dw element (each read-modify-written by one thread).
__device__ void conv3x3_taps_grad_accumulate(const float* taps, float* dw, size_t pairs) {
    GRID_STRIDE_LOOP(i, 9 * pairs) {
        const size_t p = i / 9, s = i % 9;
        dw[i] += taps[s * pairs + p];
    }
}

// src: (images, C, H, W) → dst: (images, H+2, W+2, C), zero border
extern "C" __global__ void nchw_to_padded_nhwc_f32(const float* src, float* dst, size_t images, size_t channels, size_t h, size_t w) { nchw_to_padded_nhwc(src, dst, images, channels, h, w); }
extern "C" __global__ void nchw_to_padded_nhwc_bf16(const __nv_bfloat16* src, __nv_bfloat16* dst, size_t images, size_t channels, size_t h, size_t w) { nchw_to_padded_nhwc(src, dst, images, channels, h, w); }
extern "C" __global__ void nchw_to_padded_nhwc_f16(const __half* src, __half* dst, size_t images, size_t channels, size_t h, size_t w) { nchw_to_padded_nhwc(src, dst, images, channels, h, w); }

// acc: (rows, C) fp32, padded row space  bias: (C) fp32 or null → dst: (images, C, H, W)
extern "C" __global__ void padded_rows_to_nchw_f32(const float* acc, const float* bias, float* dst, size_t images, size_t channels, size_t h, size_t w) { padded_rows_to_nchw(acc, bias, dst, images, channels, h, w); }
extern "C" __global__ void padded_rows_to_nchw_bf16(const float* acc, const float* bias, __nv_bfloat16* dst, size_t images, size_t channels, size_t h, size_t w) { padded_rows_to_nchw(acc, bias, dst, images, channels, h, w); }
extern "C" __global__ void padded_rows_to_nchw_f16(const float* acc, const float* bias, __half* dst, size_t images, size_t channels, size_t h, size_t w) { padded_rows_to_nchw(acc, bias, dst, images, channels, h, w); }

// w: (C_out, C_in, 3, 3) → taps: (9, C_out, C_in); pairs = C_out·C_in
extern "C" __global__ void conv3x3_weight_to_taps_f32(const float* w, float* taps, size_t pairs) { conv3x3_weight_to_taps(w, taps, pairs); }
extern "C" __global__ void conv3x3_weight_to_taps_bf16(const __nv_bfloat16* w, __nv_bfloat16* taps, size_t pairs) { conv3x3_weight_to_taps(w, taps, pairs); }
extern "C" __global__ void conv3x3_weight_to_taps_f16(const __half* w, __half* taps, size_t pairs) { conv3x3_weight_to_taps(w, taps, pairs); }

// dw (C_out, C_in, 3, 3) += taps (9, C_out, C_in), fp32 in every precision
extern "C" __global__ void conv3x3_taps_grad_accumulate_f32(const float* taps, float* dw, size_t pairs) { conv3x3_taps_grad_accumulate(taps, dw, pairs); }
