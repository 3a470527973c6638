// Stand-in for CUDA's cuda_fp16.h under the `cuda-emulator` feature: __half as a 16-bit storage
// type with the correctly rounded (round-to-nearest-even) conversions the kernels use. Slow and
// small on purpose; nothing does arithmetic on __half directly.
#pragma once

#include <stdint.h>
#include <string.h>

struct __half {
    uint16_t __x;
};

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16;
    const uint32_t exp = (h.__x >> 10) & 0x1fu;
    uint32_t man = h.__x & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
    } else if (man == 0) {
        bits = sign;
    } else {
        // Subnormal man·2⁻²⁴: normalise into an f32 normal.
        uint32_t e = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            --e;
        }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    uint16_t h;
    if (x > 0x7f800000u) {
        h = 0x7fff;  // NaN: CUDA's canonical one
    } else if (x >= 0x477ff000u) {
        h = 0x7c00;  // 65520 and up (and inf) round to inf: 65504 is the largest finite half
    } else if (x >= 0x38800000u) {
        // Normal half: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
        const uint32_t r = x - 0x38000000u;
        h = (uint16_t)((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
    } else {
        // Subnormal half (or zero): round(|f|·2²⁴) to nearest even; a carry into 0x400 is the
        // smallest normal, which is the right encoding.
        const int shift = 126 - (int)(x >> 23);  // >= 14 here
        if (shift > 24) {
            h = 0;  // below 2⁻²⁵: rounds to zero
        } else {
            const uint32_t man = (x & 0x7fffffu) | 0x800000u;
            const uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
            h = (uint16_t)(q + (rem > half || (rem == half && (q & 1u))));
        }
    }
    __half out;
    out.__x = (uint16_t)(sign | h);
    return out;
}
