// What Gpu::gemm (src/cuda/device.rs) runs itself instead of cuBLAS: the k = 0 case.
#include "common.cuh"

// C = β·C for `batch` row-major (rows, cols) matrices with leading dimension `ld`, `stride`
// elements apart: a GEMM whose inner dimension k is 0 (α·op(A)·op(B) is an empty sum). β = 0
// writes zeros without reading C, as cuBLAS does (a NaN in C is not propagated); the padding
// between rows and between items is not touched. Every element is owned by one thread.
template <typename T>
__device__ void gemm_scale_c(T* c, size_t rows, size_t cols, size_t ld, size_t stride, size_t batch, float beta) {
    const size_t per = rows * cols;
    GRID_STRIDE_LOOP(i, per * batch) {
        const size_t item = i / per, r = (i % per) / cols, col = i % cols;
        T* p = c + item * stride + r * ld + col;
        *p = beta == 0.0f ? from_f32<T>(0.0f) : from_f32<T>(beta * to_f32(*p));
    }
}

extern "C" __global__ void gemm_scale_c_f32(float* c, size_t rows, size_t cols, size_t ld, size_t stride, size_t batch, float beta) { gemm_scale_c(c, rows, cols, ld, stride, batch, beta); }
extern "C" __global__ void gemm_scale_c_bf16(__nv_bfloat16* c, size_t rows, size_t cols, size_t ld, size_t stride, size_t batch, float beta) { gemm_scale_c(c, rows, cols, ld, stride, batch, beta); }
extern "C" __global__ void gemm_scale_c_f16(__half* c, size_t rows, size_t cols, size_t ld, size_t stride, size_t batch, float beta) { gemm_scale_c(c, rows, cols, ld, stride, batch, beta); }
