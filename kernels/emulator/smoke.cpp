// Smoke test of the cuda-emulator runtime through its C entry point, as src/cuda/emulator/mod.rs
// calls it: a few real kernels on host buffers against plain loops, the refused launches, the
// bf16/f16 conversions, and launch timings. Not built by cargo. After
// `cargo build --features cuda-emulator`, from the repository root:
//
//   g++ -std=c++20 -O2 -ffp-contract=off -I kernels/emulator/include kernels/emulator/smoke.cpp \
//       $(ls -t target/debug/build/ddpm-*/out/libddpm_cuda_emulator.a | head -1) -lpthread -o /tmp/emu-smoke
//   /tmp/emu-smoke
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <chrono>
#include <random>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"

extern "C" int ddpm_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned shared_bytes, void** args, int order, uint64_t seed);

static int failures = 0;
#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) {                                              \
            ++failures;                                             \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                    \
            printf("\n");                                           \
        }                                                           \
    } while (0)

struct Dim {
    unsigned x, y = 1, z = 1;
};

// Launches and returns the wall time in milliseconds.
template <typename... A>
static double launch(const char* k, Dim grid, Dim block, A... a) {
    void* args[] = {&a..., nullptr};
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = ddpm_emu_launch(k, grid.x, grid.y, grid.z, block.x, block.y, block.z, 0, args, 0, 0);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    CHECK(rc == 0, "%s returned %d", k, rc);
    return ms;
}

static std::vector<float> random_vec(size_t n, uint32_t seed, float lo = -3.0f, float hi = 3.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

static unsigned linear_blocks(size_t n, unsigned block) { return (unsigned)((n + block - 1) / block); }

static void silu() {
    const size_t n = (size_t)1 << 20;
    auto x = random_vec(n, 1);
    std::vector<float> y(n, NAN);
    const double ms = launch("silu_forward_f32", {linear_blocks(n, 256)}, {256}, x.data(), y.data(), n);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += y[i] != x[i] / (1.0f + expf(-x[i]));  // same ops: same bits
    CHECK(bad == 0, "%zu of %zu differ", bad, n);
    printf("silu_forward_f32      n=%zu, %u x 256: %.1f ms\n", n, linear_blocks(n, 256), ms);

    // The same through bf16 and f16 storage, on a grid smaller than the data (grid-stride).
    std::vector<__nv_bfloat16> xb(n), yb(n);
    std::vector<__half> xh(n), yh(n);
    for (size_t i = 0; i < n; ++i) {
        xb[i] = __float2bfloat16_rn(x[i]);
        xh[i] = __float2half_rn(x[i]);
    }
    launch("silu_forward_bf16", {64}, {128}, xb.data(), yb.data(), n);
    launch("silu_forward_f16", {64}, {128}, xh.data(), yh.data(), n);
    size_t bad_b = 0, bad_h = 0;
    for (size_t i = 0; i < n; ++i) {
        const float vb = __bfloat162float(xb[i]), vh = __half2float(xh[i]);
        bad_b += yb[i].__x != __float2bfloat16_rn(vb / (1.0f + expf(-vb))).__x;
        bad_h += yh[i].__x != __float2half_rn(vh / (1.0f + expf(-vh))).__x;
    }
    CHECK(bad_b == 0 && bad_h == 0, "bf16: %zu, f16: %zu differ", bad_b, bad_h);
}

static void group_norm() {
    const size_t B = 3, C = 12, G = 4, HW = 50, cg = C / G, n = cg * HW;
    auto x = random_vec(B * C * HW, 2);
    auto gamma = random_vec(C, 3, 0.5f, 1.5f), beta = random_vec(C, 4);
    std::vector<float> y(x.size(), NAN), mean(B * G, NAN), rstd(B * G, NAN);
    const float eps = 1e-5f;
    // Fewer blocks than groups (grid-stride) and more threads than a group has elements / 2.
    launch("group_norm_forward_f32", {5}, {96}, x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(), B * G,
           (unsigned)G, (unsigned)cg, (unsigned)HW, eps);
    double worst = 0;
    for (size_t bg = 0; bg < B * G; ++bg) {
        double s = 0, q = 0;
        for (size_t j = 0; j < n; ++j) s += x[bg * n + j];
        const double mu = s / n;
        for (size_t j = 0; j < n; ++j) q += (x[bg * n + j] - mu) * (x[bg * n + j] - mu);
        const double r = 1.0 / sqrt(q / n + eps);
        CHECK(fabs(mean[bg] - mu) < 1e-5 && fabs(rstd[bg] - r) < 1e-5 * r, "group %zu: mean %g vs %g, rstd %g vs %g", bg, mean[bg], mu,
              rstd[bg], r);
        for (size_t j = 0; j < n; ++j) {
            const size_t c = (bg % G) * cg + j / HW;
            const double want = (x[bg * n + j] - mu) * r * gamma[c] + beta[c];
            worst = fmax(worst, fabs(y[bg * n + j] - want));
        }
    }
    CHECK(worst < 1e-5, "max |y - ref| = %g", worst);
}

static void softmax() {
    const size_t rows = 100, len = 77;
    const float scale = 0.3f;
    auto s = random_vec(rows * len, 5, -10.0f, 10.0f);
    const auto s0 = s;
    // 8 warps per block and 4 blocks: warps loop over rows, and do different numbers of them.
    launch("softmax_rows_forward_f32", {4}, {256}, s.data(), rows, len, scale);
    double worst = 0;
    for (size_t r = 0; r < rows; ++r) {
        double m = -INFINITY, sum = 0;
        for (size_t j = 0; j < len; ++j) m = fmax(m, (double)(scale * s0[r * len + j]));
        for (size_t j = 0; j < len; ++j) sum += exp(scale * s0[r * len + j] - m);
        for (size_t j = 0; j < len; ++j) worst = fmax(worst, fabs(s[r * len + j] - exp(scale * s0[r * len + j] - m) / sum));
    }
    CHECK(worst < 1e-6, "max |p - ref| = %g", worst);
}

static void sum_spatial() {
    const size_t bc = 37, hw = 70;
    auto dy = random_vec(bc * hw, 6);
    std::vector<float> dt(bc, NAN);
    launch("sum_spatial_f32", {2}, {64}, dy.data(), dt.data(), bc, hw);
    double worst = 0;
    for (size_t r = 0; r < bc; ++r) {
        double s = 0;
        for (size_t p = 0; p < hw; ++p) s += dy[r * hw + p];
        worst = fmax(worst, fabs(dt[r] - s));
    }
    CHECK(worst < 1e-4, "max |dt - ref| = %g", worst);
}

// The two-stage loss: exactly 1024 blocks of 256 threads, then one block.
static void loss() {
    const size_t n = 3'000'001;
    auto pred = random_vec(n, 7), target = random_vec(n, 8);
    std::vector<double> partials(1024, NAN);
    float out = NAN;
    const double ms1 = launch("mse_forward_f32", {1024}, {256}, pred.data(), target.data(), partials.data(), n);
    const double ms2 = launch("loss_finish_f32", {1}, {256}, (const double*)partials.data(), &out, n);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
        const float d = pred[i] - target[i];
        sum += (double)(d * d);
    }
    const float want = (float)(sum / n);
    CHECK(fabsf(out - want) <= 1e-6f * want, "mse %.9g vs %.9g", out, want);
    printf("mse_forward_f32       n=%zu, 1024 x 256: %.1f ms; loss_finish_f32 1 x 256: %.2f ms\n", n, ms1, ms2);

    // Empty input: every block still runs its reduction and writes a zero partial.
    const double ms0 = launch("mse_forward_f32", {1024}, {256}, pred.data(), target.data(), partials.data(), (size_t)0);
    launch("loss_finish_f32", {1}, {256}, (const double*)partials.data(), &out, (size_t)0);
    CHECK(out == 0.0f, "empty mse %g", out);
    printf("mse_forward_f32       n=0, 1024 x 256 (launch + 2 barriers per block only): %.1f ms\n", ms0);
}

static void grad_norm() {
    const size_t n = 1'000'003;
    auto g = random_vec(n, 9);
    std::vector<double> partials(1024, NAN);
    float norm = NAN;
    launch("grad_norm_partials_f32", {1024}, {256}, (const float*)g.data(), partials.data(), n);
    launch("grad_norm_finish_f32", {1}, {256}, (const double*)partials.data(), &norm);
    double s = 0;
    for (float v : g) s += (double)v * v;
    CHECK(fabs(norm - sqrt(s)) <= 1e-6 * sqrt(s), "norm %.9g vs %.9g", norm, sqrt(s));
}

// Tiled transposes through __shared__ with (32, 8) blocks; sizes that are not multiples of 32.
static void transposes() {
    const size_t N = 3, C = 40, HW = 70;
    auto x = random_vec(N * C * HW, 10);
    std::vector<float> tok(x.size(), NAN), back(x.size(), NAN);
    const double ms = launch("nchw_to_tokens_f32", {5}, {32, 8}, (const float*)x.data(), tok.data(), N, C, HW);
    launch("tokens_to_nchw_f32", {7}, {32, 8}, (const float*)tok.data(), back.data(), N, C, HW);
    size_t bad = 0;
    for (size_t b = 0; b < N; ++b)
        for (size_t c = 0; c < C; ++c)
            for (size_t p = 0; p < HW; ++p) bad += tok[(b * HW + p) * C + c] != x[(b * C + c) * HW + p];
    CHECK(bad == 0, "nchw_to_tokens: %zu wrong", bad);
    CHECK(memcmp(back.data(), x.data(), x.size() * 4) == 0, "tokens_to_nchw does not invert it");
    printf("nchw_to_tokens_f32    %zux%zux%zu, 5 x (32, 8): %.2f ms\n", N, C, HW, ms);
}

static void refusals() {
    void* args[] = {nullptr};
    CHECK(ddpm_emu_launch("no_such_kernel", 1, 1, 1, 32, 1, 1, 0, args, 0, 0) == -1, "unknown kernel");
    CHECK(ddpm_emu_launch("silu_forward_f32", 1, 1, 1, 100, 1, 1, 0, args, 0, 0) == -6, "100-thread block");
    CHECK(ddpm_emu_launch("silu_forward_f32", 1, 1, 1, 2048, 1, 1, 0, args, 0, 0) == -2, "2048-thread block");
    CHECK(ddpm_emu_launch("silu_forward_f32", 0, 1, 1, 32, 1, 1, 0, args, 0, 0) == -2, "empty grid");
    CHECK(ddpm_emu_launch("silu_forward_f32", 1, 1, 1, 32, 1, 1, 16, args, 0, 0) == -3, "dynamic shared memory");
}

// __float2half_rn against GCC's _Float16 conversion, __half2float by round trip; bf16 against
// a nearest-even rounding written another way.
static void conversions() {
    size_t bad_h = 0, bad_b = 0;
    for (uint32_t h = 0; h < 0x10000; ++h) {
        __half v;
        v.__x = (uint16_t)h;
        const float f = __half2float(v);
        const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (nan ? !isnan(f) : (__float2half_rn(f).__x != h || (float)(_Float16)f != f)) ++bad_h;
    }
    std::mt19937 rng(11);
    for (int i = 0; i < 4'000'000; ++i) {
        uint32_t bits = rng();
        if (i % 4 == 0) bits = (bits & 0x807fffffu) | ((100u + bits % 50u) << 23);  // many around half's range
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        const _Float16 ref = (_Float16)f;
        uint16_t ref_bits;
        memcpy(&ref_bits, &ref, 2);
        bad_h += __float2half_rn(f).__x != ref_bits;
        // bf16: the two neighbours, nearest wins, ties to the even one.
        const uint32_t lo = bits & 0xffff0000u, hi = lo + 0x10000u, rem = bits & 0xffffu;
        const uint32_t want = rem > 0x8000u || (rem == 0x8000u && (lo & 0x10000u)) ? hi : lo;
        bad_b += __float2bfloat16_rn(f).__x != (uint16_t)(want >> 16);
    }
    CHECK(bad_h == 0 && bad_b == 0, "f16: %zu, bf16: %zu wrong", bad_h, bad_b);
}

static void overhead() {
    float v = 1.0f;
    const int reps = 2000;
    double total = 0;
    for (int i = 0; i < reps; ++i) total += launch("scale_f32", {1}, {256}, (const float*)&v, &v, 1.0f, (size_t)1);
    printf("launch overhead       scale_f32 n=1, 1 x 256: %.1f us per launch\n", 1000.0 * total / reps);
    std::vector<float> big(1024 * 256, 1.0f);
    const double ms = launch("scale_f32", {1024}, {256}, (const float*)big.data(), big.data(), 2.0f, big.size());
    printf("scale_f32             n=%zu, 1024 x 256, no barriers: %.1f ms\n", big.size(), ms);
    std::vector<double> partials(1024, 1.0);
    float out = 0;
    total = 0;
    for (int i = 0; i < reps; ++i) total += launch("loss_finish_f32", {1}, {256}, (const double*)partials.data(), &out, (size_t)1);
    printf("launch overhead       loss_finish_f32, 1 x 256 (2 barriers): %.1f us per launch\n", 1000.0 * total / reps);
}

int main() {
    conversions();
    refusals();
    silu();
    group_norm();
    softmax();
    sum_spatial();
    loss();
    grad_norm();
    transposes();
    overhead();
    printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures != 0;
}
