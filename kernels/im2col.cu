// Convolution as im2col + GEMM: the unrolling (im2col), its adjoint (col2im) and the bias kernels
// shared by conv2d and linear. CPU reference: src/ops/conv2d/mod.rs (im2col, col2im, bias) and
// src/ops/linear.rs (bias). Launch glue: src/cuda/ops/conv2d.rs.
//
// Layouts, per image: x (C_in, H, W); col (K, P) with K = C_in·kh·kw rows ordered (ci, ky, kx)
// and P = H_out·W_out columns ordered (oy, ox). In col, row r of image i starts at
// i·image_stride + r·row_ld: image after image (image_stride ≥ K·P, row_ld = P: the forward's
// batched GEMM) or side by side ((K, images·P): image_stride = P, row_ld = images·P: the
// backward's one GEMM over every position of a chunk).
// Nothing here uses atomics: every output element is owned by one thread (or one block).
//
// Storage (common.cuh): x, col, dx and y are the activation type T; the bias b and the bias
// gradient db are fp32 parameters. Every sum is formed in fp32 and rounded to T once.
#include "common.cuh"

// Geometry of one convolution; field for field the same as `ConvGeom` in src/cuda/ops/conv2d.rs.
// Bottom and right padding only show in out_h / out_w: reads past the input are zero either way.
struct ConvGeom {
    int c_in, h, w;          // input (C_in, H, W) of one image
    int kh, kw;              // kernel
    int sh, sw;              // stride
    int pad_top, pad_left;   // zero padding before the first row / column
    int out_h, out_w;        // output (H_out, W_out)
};


// One block per col row (image, ci, ky, kx), threads along the row's P output positions:
//   col[img, (ci, ky, kx), (oy, ox)] = x[img, ci, oy·sh + ky − pad_top, ox·sw + kx − pad_left]
// or 0 where that position lies in the padding.
// x: (images, C_in, H, W)  col: as above  rows = images·K, both T (a pure copy: the same bits in
// any storage type). With a 1×1 geometry it regroups (images, C, P) planes by channel.
template <typename T>
__device__ void im2col(const T* x, T* col, ConvGeom g, size_t rows, size_t image_stride, size_t row_ld) {
    const unsigned khw = (unsigned)(g.kh * g.kw);
    const unsigned k = (unsigned)g.c_in * khw;
    const unsigned p_len = (unsigned)(g.out_h * g.out_w);
    const size_t plane_len = (size_t)g.h * g.w;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const size_t img = row / k;
        const unsigned r = (unsigned)(row % k);
        const unsigned ci = r / khw;
        const int ky = (int)((r / g.kw) % g.kh), kx = (int)(r % g.kw);
        const T* plane = x + (img * g.c_in + ci) * plane_len;
        T* out = col + img * image_stride + (size_t)r * row_ld;
        for (unsigned q = threadIdx.x; q < p_len; q += blockDim.x) {
            const int oy = (int)(q / g.out_w), ox = (int)(q % g.out_w);
            const int iy = oy * g.sh + ky - g.pad_top, ix = ox * g.sw + kx - g.pad_left;
            const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
            out[q] = inside ? plane[iy * g.w + ix] : from_f32<T>(0.0f);
        }
    }
}

// The adjoint of im2col in gather form: one block per (image, ci) plane, one thread per input
// position, summing every col entry that im2col read from that position — in (ky, kx) order,
// the CPU's order — and writing the total (dx is overwritten, no atomics).
// col: as above  dx: (images, C_in, H, W)  planes = images·C_in, both T; the sum is fp32 and
// rounded to T once.
template <typename T>
__device__ void col2im(const T* col, T* dx, ConvGeom g, size_t planes, size_t image_stride, size_t row_ld) {
    const unsigned khw = (unsigned)(g.kh * g.kw);
    const unsigned plane_len = (unsigned)(g.h * g.w);
    for (size_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        // Rows (ci, 0, 0) .. (ci, kh−1, kw−1) of image img's col: ci·kh·kw onwards.
        const size_t img = plane / (unsigned)g.c_in;
        const unsigned ci = (unsigned)(plane % (unsigned)g.c_in);
        const T* rows = col + img * image_stride + (size_t)ci * khw * row_ld;
        T* out = dx + plane * plane_len;
        for (unsigned e = threadIdx.x; e < plane_len; e += blockDim.x) {
            const int iy = (int)(e / g.w), ix = (int)(e % g.w);
            float acc = 0.0f;
            for (int ky = 0; ky < g.kh; ++ky) {
                // iy = oy·sh + ky − pad_top  ⇔  oy = (iy + pad_top − ky) / sh, when exact.
                const int ty = iy + g.pad_top - ky;
                if (ty < 0 || ty % g.sh != 0 || ty / g.sh >= g.out_h) continue;
                const int oy = ty / g.sh;
                for (int kx = 0; kx < g.kw; ++kx) {
                    const int tx = ix + g.pad_left - kx;
                    if (tx < 0 || tx % g.sw != 0 || tx / g.sw >= g.out_w) continue;
                    const int ox = tx / g.sw;
                    acc += to_f32(rows[(size_t)(ky * g.kw + kx) * row_ld + (size_t)(oy * g.out_w + ox)]);
                }
            }
            out[e] = from_f32<T>(acc);
        }
    }
}

// y[o, c, i] += b[c] over an (outer, C, inner) layout: conv (N, C_out, H_out·W_out) or
// linear (rows, d_out, 1). y: T (read, added to in fp32, rounded once), b: float (a parameter).
// Index type I: 32-bit when the sizes allow (cheaper division).
template <typename T, typename I>
__device__ void bias_add(T* y, const float* b, I total, I channels, I inner) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) y[i] = from_f32<T>(to_f32(y[i]) + b[(i / inner) % channels]);
}

template <typename T>
__device__ void bias_add_nchw(T* y, const float* b, size_t total, size_t channels, size_t inner) {
    // 32-bit indices only while i + the grid's stride cannot wrap (the grid is below 2^31 threads).
    if (total <= 0x7fffffffu) {
        bias_add<T, unsigned>(y, b, (unsigned)total, (unsigned)channels, (unsigned)inner);
    } else {
        bias_add<T, size_t>(y, b, total, channels, inner);
    }
}

// The conv bias gradient db[c] += Σ_{o, i} dy[o, c, i] over an (outer, C, inner) layout, in two
// fixed-order stages (as group norm's backward), so that outer·C blocks share the work rather
// than C blocks each walking outer·inner elements:
//   plane_sums                    per (plane, chunk of `chunk` elements): its sum, in fp32
//   channel_partials_accumulate   per channel: db[c] += Σ of its outer·chunks partial sums
// dy: (planes = outer·C, inner) T  partial: (planes, chunks) float  db: (C) float.
template <typename T>
__device__ void plane_sums(const T* dy, float* partial, size_t planes, size_t inner, size_t chunk, unsigned chunks) {
    __shared__ float buf[33];
    for (size_t item = blockIdx.x; item < planes * chunks; item += gridDim.x) {
        const size_t plane = item / chunks, first = (item % chunks) * chunk;
        const size_t end = min(first + chunk, inner);
        const T* p = dy + plane * inner;
        float acc = 0.0f;
        for (size_t i = first + threadIdx.x; i < end; i += blockDim.x) acc += to_f32(p[i]);
        acc = block_sum(acc, buf);
        if (threadIdx.x == 0) partial[item] = acc;
    }
}

__device__ void channel_partials_accumulate(const float* partial, float* db, size_t outer, size_t channels, unsigned chunks) {
    __shared__ float buf[33];
    const size_t per = outer * chunks;
    for (size_t c = blockIdx.x; c < channels; c += gridDim.x) {
        float acc = 0.0f;
        // Partial j = (o, k) of channel c is at (o·C + c)·chunks + k.
        for (size_t j = threadIdx.x; j < per; j += blockDim.x) acc += partial[((j / chunks) * channels + c) * chunks + j % chunks];
        acc = block_sum(acc, buf);
        if (threadIdx.x == 0) db[c] += acc;
    }
}

// db[c] += Σ_r dy[r, c] for a (rows, C) matrix (inner = 1: linear bias gradients), where the
// contiguous axis is the channel one. Block (32, 8): threadIdx.x picks a column of a 32-wide tile
// (coalesced reads), threadIdx.y one of 8 interleaved row lanes; the 8 lane sums are added in
// lane order. Fixed order.
// dy: (rows, C) T  db: (C) float, summed and accumulated in fp32.
template <typename T>
__device__ void column_sum_accumulate(const T* dy, float* db, size_t rows, size_t cols) {
    __shared__ float lanes[8][32];
    for (size_t tile = blockIdx.x; tile * 32 < cols; tile += gridDim.x) {
        const size_t c = tile * 32 + threadIdx.x;
        float acc = 0.0f;
        if (c < cols) {
            for (size_t r = threadIdx.y; r < rows; r += 8) acc += to_f32(dy[r * cols + c]);
        }
        lanes[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && c < cols) {
            float s = lanes[0][threadIdx.x];
            for (int l = 1; l < 8; ++l) s += lanes[l][threadIdx.x];
            db[c] += s;
        }
        __syncthreads(); // lanes is rewritten by the next tile
    }
}

extern "C" __global__ void im2col_f32(const float* x, float* col, ConvGeom g, size_t rows, size_t image_stride, size_t row_ld) { im2col(x, col, g, rows, image_stride, row_ld); }
extern "C" __global__ void im2col_bf16(const __nv_bfloat16* x, __nv_bfloat16* col, ConvGeom g, size_t rows, size_t image_stride, size_t row_ld) { im2col(x, col, g, rows, image_stride, row_ld); }
extern "C" __global__ void im2col_f16(const __half* x, __half* col, ConvGeom g, size_t rows, size_t image_stride, size_t row_ld) { im2col(x, col, g, rows, image_stride, row_ld); }

extern "C" __global__ void col2im_f32(const float* col, float* dx, ConvGeom g, size_t planes, size_t image_stride, size_t row_ld) { col2im(col, dx, g, planes, image_stride, row_ld); }
extern "C" __global__ void col2im_bf16(const __nv_bfloat16* col, __nv_bfloat16* dx, ConvGeom g, size_t planes, size_t image_stride, size_t row_ld) { col2im(col, dx, g, planes, image_stride, row_ld); }
extern "C" __global__ void col2im_f16(const __half* col, __half* dx, ConvGeom g, size_t planes, size_t image_stride, size_t row_ld) { col2im(col, dx, g, planes, image_stride, row_ld); }

extern "C" __global__ void bias_add_nchw_f32(float* y, const float* b, size_t total, size_t channels, size_t inner) { bias_add_nchw(y, b, total, channels, inner); }
extern "C" __global__ void bias_add_nchw_bf16(__nv_bfloat16* y, const float* b, size_t total, size_t channels, size_t inner) { bias_add_nchw(y, b, total, channels, inner); }
extern "C" __global__ void bias_add_nchw_f16(__half* y, const float* b, size_t total, size_t channels, size_t inner) { bias_add_nchw(y, b, total, channels, inner); }

extern "C" __global__ void plane_sums_f32(const float* dy, float* partial, size_t planes, size_t inner, size_t chunk, unsigned chunks) { plane_sums(dy, partial, planes, inner, chunk, chunks); }
extern "C" __global__ void plane_sums_bf16(const __nv_bfloat16* dy, float* partial, size_t planes, size_t inner, size_t chunk, unsigned chunks) { plane_sums(dy, partial, planes, inner, chunk, chunks); }
extern "C" __global__ void plane_sums_f16(const __half* dy, float* partial, size_t planes, size_t inner, size_t chunk, unsigned chunks) { plane_sums(dy, partial, planes, inner, chunk, chunks); }
extern "C" __global__ void channel_partials_accumulate_f32(const float* partial, float* db, size_t outer, size_t channels, unsigned chunks) { channel_partials_accumulate(partial, db, outer, channels, chunks); }

extern "C" __global__ void column_sum_accumulate_f32(const float* dy, float* db, size_t rows, size_t cols) { column_sum_accumulate(dy, db, rows, cols); }
extern "C" __global__ void column_sum_accumulate_bf16(const __nv_bfloat16* dy, float* db, size_t rows, size_t cols) { column_sum_accumulate(dy, db, rows, cols); }
extern "C" __global__ void column_sum_accumulate_f16(const __half* dy, float* db, size_t rows, size_t cols) { column_sum_accumulate(dy, db, rows, cols); }
