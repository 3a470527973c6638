// Resampling and padding: nearest-neighbour 2× upsampling (the UNet's Upsample2D before its conv)
// and asymmetric zero padding (diffusers' Downsample2D with downsample_padding = 0 pads only the
// right and bottom). CPU reference: src/ops/upsample.rs; the padding has no CPU op of its own
// (the CPU conv pads inside im2col), so its test carries a small host reference.
// Every kernel is indexed by the buffer it writes, so writes are coalesced and nothing races.
// All buffers are the activation type T; the upsample backward sums in fp32 and rounds once.
#include "common.cuh"

// x: (NC, H, W) → y: (NC, 2H, 2W),  y[p, oy, ox] = x[p, oy / 2, ox / 2]
template <typename T>
__device__ void upsample_nearest2x_forward(const T* x, T* y, size_t nc, size_t h, size_t w) {
    const size_t ow = 2 * w, oh = 2 * h;
    GRID_STRIDE_LOOP(i, nc * oh * ow) {
        const size_t ox = i % ow, oy = (i / ow) % oh, p = i / (oh * ow);
        y[i] = x[(p * h + oy / 2) * w + ox / 2];
    }
}

// dy: (NC, 2H, 2W) → dx: (NC, H, W), written: each dx sums the four dy it was copied to, in the
// CPU's order (top-left, top-right, bottom-left, bottom-right), so the result is bit-identical.
template <typename T>
__device__ void upsample_nearest2x_backward(const T* dy, T* dx, size_t nc, size_t h, size_t w) {
    const size_t ow = 2 * w;
    GRID_STRIDE_LOOP(i, nc * h * w) {
        const size_t j = i % w, r = (i / w) % h, p = i / (h * w);
        const size_t top = (p * 2 * h + 2 * r) * ow + 2 * j, bottom = top + ow;
        dx[i] = from_f32<T>(to_f32(dy[top]) + to_f32(dy[top + 1]) + to_f32(dy[bottom]) + to_f32(dy[bottom + 1]));
    }
}

// x: (NC, H, W) → y: (NC, OH, OW) with OH = top + H + bottom, OW = left + W + right; zeros outside.
template <typename T>
__device__ void pad2d_forward(const T* x, T* y, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) {
    GRID_STRIDE_LOOP(i, nc * oh * ow) {
        const size_t ox = i % ow, oy = (i / ow) % oh, p = i / (oh * ow);
        // Unsigned: oy < top wraps iy to a huge value, which the `< h` test rejects.
        const size_t iy = oy - top, ix = ox - left;
        y[i] = (oy >= top && iy < h && ox >= left && ix < w) ? x[(p * h + iy) * w + ix] : from_f32<T>(0.0f);
    }
}

// dy: (NC, OH, OW) → dx: (NC, H, W), written: the crop of dy at (top, left).
template <typename T>
__device__ void pad2d_backward(const T* dy, T* dx, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) {
    GRID_STRIDE_LOOP(i, nc * h * w) {
        const size_t j = i % w, r = (i / w) % h, p = i / (h * w);
        dx[i] = dy[(p * oh + r + top) * ow + j + left];
    }
}

extern "C" __global__ void upsample_nearest2x_forward_f32(const float* x, float* y, size_t nc, size_t h, size_t w) { upsample_nearest2x_forward(x, y, nc, h, w); }
extern "C" __global__ void upsample_nearest2x_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, size_t nc, size_t h, size_t w) { upsample_nearest2x_forward(x, y, nc, h, w); }
extern "C" __global__ void upsample_nearest2x_forward_f16(const __half* x, __half* y, size_t nc, size_t h, size_t w) { upsample_nearest2x_forward(x, y, nc, h, w); }

extern "C" __global__ void upsample_nearest2x_backward_f32(const float* dy, float* dx, size_t nc, size_t h, size_t w) { upsample_nearest2x_backward(dy, dx, nc, h, w); }
extern "C" __global__ void upsample_nearest2x_backward_bf16(const __nv_bfloat16* dy, __nv_bfloat16* dx, size_t nc, size_t h, size_t w) { upsample_nearest2x_backward(dy, dx, nc, h, w); }
extern "C" __global__ void upsample_nearest2x_backward_f16(const __half* dy, __half* dx, size_t nc, size_t h, size_t w) { upsample_nearest2x_backward(dy, dx, nc, h, w); }

extern "C" __global__ void pad2d_forward_f32(const float* x, float* y, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) { pad2d_forward(x, y, nc, h, w, top, left, oh, ow); }
extern "C" __global__ void pad2d_forward_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) { pad2d_forward(x, y, nc, h, w, top, left, oh, ow); }
extern "C" __global__ void pad2d_forward_f16(const __half* x, __half* y, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) { pad2d_forward(x, y, nc, h, w, top, left, oh, ow); }

extern "C" __global__ void pad2d_backward_f32(const float* dy, float* dx, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) { pad2d_backward(dy, dx, nc, h, w, top, left, oh, ow); }
extern "C" __global__ void pad2d_backward_bf16(const __nv_bfloat16* dy, __nv_bfloat16* dx, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) { pad2d_backward(dy, dx, nc, h, w, top, left, oh, ow); }
extern "C" __global__ void pad2d_backward_f16(const __half* dy, __half* dx, size_t nc, size_t h, size_t w, size_t top, size_t left, size_t oh, size_t ow) { pad2d_backward(dy, dx, nc, h, w, top, left, oh, ow); }
