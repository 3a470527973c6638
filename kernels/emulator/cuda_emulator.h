// The CUDA language as host C++, for the `cuda-emulator` feature: force-included (g++ -include)
// before every kernels/*.cu, which then compiles unchanged. runtime.cpp runs the kernels: every
// thread of a block is a fiber with its own stack, all alive at once, __syncthreads is a barrier
// among them and the warp shuffles exchange values through per-warp slots (see there).
//
// Only what ddpm's kernels use is here. Arithmetic is the host's IEEE arithmetic: build with
// -ffp-contract=off so no a*b+c is fused (the kernels' __f*_rn intrinsics promise that), and note
// that unlike nvcc, nothing else is fused either, and libm's expf/log/cos are not CUDA's.
#pragma once

#include <math.h>  // the global expf, sqrtf, fmaxf, isfinite, INFINITY the kernels call unqualified
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

// ---- execution space and qualifiers ----------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one after another (runtime.cpp), so one static copy per kernel instantiation is
// all the shared memory a block needs. Dynamic (`extern __shared__`) arrays are not supported.
#define __shared__ static
#define __constant__ static const
// __restrict__ is a GNU keyword already.

// ---- thread geometry ---------------------------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3() = default;
    constexpr dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Per thread, set by the runtime before each block. GNU __thread (plain data, no C++ TLS init
// wrapper) with the initial-exec model (the archive is linked into executables): without them
// every threadIdx read would be a function call.
extern __thread uint3 threadIdx __attribute__((tls_model("initial-exec")));
extern __thread uint3 blockIdx __attribute__((tls_model("initial-exec")));
// Per launch, written before the workers are woken and read-only while they run.
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// ---- synchronisation (runtime.cpp) -------------------------------------------------------------
void __syncthreads();

namespace ddpm_emu {
// Source-lane rules of the four shuffles.
enum class Shfl { Idx, Up, Down, Xor };
// Publishes `bits` as this lane's value, waits for the whole warp, returns the value of the lane
// the rule picks (or `bits` itself when that lane is outside this lane's `width` segment).
uint64_t shfl(uint64_t bits, Shfl rule, unsigned arg, int width);

template <typename T>
T shfl_as(T v, Shfl rule, unsigned arg, int width) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = shfl(bits, rule, arg, width);
    memcpy(&v, &bits, sizeof(T));
    return v;
}
}  // namespace ddpm_emu

// Every lane of the warp must make the same call (ddpm's kernels always pass the full mask);
// a partial mask would wait forever for the missing lanes.
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = warpSize) {
    return ddpm_emu::shfl_as(v, ddpm_emu::Shfl::Idx, (unsigned)src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = warpSize) {
    return ddpm_emu::shfl_as(v, ddpm_emu::Shfl::Up, delta, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = warpSize) {
    return ddpm_emu::shfl_as(v, ddpm_emu::Shfl::Down, delta, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = warpSize) {
    return ddpm_emu::shfl_as(v, ddpm_emu::Shfl::Xor, (unsigned)lane_mask, width);
}

// ---- correctly rounded arithmetic --------------------------------------------------------------
// Plain IEEE operations: with -ffp-contract=off (and SSE, never x87) each is rounded on its own.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

// ---- bit casts ---------------------------------------------------------------------------------
namespace ddpm_emu {
template <typename To, typename From>
inline To bits_as(From v) {
    static_assert(sizeof(To) == sizeof(From));
    To r;
    memcpy(&r, &v, sizeof(r));
    return r;
}
}  // namespace ddpm_emu
inline float __int_as_float(int v) { return ddpm_emu::bits_as<float>(v); }
inline float __uint_as_float(unsigned v) { return ddpm_emu::bits_as<float>(v); }
inline int __float_as_int(float v) { return ddpm_emu::bits_as<int>(v); }
inline unsigned __float_as_uint(float v) { return ddpm_emu::bits_as<unsigned>(v); }
inline double __longlong_as_double(long long v) { return ddpm_emu::bits_as<double>(v); }
inline long long __double_as_longlong(double v) { return ddpm_emu::bits_as<long long>(v); }

// ---- CUDA's global min / max -------------------------------------------------------------------
// CUDA overloads them for every arithmetic pair; std::min wants one type. Integers compare in
// their common type (as CUDA's mixed overloads do); floating point follows fminf/fmaxf (a NaN
// operand yields the other one).
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return fmin((C)a, (C)b);
    else return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return fmax((C)a, (C)b);
    else return (C)a < (C)b ? (C)b : (C)a;
}
