// Stand-in for CUDA's cuda_bf16.h under the `cuda-emulator` feature: __nv_bfloat16 as a 16-bit
// storage type (the top half of an f32) with CUDA's round-to-nearest-even conversion.
#pragma once

#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t __x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t bits = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    __nv_bfloat16 out;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        out.__x = 0x7fff;  // NaN: CUDA's canonical one
    } else {
        // Round the low 16 bits to nearest even; a carry rounds up into the exponent (to inf).
        out.__x = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    return out;
}
