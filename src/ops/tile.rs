//! The register tile of the CPU backend's packed matrix products (GotoBLAS-style):
//!
//! ```text
//! C[rows × cols] (+)= Σ_p a[p][0..MR] ⊗ b[p][0..NR]        rows ≤ MR, cols ≤ NR
//! ```
//!
//! `a` and `b` are *packed* panels: for each step p of the reduction, MR values of the left
//! operand (one per output row) and NR values of the right operand (one per output column), laid
//! out contiguously, so the inner loop reads both with unit stride and keeps the whole C tile in
//! registers. The callers ([`crate::ops::conv2d`]) pack the panels straight from the
//! convolution's tensors, which is how the convolution avoids a materialised im2col buffer.
//!
//! Two kernels compute the same sums in the same order (p ascending, one accumulator per C
//! element): an AVX-512 one for f32, used when the CPU has AVX-512F, and a portable one for
//! every other case (f64 for the gradient checks, or a CPU without AVX-512). They differ only in
//! rounding: the AVX-512 kernel fuses each multiply-add.

use crate::float::Real;

/// Rows of the C tile: one broadcast value of the left panel per row.
pub const MR: usize = 8;
/// Columns of the C tile: three 16-lane AVX-512 vectors. 8 × 3 = 24 accumulators, plus three
/// loads of `b` and one broadcast of `a`, fit the 32 vector registers.
pub const NR: usize = 48;

/// `C (+)= A·B` for one tile. `k` reduction steps; `a`: k·MR packed values, `b`: k·NR packed
/// values; `c`: the tile's top-left element, rows `ldc` apart; only `rows × cols` of C are
/// written (the panels may carry padding past them); `accumulate` adds to C instead of
/// overwriting it.
///
/// # Safety
/// `a` must be valid for `k·MR` reads, `b` for `k·NR` reads, and `c` for reads and writes of
/// `rows` rows of `cols` elements, `ldc` apart; `rows ≤ MR`, `cols ≤ NR`.
pub type TileFn<T> = unsafe fn(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
);

/// The fastest tile kernel this CPU runs for `T`.
pub fn kernel<T: Real>() -> TileFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && has_avx512() {
            let f: TileFn<f32> = avx512::tile;
            // SAFETY: T is f32 (checked above), so the two function pointer types are the same.
            return unsafe { std::mem::transmute::<TileFn<f32>, TileFn<T>>(f) };
        }
    }
    portable::<T>
}

/// Whether the AVX-512 kernels run on this CPU (and are not switched off with
/// `DDPM_CPU_KERNEL=portable`: then f32 convolutions take the path of a CPU without AVX-512,
/// the im2col reference on the `gemm` crate).
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        let forced_off = std::env::var("DDPM_CPU_KERNEL").is_ok_and(|v| v == "portable");
        #[cfg(target_arch = "x86_64")]
        let present = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let present = false;
        present && !forced_off
    })
}

/// The name of the kernel [`kernel`] picks for f32, for `ddpm info` and benchmark headers.
pub fn kernel_name() -> &'static str {
    if has_avx512() {
        "avx512f 8x48"
    } else {
        "portable 8x48"
    }
}

/// The portable tile: plain loops the compiler vectorises for whatever the build targets.
///
/// # Safety
/// As [`TileFn`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn portable<T: Real>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY: the caller guarantees k·MR and k·NR readable values.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, k * MR),
            std::slice::from_raw_parts(b, k * NR),
        )
    };
    let mut acc = [[T::zero(); NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (r, &bv) in row.iter_mut().zip(bp) {
                *r += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: rows ≤ MR rows of cols elements, ldc apart, are writable (the caller's promise).
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        for (o, &v) in out.iter_mut().zip(row) {
            *o = if accumulate { *o + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    const V: usize = NR / 16;

    /// The AVX-512 tile: 24 zmm accumulators, three vector loads of `b` and MR broadcasts of
    /// `a` per reduction step.
    ///
    /// # Safety
    /// As [`super::TileFn`], and the CPU must have AVX-512F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..k {
            // SAFETY: k·MR values of `a` and k·NR of `b` are readable; each step reads the next
            // MR and NR of them.
            unsafe {
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                let b2 = _mm512_loadu_ps(b.add(32));
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(i));
                    row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                    row[2] = _mm512_fmadd_ps(av, b2, row[2]);
                }
                a = a.add(MR);
                b = b.add(NR);
            }
        }
        // SAFETY: the caller's promise about `c`.
        unsafe { store(&acc, c, ldc, rows, cols, accumulate) };
    }

    /// Writes (or adds) the accumulators' `rows × cols` values to C, lanes past `cols` masked.
    ///
    /// # Safety
    /// `c` must be valid for `rows` rows of `cols` values, `ldc` apart; AVX-512F present.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(
        acc: &[[__m512; V]; MR],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        for (i, row) in acc.iter().enumerate().take(rows) {
            for (j, &v) in row.iter().enumerate() {
                let first = j * 16;
                if first >= cols {
                    break;
                }
                let lanes = (cols - first).min(16);
                let mask: __mmask16 = if lanes == 16 {
                    0xffff
                } else {
                    (1u16 << lanes) - 1
                };
                // SAFETY: lanes past `cols` are masked off; rows < `rows` are writable.
                unsafe {
                    let p = c.add(i * ldc + first);
                    let out = if accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), v)
                    } else {
                        v
                    };
                    _mm512_mask_storeu_ps(p, mask, out);
                }
            }
        }
    }

    /// The tile with its right operand read in place instead of from a packed panel: step p
    /// loads the 16 values at `bases[v] + offsets[p]` as vector v. A stride-1 convolution over a
    /// padded input is such an operand: `offsets` holds each tap's (channel, ky, kx) offset and
    /// each base is where 16 consecutive columns (output or padded positions) read tap 0.
    ///
    /// # Safety
    /// As [`super::TileFn`] for `a` and `c`; `offsets` valid for `k` reads, and 16 values at
    /// every `bases[v] + offsets[p]` readable; AVX-512F present.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_direct(
        k: usize,
        a: *const f32,
        offsets: *const u32,
        bases: [*const f32; V],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let mut a = a;
        for p in 0..k {
            // SAFETY: the caller's promises: k offsets, k·MR values of `a`, readable vectors.
            unsafe {
                let o = *offsets.add(p) as usize;
                let b0 = _mm512_loadu_ps(bases[0].add(o));
                let b1 = _mm512_loadu_ps(bases[1].add(o));
                let b2 = _mm512_loadu_ps(bases[2].add(o));
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(i));
                    row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                    row[2] = _mm512_fmadd_ps(av, b2, row[2]);
                }
                a = a.add(MR);
            }
        }
        // SAFETY: the caller's promise about `c`.
        unsafe { store(&acc, c, ldc, rows, cols, accumulate) };
    }

    /// One stretch of a dot-product tile's reduction read in place: DR rows of `a` (`lda`
    /// apart) and DC rows of `b` (each its own pointer), `len` values each, a multiple of 16.
    #[derive(Clone, Copy, Debug)]
    pub struct DotRun {
        pub a: *const f32,
        pub b: [*const f32; super::DC],
        pub len: usize,
    }

    /// The DR × DC vector accumulators of a dot-product tile kept between calls (16 partial
    /// sums each), so the lanes are added up once at the end rather than after every stretch.
    pub type DotPartials = [[__m512; super::DC]; super::DR];

    /// partials (+)= the products of every run (written when `first`).
    ///
    /// # Safety
    /// Every run's rows must hold `len` readable values; AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_runs(runs: &[DotRun], lda: usize, partials: &mut DotPartials, first: bool) {
        use super::{DC, DR};
        let mut acc = if first {
            [[_mm512_setzero_ps(); DC]; DR]
        } else {
            *partials
        };
        for run in runs {
            let (mut a, mut b) = (run.a, run.b);
            for _ in 0..run.len / 16 {
                // SAFETY: the caller's promise: `len` values in every row.
                unsafe {
                    let mut av = [_mm512_setzero_ps(); DR];
                    for (i, v) in av.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(a.add(i * lda));
                    }
                    for (j, bj) in b.iter_mut().enumerate() {
                        let bv = _mm512_loadu_ps(*bj);
                        for (row, &ai) in acc.iter_mut().zip(&av) {
                            row[j] = _mm512_fmadd_ps(ai, bv, row[j]);
                        }
                        *bj = bj.add(16);
                    }
                    a = a.add(16);
                }
            }
        }
        *partials = acc;
    }

    /// dst[i·ldc + j] += Σ lanes of partials[i][j] for i < rows, j < cols.
    ///
    /// # Safety
    /// `dst` valid for `rows` rows of `cols` values `ldc` apart; AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn add_partials(
        partials: &DotPartials,
        dst: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        for (i, row) in partials.iter().enumerate().take(rows) {
            for (j, &v) in row.iter().enumerate().take(cols) {
                // SAFETY: (i, j) lies inside the caller's rows × cols.
                unsafe { *dst.add(i * ldc + j) += hsum(v) };
            }
        }
    }

    /// Σ of the 16 lanes by a fixed tree (256-bit halves, 128-bit quarters, pairs, lanes):
    /// deterministic. Written out because `_mm512_reduce_add_ps` upsets the register
    /// allocation of the loop before it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn hsum(v: __m512) -> f32 {
        let t = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v));
        let t = _mm512_add_ps(t, _mm512_shuffle_f32x4::<0b01_01_01_01>(t, t));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
        _mm512_cvtss_f32(t)
    }

    /// The AVX-512 dot-product tile: 24 accumulators of 16 partial sums (lane l sums the
    /// steps q ≡ l mod 16), reduced across lanes at the end.
    ///
    /// # Safety
    /// As [`super::DotFn`], and the CPU must have AVX-512F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot(
        len: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        use super::{DC, DR};
        let mut acc = [[_mm512_setzero_ps(); DC]; DR];
        let (mut a, mut b) = (a, b);
        for _ in 0..len / 16 {
            // SAFETY: DR rows of `a` and DC rows of `b` hold `len` readable values each; each
            // step reads the next 16 of every row.
            unsafe {
                let mut av = [_mm512_setzero_ps(); DR];
                for (i, v) in av.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(a.add(i * lda));
                }
                for j in 0..DC {
                    let bj = _mm512_loadu_ps(b.add(j * ldb));
                    for (row, &ai) in acc.iter_mut().zip(&av) {
                        row[j] = _mm512_fmadd_ps(ai, bj, row[j]);
                    }
                }
                a = a.add(16);
                b = b.add(16);
            }
        }
        for (i, row) in acc.iter().enumerate().take(rows) {
            for (j, &v) in row.iter().enumerate().take(cols) {
                let sum = hsum(v);
                // SAFETY: (i, j) lies inside the rows × cols the caller made writable.
                unsafe {
                    let out = c.add(i * ldc + j);
                    *out = if accumulate { *out + sum } else { sum };
                }
            }
        }
    }
}

/// Rows of the dot-product tile ([`DotFn`]).
pub const DR: usize = 4;
/// Columns of the dot-product tile: 4 × 6 = 24 vector accumulators (6 × 4 measured slower:
/// its six row vectors leave too few registers).
pub const DC: usize = 6;
/// Reduction steps of a dot-product tile come in multiples of this (one AVX-512 vector).
pub const DQ: usize = 16;

/// `C (+)= A·Bᵀ` for one tile of dot products, for operands that are both contiguous along the
/// reduction (the weight gradient, where dy and the input patches both run over positions):
/// C[i, j] (+)= Σ_{q < len} a[i·lda + q] · b[j·ldb + q] for i < DR, j < DC.
///
/// # Safety
/// `len` is a multiple of [`DQ`]; `a` is valid for DR rows of `len` values `lda` apart, `b` for
/// DC rows `ldb` apart (padding rows included); `c` for `rows ≤ DR` rows of `cols ≤ DC` values,
/// `ldc` apart.
pub type DotFn<T> = unsafe fn(
    len: usize,
    a: *const T,
    lda: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
);

/// The fastest dot-product tile this CPU runs for `T`.
pub fn dot_kernel<T: Real>() -> DotFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && has_avx512() {
            let f: DotFn<f32> = avx512::dot;
            // SAFETY: T is f32 (checked above), so the two function pointer types are the same.
            return unsafe { std::mem::transmute::<DotFn<f32>, DotFn<T>>(f) };
        }
    }
    portable_dot::<T>
}

/// The portable dot-product tile: each sum runs q ascending.
///
/// # Safety
/// As [`DotFn`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn portable_dot<T: Real>(
    len: usize,
    a: *const T,
    lda: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    for i in 0..rows {
        // SAFETY: rows < DR of `len` values `lda` apart are readable (the caller's promise).
        let ar = unsafe { std::slice::from_raw_parts(a.add(i * lda), len) };
        for j in 0..cols {
            // SAFETY: as for `a`, DC rows of `b`; C's rows × cols are writable.
            let br = unsafe { std::slice::from_raw_parts(b.add(j * ldb), len) };
            let sum = ar.iter().zip(br).fold(T::zero(), |s, (&x, &y)| s + x * y);
            let out = unsafe { &mut *c.add(i * ldc + j) };
            *out = if accumulate { *out + sum } else { sum };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    /// Checks one tile written (or added) into `c` (`tile_rows` rows, `ldc` apart, starting as
    /// `start`): the `rows × cols` inside equal `dot(i, j)` (plus the start when accumulating)
    /// to f32 accuracy, and nothing outside was touched.
    #[allow(clippy::too_many_arguments)]
    fn check_tile(
        what: &str,
        c: &[f32],
        start: &[f32],
        (tile_rows, ldc): (usize, usize),
        (rows, cols): (usize, usize),
        accumulate: bool,
        dot: impl Fn(usize, usize) -> f64,
    ) {
        for i in 0..tile_rows {
            for j in 0..ldc {
                let (got, was) = (c[i * ldc + j], start[i * ldc + j]);
                if i >= rows || j >= cols {
                    assert_eq!(got, was, "{what}: wrote outside the tile at ({i}, {j})");
                    continue;
                }
                let want = dot(i, j) + if accumulate { was as f64 } else { 0.0 };
                assert!(
                    (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{what} ({rows}x{cols}, acc {accumulate}) at ({i}, {j}): {got} vs {want}"
                );
            }
        }
    }

    /// Both kernels against a plain triple loop, on a full tile and on ragged edges, writing
    /// and accumulating, with a row stride wider than the tile.
    #[test]
    fn tile_kernels_match_a_triple_loop() {
        let k = 37;
        let mut rng = Philox::new(11);
        let a: Vec<f32> = rng.normal_vec(k * MR, 1.0);
        let b: Vec<f32> = rng.normal_vec(k * NR, 1.0);
        let ldc = NR + 5;
        let kernels: Vec<(&str, TileFn<f32>)> =
            vec![("portable", portable::<f32>), ("best", kernel::<f32>())];
        for (name, f) in kernels {
            for &(rows, cols) in &[(MR, NR), (3, 17), (MR, 33), (1, 1), (5, NR)] {
                for accumulate in [false, true] {
                    let start: Vec<f32> = rng.normal_vec(MR * ldc, 1.0);
                    let mut c = start.clone();
                    unsafe {
                        f(
                            k,
                            a.as_ptr(),
                            b.as_ptr(),
                            c.as_mut_ptr(),
                            ldc,
                            rows,
                            cols,
                            accumulate,
                        )
                    };
                    check_tile(
                        name,
                        &c,
                        &start,
                        (MR, ldc),
                        (rows, cols),
                        accumulate,
                        |i, j| {
                            (0..k)
                                .map(|p| a[p * MR + i] as f64 * b[p * NR + j] as f64)
                                .sum()
                        },
                    );
                }
            }
        }
    }

    /// Both dot-product kernels against f64 sums, with padded row strides, ragged rows and
    /// columns, writing and accumulating.
    #[test]
    fn dot_kernels_match_f64_sums() {
        let len = 5 * DQ;
        let (lda, ldb, ldc) = (len + 3, len + 7, DC + 2);
        let mut rng = Philox::new(12);
        let a: Vec<f32> = rng.normal_vec(DR * lda, 1.0);
        let b: Vec<f32> = rng.normal_vec(DC * ldb, 1.0);
        let kernels: Vec<(&str, DotFn<f32>)> = vec![
            ("portable", portable_dot::<f32>),
            ("best", dot_kernel::<f32>()),
        ];
        for (name, f) in kernels {
            for &(rows, cols) in &[(DR, DC), (1, DC), (DR, 1), (3, 5)] {
                for accumulate in [false, true] {
                    let start: Vec<f32> = rng.normal_vec(DR * ldc, 1.0);
                    let mut c = start.clone();
                    unsafe {
                        f(
                            len,
                            a.as_ptr(),
                            lda,
                            b.as_ptr(),
                            ldb,
                            c.as_mut_ptr(),
                            ldc,
                            rows,
                            cols,
                            accumulate,
                        )
                    };
                    check_tile(
                        name,
                        &c,
                        &start,
                        (DR, ldc),
                        (rows, cols),
                        accumulate,
                        |i, j| {
                            (0..len)
                                .map(|q| a[i * lda + q] as f64 * b[j * ldb + q] as f64)
                                .sum()
                        },
                    );
                }
            }
        }
    }
}
