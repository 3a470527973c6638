//! The fast CPU convolution: packed GEMMs on the register tile of [`crate::ops::tile`], whose
//! convolution panels are gathered straight from the input tensor (an implicit im2col, never
//! materialised) and whose weights are packed once per call and reused by the whole batch.
//!
//! Every pass is one GEMM over the positions of the whole batch, so the small levels of a UNet
//! (4×4, 8×8) still give the tile full rows, and the work splits into many equal tasks:
//! ```text
//! forward        y[co, q]  = Σ_k W[co, k] · col[k, q]          (M = C_out, N = B·P, K = C_in·kh·kw)
//! grad weight    dW[co, k] += Σ_q dy[co, q] · col[k, q]        (M = C_out, N = K,   K = B·P)
//! grad input     stride 1: dx = conv(dy, W flipped and transposed), padding mirrored
//! ```
//! where q runs over (image, output position) and col[k, q] is the input value under tap k of
//! position q (zero in the padding). Each output element is summed by one task in a fixed order,
//! so results do not depend on the number of threads.
//!
//! Two ways to feed the tile col: gathered into packed panels ([`gather_tap`], any geometry and
//! type), or — f32 on AVX-512, stride 1 — read in place from a zero-padded copy of the input
//! ([`Direct`]), where tap k of a position is the position's base plus a per-tap offset. In place,
//! the columns may be *padded* positions (rows Wp wide, the extra columns computed and
//! dropped, or multiplied by zeros in the weight gradient), so N is then B·H′·Wp rounded up.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::tap_table::TapTable;
use super::Conv2dShape;
use crate::float::Real;
use crate::ops::scratch::with_scratch;
use crate::ops::simd::{is_f32, multiversion};
use crate::ops::tile::{self, DotFn, TileFn, DC, DQ, DR, MR, NR};
use crate::profile::{self, Op};

/// Reduction steps per packed block: a right panel (KC × NR) stays in L1, a block of left
/// panels (C_out × KC) in L2.
const KC: usize = 192;
/// Output columns per forward task: four tiles wide, so one packed block serves four tiles.
const NC: usize = 4 * NR;
/// Columns of dW per weight-gradient task (a multiple of the dot tile's DC).
const NCW: usize = 16 * DC;
/// Positions per block of the weight gradient: a multiple of DQ; the task's patch rows
/// (NCW × QB) stay in L2.
const QB: usize = 1024;

/// Elements of scratch one thread allocates for a convolution of geometry `s`: the forward's
/// packed panels and C block, or the weight gradient's gathered rows (the larger).
pub fn scratch_per_thread(s: &Conv2dShape) -> usize {
    let forward = KC * NC + s.c_out.div_ceil(MR) * MR * NC;
    let weights = NCW * QB + s.c_out.next_multiple_of(DR) * DC * 16;
    forward.max(weights)
}

/// A pointer to an output that tasks write in disjoint parts.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: every task writes a region no other task touches (argued at each use).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(&self) -> *mut T {
        self.0
    }
}

/// A left operand (M × K) packed as ⌈M/MR⌉ tiles of `[K][MR]`, rows past M zero.
pub struct PackedLeft<T> {
    data: Vec<T>,
    m: usize,
    k: usize,
}

impl<T: Real> PackedLeft<T> {
    /// Packs the rows `fill(row, out)` writes (out: K values) for rows < m, in parallel over
    /// tiles.
    fn pack(m: usize, k: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Self {
        let tiles = m.div_ceil(MR);
        let mut data = vec![T::zero(); tiles * k * MR];
        data.par_chunks_mut((k * MR).max(1))
            .enumerate()
            .for_each_init(
                || vec![T::zero(); k],
                |row, (i, tile)| {
                    for r in 0..MR.min(m - i * MR) {
                        fill(i * MR + r, row);
                        for (v, &x) in tile.iter_mut().skip(r).step_by(MR).zip(row.iter()) {
                            *v = x;
                        }
                    }
                },
            );
        Self { data, m, k }
    }

    /// The weights of a convolution as its forward's left operand: W (C_out, C_in·kh·kw).
    pub fn weights(s: &Conv2dShape, w: &[T]) -> Self {
        let k = s.patch_len();
        Self::pack(s.c_out, k, |co, row| {
            row.copy_from_slice(&w[co * k..(co + 1) * k])
        })
    }

    /// The left operand of the stride-1 input gradient: W′[ci, (co, t)] = W[co, ci, flip(t)],
    /// t = ky·kw + kx, flip(t) = kh·kw − 1 − t (both kernel axes reversed).
    fn weights_flipped_transposed(s: &Conv2dShape, w: &[T]) -> Self {
        let taps = s.kernel.0 * s.kernel.1;
        let c_in = s.input.c;
        Self::pack(c_in, s.c_out * taps, |ci, row| {
            for (co, out) in row.chunks_exact_mut(taps).enumerate() {
                let kernel = &w[(co * c_in + ci) * taps..(co * c_in + ci + 1) * taps];
                out.iter_mut()
                    .zip(kernel.iter().rev())
                    .for_each(|(o, &v)| *o = v);
            }
        })
    }

    /// Rows `[i·MR, i·MR + MR)`, reduction steps `[k0, k0 + kc)`: `kc·MR` values.
    fn panel(&self, i: usize, k0: usize) -> *const T {
        debug_assert!(i * MR < self.m && k0 <= self.k);
        self.data[(i * self.k + k0) * MR..].as_ptr()
    }
}

/// A piece of one row of col: `len` zeros (padding), or values copied from the input.
enum Piece<'a, T> {
    Zeros(usize),
    Copy(&'a [T]),
}

/// Where [`gather_tap`] puts the pieces of a row of col (a trait with inlined methods rather
/// than a closure, so each multiversioned caller compiles the writes with its own instructions).
trait Sink<T> {
    /// `piece` belongs at offset `at` of the row.
    fn put(&mut self, at: usize, piece: Piece<'_, T>);
}

/// Walks col[k, q0..q0 + len) (the input under tap k of batch positions q) as pieces, calling
/// `sink.put(at, piece)` with `at` the offset from q0. Positions run over (image, output row,
/// output column); inside one output row a stride-1 tap is a contiguous run of the input.
#[inline(always)]
fn gather_tap<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    k: usize,
    q0: usize,
    len: usize,
    sink: &mut impl Sink<T>,
) {
    let (kh, kw) = s.kernel;
    let (ci, ky, kx) = (k / (kh * kw), (k / kw) % kh, k % kw);
    let (h, w) = (s.input.h, s.input.w);
    let out_shape = s.output();
    let (oh, ow) = (out_shape.h, out_shape.w);
    let p = oh * ow;
    let (mut img, rem) = (q0 / p, q0 % p);
    let (mut oy, mut ox) = (rem / ow, rem % ow);
    let mut at = 0;
    while at < len {
        let run = (ow - ox).min(len - at);
        let iy = (oy * s.stride.0 + ky) as isize - s.pad.top as isize;
        if iy < 0 || iy >= h as isize {
            sink.put(at, Piece::Zeros(run));
        } else {
            let row_at = (img * s.input.c + ci) * h * w + iy as usize * w;
            let row = &x[row_at..row_at + w];
            let first = (ox * s.stride.1 + kx) as isize - s.pad.left as isize;
            if s.stride.1 == 1 {
                // Column t of the run reads row[first + t]; those outside [0, w) are padding.
                let lo = (-first).clamp(0, run as isize) as usize;
                let hi = ((w as isize - first).clamp(0, run as isize) as usize).max(lo);
                if lo > 0 {
                    sink.put(at, Piece::Zeros(lo));
                }
                if hi > lo {
                    let from = (first + lo as isize) as usize;
                    sink.put(at + lo, Piece::Copy(&row[from..from + (hi - lo)]));
                }
                if run > hi {
                    sink.put(at + hi, Piece::Zeros(run - hi));
                }
            } else {
                for t in 0..run {
                    let ix = first + (t * s.stride.1) as isize;
                    if ix >= 0 && ix < w as isize {
                        sink.put(at + t, Piece::Copy(&row[ix as usize..ix as usize + 1]));
                    } else {
                        sink.put(at + t, Piece::Zeros(1));
                    }
                }
            }
        }
        at += run;
        ox += run;
        if ox == ow {
            ox = 0;
            oy += 1;
            if oy == oh {
                oy = 0;
                img += 1;
            }
        }
    }
}

/// Writes a piece into `dst` (same length) without a call into memcpy: the pieces are short
/// (an output row), and fixed 16-element copies compile to a few vector moves.
#[inline(always)]
fn put<T: Real>(dst: &mut [T], piece: &Piece<'_, T>, from: usize) {
    match piece {
        Piece::Zeros(_) => dst.iter_mut().for_each(|d| *d = T::zero()),
        Piece::Copy(src) => {
            let src = &src[from..from + dst.len()];
            let mut d = dst.chunks_exact_mut(16);
            let mut s = src.chunks_exact(16);
            for (d16, s16) in (&mut d).zip(&mut s) {
                let s16: &[T; 16] = s16.try_into().expect("16 elements");
                let d16: &mut [T; 16] = d16.try_into().expect("16 elements");
                *d16 = *s16;
            }
            for (dv, &sv) in d.into_remainder().iter_mut().zip(s.remainder()) {
                *dv = sv;
            }
        }
    }
}

impl<T> Piece<'_, T> {
    #[inline(always)]
    fn len(&self) -> usize {
        match self {
            Piece::Zeros(n) => *n,
            Piece::Copy(s) => s.len(),
        }
    }
}

/// Packs col[k0..k0 + kc, q0..q0 + nc) as ⌈nc/NR⌉ panels of [kc][NR] (the forward's right
/// operand); columns past nc are zero.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_right<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    k0: usize,
    kc: usize,
    q0: usize,
    nc: usize,
    table: Option<&TapTable>,
    b: &mut [T],
) {
    if let Some(table) = table {
        // Whole vectors (positions per image are a multiple of 16, and so are q0 and nc).
        for kk in 0..kc {
            let row = |v: usize| {
                let (j, l) = ((16 * v) / NR, (16 * v) % NR);
                b[(j * kc + kk) * NR + l..].as_mut_ptr()
            };
            // SAFETY: the table exists only for f32 and this geometry; each 16 values from
            // column l < NR of panel j's row kk lie inside `b` (⌈nc/NR⌉ panels of kc × NR).
            unsafe { table.gather(x, k0 + kk, q0, nc / 16, row) };
            if !nc.is_multiple_of(NR) {
                let start = ((nc / NR) * kc + kk) * NR + nc % NR;
                b[start..start + NR - nc % NR].fill(T::zero());
            }
        }
        return;
    }
    /// Row kk of the block: offset `at` is column at % NR of panel at / NR.
    struct Panels<'b, T> {
        b: &'b mut [T],
        kc: usize,
        kk: usize,
    }
    impl<T: Real> Sink<T> for Panels<'_, T> {
        #[inline(always)]
        fn put(&mut self, at: usize, piece: Piece<'_, T>) {
            // Split the piece where it crosses from one panel into the next.
            let mut done = 0;
            while done < piece.len() {
                let pos = at + done;
                let (j, l) = (pos / NR, pos % NR);
                let n = (NR - l).min(piece.len() - done);
                let start = (j * self.kc + self.kk) * NR + l;
                put(&mut self.b[start..start + n], &piece, done);
                done += n;
            }
        }
    }
    for kk in 0..kc {
        gather_tap(s, x, k0 + kk, q0, nc, &mut Panels { b: &mut *b, kc, kk });
        if !nc.is_multiple_of(NR) {
            let start = ((nc / NR) * kc + kk) * NR + nc % NR;
            b[start..start + NR - nc % NR].fill(T::zero());
        }
    }
}

/// y = conv(x, W) (+ b), with W already packed ([`PackedLeft::weights`]).
/// x: `s.input`, y: `s.output()`. Parallel over blocks of batch positions ([`task_width`]).
pub fn forward<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    a: &PackedLeft<T>,
    bias: Option<&[T]>,
    y: &mut [T],
) {
    let (m, k) = (s.c_out, s.patch_len());
    debug_assert_eq!((a.m, a.k), (m, k));
    let out = s.output();
    let p = out.h * out.w;
    let n_total = out.n * p;
    let tiles = m.div_ceil(MR);
    let kern: TileFn<T> = tile::kernel::<T>();
    let y_out = Shared(y.as_mut_ptr());
    let direct = Direct::new(s, x);
    let direct = direct.as_ref();
    let table = if direct.is_none() && TapTable::pays(s) {
        TapTable::new::<T>(s)
    } else {
        None
    };
    let table = table.as_ref();
    let columns = direct.map_or(n_total, |d| d.columns(s));
    let width = task_width(columns);
    (0..columns.div_ceil(width))
        .into_par_iter()
        .for_each(|task| {
            let n0 = task * width;
            let nc = width.min(columns - n0);
            with_scratch(KC * NC + tiles * MR * NC, |scratch: &mut [T]| {
                let (b, c) = scratch.split_at_mut(KC * NC);
                forward_task(s, x, a, bias, y_out, kern, direct, table, b, c, n0, nc)
            })
        });
}

/// Columns per forward task: NC, or fewer (whole tiles) when that leaves under four tasks per
/// thread — the small levels of a UNet have a few hundred columns, and three tasks on two
/// threads would leave one idle a third of the time. Every column is still summed in the same
/// order, so results do not depend on the width.
fn task_width(columns: usize) -> usize {
    let wanted = 4 * rayon::current_num_threads();
    if columns >= wanted * NC {
        NC
    } else {
        (columns / wanted / NR * NR).clamp(NR, NC)
    }
}

/// A stride-1 convolution's input, zero-padded once, so that the tile can read its right
/// operand in place ([`crate::ops::tile`]'s `tile_direct`) instead of from packed panels: the
/// input under tap (ci, ky, kx) of output position (image, oy, ox) sits at
/// `base(image, oy, ox) + offset(ci, ky, kx)`. Only for f32 on AVX-512.
///
/// The GEMM's columns are the batch's output positions when rows are a whole number of
/// 16-lane vectors wide (every vector within one row). Otherwise (rows of 8 or more) they are
/// *padded* positions q = oy·Wp + ox, ox < Wp, per image rounded up to 16: every 16 of them are
/// 16 consecutive values of the padded input, and the columns with ox ≥ W′ are computed and
/// dropped.
struct Direct {
    /// Padded positions per image, when the columns are padded positions.
    padded_columns: Option<usize>,
    /// (B, C, H + pad, W + pad)
    padded: Vec<f32>,
    /// Per tap k = (ci, ky, kx): ci·Hp·Wp + ky·Wp + kx.
    offsets: Vec<u32>,
    hp: usize,
    wp: usize,
}

impl Direct {
    /// For the forward (and the stride-1 input gradient): rows of at least 8 (narrower ones
    /// would be mostly padding).
    fn new<T: Real>(s: &Conv2dShape, x: &[T]) -> Option<Self> {
        let out = s.output();
        if out.w < 8 {
            return None;
        }
        let mut d = Self::padded(s, x)?;
        if !out.w.is_multiple_of(16) {
            d.padded_columns = Some((out.h * d.wp).next_multiple_of(16));
        }
        Some(d)
    }

    /// The forward's GEMM columns over the batch.
    fn columns(&self, s: &Conv2dShape) -> usize {
        let out = s.output();
        self.padded_columns.unwrap_or(out.h * out.w) * out.n
    }

    /// Which output values columns [q, end) start with: (columns in the run, and the run's
    /// (image, position) when it holds real outputs rather than padding).
    fn output_run(&self, s: &Conv2dShape, q: usize, end: usize) -> (usize, Option<(usize, usize)>) {
        output_run(s, self.padded_columns.map(|lq| (lq, self.wp)), q, end)
    }

    /// The padded input of any stride-1 convolution (f32 on AVX-512), followed by 32 + kw
    /// zeros: a vector read at padded position q < H′·Wp (rounded up to 16) of a tap ends at
    /// most kw + 14 values past its image.
    fn padded<T: Real>(s: &Conv2dShape, x: &[T]) -> Option<Self> {
        let (c, h, w) = (s.input.c, s.input.h, s.input.w);
        let (hp, wp) = (h + s.pad.top + s.pad.bottom, w + s.pad.left + s.pad.right);
        let usable = cfg!(target_arch = "x86_64")
            && is_f32::<T>()
            && tile::has_avx512()
            && s.stride == (1, 1)
            && u32::try_from(c * hp * wp).is_ok();
        if !usable {
            return None;
        }
        // SAFETY: T is f32 (checked above).
        let x: &[f32] = unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) };
        // Every value written once (zeros around each plane, the plane's rows between), with
        // no zeroing pass over the whole buffer first: this copy is made at every convolution.
        let planes = s.input.n * c;
        let len = planes * hp * wp + 32 + s.kernel.1;
        let mut padded: Vec<f32> = Vec::with_capacity(len);
        let (body, tail) = padded.spare_capacity_mut()[..len].split_at_mut(planes * hp * wp);
        body.par_chunks_mut(hp * wp)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                let (top, rest) = dst.split_at_mut(s.pad.top * wp);
                zero(top);
                let (rows, bottom) = rest.split_at_mut(h * wp);
                zero(bottom);
                for (line, row) in rows.chunks_exact_mut(wp).zip(src.chunks_exact(w)) {
                    let (left, rest) = line.split_at_mut(s.pad.left);
                    zero(left);
                    let (inside, right) = rest.split_at_mut(w);
                    write(inside, row);
                    zero(right);
                }
            });
        zero(tail);
        // SAFETY: every one of the `len` values was written above (each plane's top rows, rows
        // of left padding, values and right padding, bottom rows; then the tail).
        unsafe { padded.set_len(len) };
        let (kh, kw) = s.kernel;
        let offsets = (0..s.patch_len())
            .map(|k| {
                let (ci, ky, kx) = (k / (kh * kw), (k / kw) % kh, k % kw);
                (ci * hp * wp + ky * wp + kx) as u32
            })
            .collect();
        Some(Self {
            padded_columns: None,
            padded,
            offsets,
            hp,
            wp,
        })
    }

    /// Where the 16 columns from column q (clamped into the batch) read tap 0.
    fn base(&self, s: &Conv2dShape, q: usize) -> *const f32 {
        let out = s.output();
        let image = s.input.c * self.hp * self.wp;
        let q = q.min(self.columns(s) - 16);
        let at = match self.padded_columns {
            // Padded position q′ of an image is q′ values past its top-left.
            Some(lq) => (q / lq) * image + q % lq,
            None => {
                let p = out.h * out.w;
                let (img, oy, ox) = (q / p, (q % p) / out.w, q % out.w);
                img * image + oy * self.wp + ox
            }
        };
        self.padded[at..].as_ptr()
    }
}

/// The run of GEMM columns from q (before `end`) that maps to one stretch of output: its length
/// and, unless it is padding, its (image, position). `padded`: (columns per image, Wp) when the
/// columns are padded positions, else None (columns are batch positions).
fn output_run(
    s: &Conv2dShape,
    padded: Option<(usize, usize)>,
    q: usize,
    end: usize,
) -> (usize, Option<(usize, usize)>) {
    let out = s.output();
    let p = out.h * out.w;
    match padded {
        None => {
            let (img, pos) = (q / p, q % p);
            ((p - pos).min(end - q), Some((img, pos)))
        }
        Some((lq, wp)) => {
            let (img, qq) = (q / lq, q % lq);
            let (oy, ox) = (qq / wp, qq % wp);
            if oy >= out.h {
                ((lq - qq).min(end - q), None) // the rounding up to 16 at the image's end
            } else if ox >= out.w {
                ((wp - ox).min(end - q), None) // the padding columns of a row
            } else {
                ((out.w - ox).min(end - q), Some((img, oy * out.w + ox)))
            }
        }
    }
}

multiversion! {
    /// One forward task: batch positions [n0, n0 + nc) (nc ≤ NC) of every output channel, in
    /// the scratch `b` (packed panels) and `c` (the C block), then into y.
    fn forward_task<T: Real>(
        s: &Conv2dShape,
        x: &[T],
        a: &PackedLeft<T>,
        bias: Option<&[T]>,
        y_out: Shared<T>,
        kern: TileFn<T>,
        direct: Option<&Direct>,
        table: Option<&TapTable>,
        b: &mut [T],
        c: &mut [T],
        n0: usize,
        nc: usize,
    ) {
        let (m, k) = (s.c_out, s.patch_len());
        let p = s.output().h * s.output().w;
        let tiles = m.div_ceil(MR);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            if let Some(d) = direct {
                direct_block(s, d, a, k0, kc, n0, nc, c);
                continue;
            }
            let t = profile::start();
            pack_right(s, x, k0, kc, n0, nc, table, b);
            profile::stop(Op::ConvPacking, t);
            for j in 0..nc.div_ceil(NR) {
                let cols = NR.min(nc - j * NR);
                for i in 0..tiles {
                    let rows = MR.min(m - i * MR);
                    // SAFETY: the packed panels hold kc·MR and kc·NR values from these
                    // offsets; the C tile lies inside `c` (tiles·MR rows of NC).
                    unsafe {
                        kern(
                            kc,
                            a.panel(i, k0),
                            b[j * kc * NR..].as_ptr(),
                            c[i * MR * NC + j * NR..].as_mut_ptr(),
                            NC,
                            rows,
                            cols,
                            k0 > 0,
                        );
                    }
                }
            }
        }
        // Columns n0..n0+nc of C go to y[image, co, position] (+ bias); padding is dropped.
        let mut q = n0;
        while q < n0 + nc {
            let (run, at) = match direct {
                Some(d) => d.output_run(s, q, n0 + nc),
                None => output_run(s, None, q, n0 + nc),
            };
            let Some((img, pos)) = at else {
                q += run;
                continue;
            };
            for co in 0..m {
                let src = &c[co * NC + (q - n0)..][..run];
                let bias_c = bias.map_or(T::zero(), |b| b[co]);
                // SAFETY: task `task` alone writes the outputs of columns [n0, n0 + nc) of every
                // channel (columns map to distinct outputs), and this run lies inside image
                // `img`'s channel `co`.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        y_out.get().add((img * m + co) * p + pos),
                        run,
                    )
                };
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v + bias_c;
                }
            }
            q += run;
        }
    }
}

/// One reduction block of a forward task on the in-place tile: C (+)= A[:, k0..k0 + kc] ·
/// col[k0..k0 + kc, n0..n0 + nc).
#[allow(clippy::too_many_arguments)]
fn direct_block<T: Real>(
    s: &Conv2dShape,
    d: &Direct,
    a: &PackedLeft<T>,
    k0: usize,
    kc: usize,
    n0: usize,
    nc: usize,
    c: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let m = s.c_out;
        for j in 0..nc.div_ceil(NR) {
            let q = n0 + j * NR;
            let bases = [d.base(s, q), d.base(s, q + 16), d.base(s, q + 32)];
            let cols = NR.min(nc - j * NR);
            for i in 0..m.div_ceil(MR) {
                // SAFETY: `Direct` exists only for f32 on AVX-512, so T is f32; the panel holds
                // kc·MR values, offsets[k0..k0 + kc] exist, every base + offset + 16 lies in
                // the padded input (inside the padded row for batch-position columns, inside
                // the tail after the last image for padded-position ones; see
                // `Direct::padded`), and the C tile lies in `c`.
                unsafe {
                    tile::avx512::tile_direct(
                        kc,
                        a.panel(i, k0).cast(),
                        d.offsets[k0..].as_ptr(),
                        bases,
                        c[i * MR * NC + j * NR..].as_mut_ptr().cast(),
                        NC,
                        MR.min(m - i * MR),
                        cols,
                        k0 > 0,
                    );
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the in-place tile is x86-64 only: {s:?} {k0} {kc} {n0} {nc} {}",
        c.len() + d.hp + a.m
    );
}

/// dx = the input gradient of a stride-1 convolution, as a forward convolution of dy with the
/// flipped, transposed weights and mirrored padding. None when the geometry does not allow it
/// (a stride above 1, or padding wider than the kernel).
pub fn backward_data_stride1<T: Real>(
    s: &Conv2dShape,
    w: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Option<()> {
    let mirrored = mirrored_shape(s)?;
    let a = PackedLeft::weights_flipped_transposed(s, w);
    forward(&mirrored, dy, &a, None, dx);
    Some(())
}

/// The geometry of [`backward_data_stride1`]: input dy (B, C_out, H′, W′), output (B, C_in, H, W),
/// padding k − 1 − p on each side.
fn mirrored_shape(s: &Conv2dShape) -> Option<Conv2dShape> {
    if s.stride != (1, 1) {
        return None;
    }
    let (kh, kw) = s.kernel;
    let mirror = |p: usize, k: usize| (k - 1).checked_sub(p);
    let pad = super::Padding {
        top: mirror(s.pad.top, kh)?,
        bottom: mirror(s.pad.bottom, kh)?,
        left: mirror(s.pad.left, kw)?,
        right: mirror(s.pad.right, kw)?,
    };
    let g = Conv2dShape::new(s.output(), s.input.c, s.kernel, (1, 1), pad).ok()?;
    (g.output() == s.input).then_some(g)
}

/// dW += Σ_q dy[co, q] · col[k, q] over every batch position q, as dot products along q (both
/// operands are contiguous in q, so neither is transposed). dy is copied once into rows of all
/// batch positions; the patches are gathered per block of QB positions. Tasks own disjoint
/// blocks of dW and add each block's partial sums in ascending q, so the result does not
/// depend on the thread count.
pub fn backward_weights<T: Real>(s: &Conv2dShape, x: &[T], dy: &[T], dw: &mut [T]) {
    let (m, k) = (s.c_out, s.patch_len());
    let out = s.output();
    let p = out.h * out.w;
    let n_total = out.n * p;
    if n_total == 0 || backward_weights_in_place(s, x, dy, dw).is_some() {
        // (An inf or NaN input value in the columns past W′ meets a zero of dy there and makes a
        // NaN the gathered path would not: a step with non-finite inputs is skipped anyway.)
        return;
    }
    // (m rounded up to DR, positions rounded up to DQ): zero rows and columns of padding.
    let (m_pad, q_pad) = (m.next_multiple_of(DR), n_total.next_multiple_of(DQ));
    // SAFETY: each row is written whole: every image's positions, then the rounding up to DQ.
    let left = unsafe {
        rows_written(m_pad, q_pad, m, |co, row| {
            let (real, end) = row.split_at_mut(n_total);
            for (img, part) in real.chunks_exact_mut(p).enumerate() {
                write(part, &dy[(img * m + co) * p..(img * m + co + 1) * p]);
            }
            zero(end);
        })
    };
    let kern: DotFn<T> = tile::dot_kernel::<T>();
    let table = TapTable::pays(s).then(|| TapTable::new::<T>(s)).flatten();
    let table = table.as_ref();
    let dw_out = Shared(dw.as_mut_ptr());
    let k_chunks = k.div_ceil(NCW);
    // Few columns (a 1×1 or RGB-input convolution): split the rows too, to fill the threads.
    let m_chunk = if k_chunks >= 8 {
        m_pad
    } else {
        (m_pad / (8 / k_chunks)).next_multiple_of(DR).max(DR)
    };
    let m_chunks = m_pad.div_ceil(m_chunk);
    (0..k_chunks * m_chunks).into_par_iter().for_each(|task| {
        with_scratch(NCW * QB, |b: &mut [T]| {
            let (k0, r0) = ((task / m_chunks) * NCW, (task % m_chunks) * m_chunk);
            let (ncw, rows_here) = (NCW.min(k - k0), m_chunk.min(m_pad - r0));
            for q0 in (0..q_pad).step_by(QB) {
                let qb = QB.min(q_pad - q0);
                let real = n_total.saturating_sub(q0).min(qb);
                let t = profile::start();
                gather_rows(s, x, table, k0, ncw, q0, qb, real, b);
                profile::stop(Op::ConvPacking, t);
                // j outer: a DC-row panel of b stays in L1 while the rows of dy stream past.
                for j in (0..ncw).step_by(DC) {
                    for i in (r0..(r0 + rows_here).min(m)).step_by(DR) {
                        // SAFETY: DR rows of `left` from row i (m_pad rows) and DC rows of `b`
                        // from row j (padded to DC) hold qb values from q0; dW's (i, k0 + j)
                        // tile lies in this task's columns and inside dW.
                        unsafe {
                            kern(
                                qb,
                                left[i * q_pad + q0..].as_ptr(),
                                q_pad,
                                b[j * qb..].as_ptr(),
                                qb,
                                dw_out.get().add(i * k + k0 + j),
                                k,
                                DR.min(m - i),
                                DC.min(ncw - j),
                                true,
                            );
                        }
                    }
                }
            }
        })
    });
}

/// [`backward_weights`] for a stride-1 convolution with the patches read in place from the
/// padded input (f32 on AVX-512, rows wide enough for the channel count; None otherwise). The
/// sum runs over *padded* positions q = oy·Wp + ox, ox < Wp: there tap k of image n reads
/// padded[n, offset(k) + q], one contiguous run per image, and dy is copied with zeros at
/// ox ≥ W′ (and up to a multiple of 16), so the extra positions add nothing. Each task keeps
/// its tiles' 16-lane partial sums across blocks of images and adds the lanes up once, in a
/// fixed order.
fn backward_weights_in_place<T: Real>(
    s: &Conv2dShape,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    {
        use tile::avx512::{add_partials, dot_runs, DotPartials, DotRun};
        // Narrow rows waste more of each run on padding columns and make runs short, while many
        // output channels make gathering cheap per FLOP. Measured (batch 8–32, C_in = C_out):
        // in place wins at W = 32; at W = 16 up to 128 channels; at W = 8 up to 64; never at 4.
        let w = s.output().w;
        if w < 8 || s.c_out > 8 * w {
            return None;
        }
        let d = Direct::padded(s, x)?;
        // SAFETY: `Direct` exists only for f32, so T is f32.
        let dy: &[f32] = unsafe { std::slice::from_raw_parts(dy.as_ptr().cast(), dy.len()) };
        let (m, k) = (s.c_out, s.patch_len());
        let out = s.output();
        let (p, wp) = (out.h * out.w, d.wp);
        let lq = (out.h * wp).next_multiple_of(16); // padded positions per image
        let img_stride = s.input.c * d.hp * wp;
        let m_pad = m.next_multiple_of(DR);
        let lda = out.n * lq;
        // dy (B, C_out, H′, W′) → rows co of (image, padded position), zero where ox ≥ W′.
        // SAFETY: each row's images are written whole: rows of values and padding, then the
        // rounding up to 16.
        let left = unsafe {
            rows_written(m_pad, lda, m, |co, row| {
                for (img, part) in row.chunks_exact_mut(lq).enumerate() {
                    let src = &dy[(img * m + co) * p..(img * m + co + 1) * p];
                    let (lines, end) = part.split_at_mut(out.h * wp);
                    for (line, values) in lines.chunks_exact_mut(wp).zip(src.chunks_exact(out.w)) {
                        let (inside, past) = line.split_at_mut(out.w);
                        write(inside, values);
                        zero(past);
                    }
                    zero(end);
                }
            })
        };
        // Images per block: about 1024 positions, so a tile's rows of b stay in L1.
        let per_block = (1024 / lq).max(1);
        let k_chunks = k.div_ceil(NCW);
        let m_chunk = if k_chunks >= 8 {
            m_pad
        } else {
            (m_pad / (8 / k_chunks)).next_multiple_of(DR).max(DR)
        };
        let m_chunks = m_pad.div_ceil(m_chunk);
        let dw_out = Shared(dw.as_mut_ptr().cast::<f32>());
        (0..k_chunks * m_chunks).into_par_iter().for_each(|task| {
            let (k0, r0) = ((task / m_chunks) * NCW, (task % m_chunks) * m_chunk);
            let ncw = NCW.min(k - k0);
            let rows_end = (r0 + m_chunk).min(m);
            let (i_tiles, j_tiles) = ((rows_end - r0).div_ceil(DR), ncw.div_ceil(DC));
            // SAFETY: AVX-512F is present (`Direct` exists).
            let zero: DotPartials = unsafe { [[std::arch::x86_64::_mm512_setzero_ps(); DC]; DR] };
            let mut partials = vec![zero; i_tiles * j_tiles];
            let mut runs = Vec::with_capacity(per_block);
            for img0 in (0..out.n).step_by(per_block) {
                let imgs = img0..(img0 + per_block).min(out.n);
                for jt in 0..j_tiles {
                    let j = jt * DC;
                    for it in 0..i_tiles {
                        let i = r0 + it * DR;
                        runs.clear();
                        for img in imgs.clone() {
                            // Taps past ncw repeat the last one; their sums are not stored.
                            let b = std::array::from_fn(|r| {
                                let tap = k0 + j + r.min(ncw - j - 1);
                                d.padded[img * img_stride + d.offsets[tap] as usize..].as_ptr()
                            });
                            let a = left[i * lda + img * lq..].as_ptr();
                            runs.push(DotRun { a, b, len: lq });
                        }
                        // SAFETY: rows i..i + DR of `left` (m_pad rows) hold lq values from
                        // each image's start; a tap's run ends inside the padded input (see
                        // `Direct::padded`); AVX-512 is present (`Direct` exists).
                        unsafe {
                            dot_runs(&runs, lda, &mut partials[it * j_tiles + jt], img0 == 0)
                        };
                    }
                }
            }
            for it in 0..i_tiles {
                for jt in 0..j_tiles {
                    let (i, j) = (r0 + it * DR, jt * DC);
                    // SAFETY: this task alone owns columns [k0, k0 + ncw) of rows
                    // [r0, rows_end) of dW; the tile lies inside them.
                    unsafe {
                        add_partials(
                            &partials[it * j_tiles + jt],
                            dw_out.get().add(i * k + k0 + j),
                            k,
                            DR.min(rows_end - i),
                            DC.min(ncw - j),
                        )
                    };
                }
            }
        });
        Some(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (s, x, dy, dw);
        None
    }
}

/// A (rows × len) matrix whose rows r < `filled` are written by `fill(r, row)` and the others
/// are zero, in parallel over rows, starting on a 64-byte boundary (so that rows a multiple of
/// 16 values long give the tile aligned vector loads, none split across two cache lines).
/// Built without zeroing the buffer first: these are copies of dy made at every weight gradient.
///
/// # Safety
/// `fill` must write every value of the row it is given.
unsafe fn rows_written<T: Real>(
    rows: usize,
    len: usize,
    filled: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> AlignedRows<T> {
    let size = std::mem::size_of::<T>();
    let mut buf: Vec<T> = Vec::with_capacity(rows * len + 64 / size);
    let start = (64 - buf.as_ptr() as usize % 64) % 64 / size;
    let (before, matrix) = buf.spare_capacity_mut().split_at_mut(start);
    zero(before);
    matrix[..rows * len]
        .par_chunks_mut(len.max(1))
        .enumerate()
        .for_each(|(r, row)| if r < filled { fill(r, row) } else { zero(row) });
    // SAFETY: the values before `start` are zeros; every row was written, by `fill` (the
    // caller's promise) or with zeros.
    unsafe { buf.set_len(start + rows * len) };
    AlignedRows { buf, start }
}

/// [`rows_written`]'s matrix: the values of `buf` from `start`.
struct AlignedRows<T> {
    buf: Vec<T>,
    start: usize,
}

impl<T> std::ops::Deref for AlignedRows<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..]
    }
}

/// Writes `src` into `dst` (same length).
fn write<T: Real>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// Writes zeros into `dst`.
fn zero<T: Real>(dst: &mut [MaybeUninit<T>]) {
    dst.fill(MaybeUninit::new(T::zero()));
}

/// A contiguous row: offset `at` is element `at`.
struct Row<'r, T>(&'r mut [T]);

impl<T: Real> Sink<T> for Row<'_, T> {
    #[inline(always)]
    fn put(&mut self, at: usize, piece: Piece<'_, T>) {
        put(&mut self.0[at..at + piece.len()], &piece, 0);
    }
}

multiversion! {
    /// The weight gradient's right operand: rows k0..k0 + ncw of col over positions
    /// q0..q0 + real, `qb` apart in `b`; padding (rows up to a multiple of DC, columns up to qb)
    /// zero.
    fn gather_rows<T: Real>(
        s: &Conv2dShape,
        x: &[T],
        table: Option<&TapTable>,
        k0: usize,
        ncw: usize,
        q0: usize,
        qb: usize,
        real: usize,
        b: &mut [T],
    ) {
        for kk in 0..ncw.next_multiple_of(DC) {
            let row = &mut b[kk * qb..(kk + 1) * qb];
            if kk < ncw {
                match table {
                    // SAFETY: the table exists only for f32 and this geometry; q0 (a multiple
                    // of QB) and real (to the batch's end) are whole vectors; row holds qb ≥
                    // real values.
                    Some(t) => unsafe {
                        t.gather(x, k0 + kk, q0, real / 16, |v| row[16 * v..].as_mut_ptr())
                    },
                    None => gather_tap(s, x, k0 + kk, q0, real, &mut Row(&mut *row)),
                }
                row[real..].fill(T::zero());
            } else {
                row.fill(T::zero());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        conv2d_backward, conv2d_backward_im2col, conv2d_forward, conv2d_forward_im2col, Padding,
    };
    use super::*;
    use crate::rng::Philox;
    use crate::shape::Nchw;

    /// Geometries that exercise every edge: ragged tiles in M and N, positions of one block
    /// spanning images, strides, asymmetric padding, 1×1, a kernel wider than tall, a
    /// reduction longer than one KC block, and rows 16 and 32 wide (the in-place tile).
    fn shapes() -> Vec<Conv2dShape> {
        let g = |n, c, h, w, co, k: (usize, usize), st: (usize, usize), pad| {
            Conv2dShape::new(Nchw::new(n, c, h, w), co, k, st, pad).unwrap()
        };
        vec![
            g(2, 3, 7, 5, 5, (3, 3), (1, 1), Padding::same(1)),
            g(3, 24, 8, 8, 16, (3, 3), (1, 1), Padding::same(1)),
            g(1, 9, 12, 12, 3, (3, 3), (1, 1), Padding::same(1)),
            g(2, 5, 9, 6, 11, (3, 3), (2, 2), Padding::bottom_right(1)),
            g(2, 4, 6, 6, 7, (3, 3), (2, 2), Padding::same(1)),
            g(3, 13, 5, 4, 9, (1, 1), (1, 1), Padding::default()),
            g(
                2,
                3,
                6,
                7,
                4,
                (1, 3),
                (1, 1),
                Padding {
                    top: 0,
                    bottom: 0,
                    left: 2,
                    right: 0,
                },
            ),
            g(1, 40, 4, 4, 17, (3, 3), (1, 1), Padding::same(1)),
            // Whole vectors of positions per image with narrow rows or a stride: the vector
            // gatherer (f32 on AVX-512) — a permute of one-vector planes, hardware gathers of
            // larger ones, more than one weight-gradient block of positions, and rows of 8
            // with more channels than the in-place weight gradient takes.
            g(70, 3, 4, 4, 5, (3, 3), (1, 1), Padding::same(1)),
            g(2, 6, 8, 8, 5, (3, 3), (2, 2), Padding::bottom_right(1)),
            g(2, 3, 16, 16, 4, (3, 3), (2, 2), Padding::same(1)),
            g(1, 6, 4, 8, 70, (3, 3), (1, 1), Padding::same(1)),
            // Rows a whole number of vectors wide: the in-place tile (f32 on AVX-512).
            g(2, 5, 16, 16, 7, (3, 3), (1, 1), Padding::same(1)),
            g(1, 3, 5, 32, 10, (3, 3), (1, 1), Padding::same(1)),
            g(3, 20, 4, 16, 9, (1, 1), (1, 1), Padding::default()),
            g(1, 70, 3, 16, 12, (3, 3), (1, 1), Padding::same(1)),
            // Rows of 33 and 40: the in-place weight gradient with rows not a multiple of 16.
            g(2, 4, 3, 40, 6, (3, 3), (1, 1), Padding::same(1)),
            g(3, 6, 2, 33, 5, (3, 3), (1, 1), Padding::same(1)),
            // Stride 1 with asymmetric padding on the in-place paths, one output channel, and a
            // kernel wider than a vector.
            g(
                2,
                3,
                9,
                20,
                4,
                (3, 3),
                (1, 1),
                Padding {
                    top: 0,
                    bottom: 2,
                    left: 2,
                    right: 0,
                },
            ),
            g(2, 7, 8, 8, 1, (3, 3), (1, 1), Padding::same(1)),
            g(
                1,
                2,
                3,
                40,
                3,
                (1, 17),
                (1, 1),
                Padding {
                    top: 0,
                    bottom: 0,
                    left: 8,
                    right: 8,
                },
            ),
        ]
    }

    fn data<T: Real>(n: usize, seed: u64) -> Vec<T> {
        Philox::new(seed).normal_vec(n, 1.0)
    }

    fn close<T: Real>(what: &str, got: &[T], want: &[T], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            let (a, b) = (a.as_f64(), b.as_f64());
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// The packed forward and both gradients against the im2col reference.
    fn matches_reference<T: Real>(tol: f64) {
        for (n, s) in shapes().iter().enumerate() {
            let seed = 10 * n as u64;
            let x = data::<T>(s.input.len(), seed);
            let w = data::<T>(s.weight_len(), seed + 1);
            let b = data::<T>(s.c_out, seed + 2);
            let dy = data::<T>(s.output().len(), seed + 3);
            let what = |part: &str| format!("{} {s:?}: {part}", T::NAME);

            let (mut y, mut y_ref) = (vec![T::zero(); dy.len()], vec![T::zero(); dy.len()]);
            conv2d_forward(s, &x, &w, Some(&b), &mut y);
            conv2d_forward_im2col(s, &x, &w, Some(&b), &mut y_ref);
            close(&what("y"), &y, &y_ref, tol);

            // dw and db accumulate onto what is there.
            let start = data::<T>(w.len(), seed + 4);
            let (mut dx, mut dw, mut db) = (vec![T::zero(); x.len()], start.clone(), b.clone());
            let (mut dx_ref, mut dw_ref, mut db_ref) = (vec![T::zero(); x.len()], start, b.clone());
            conv2d_backward(s, &x, &w, &dy, Some(&mut dx), &mut dw, Some(&mut db));
            conv2d_backward_im2col(
                s,
                &x,
                &w,
                &dy,
                Some(&mut dx_ref),
                &mut dw_ref,
                Some(&mut db_ref),
            );
            close(&what("dx"), &dx, &dx_ref, tol);
            close(&what("dw"), &dw, &dw_ref, tol);
            close(&what("db"), &db, &db_ref, tol);
        }
    }

    #[test]
    fn packed_convolution_matches_im2col_in_f64() {
        matches_reference::<f64>(1e-12);
    }

    #[test]
    fn packed_convolution_matches_im2col_in_f32() {
        matches_reference::<f32>(1e-4);
    }

    #[test]
    fn the_mirrored_geometry_is_refused_where_it_does_not_exist() {
        let strided =
            Conv2dShape::new(Nchw::new(1, 2, 8, 8), 2, (3, 3), (2, 2), Padding::same(1)).unwrap();
        assert!(mirrored_shape(&strided).is_none());
        let wide_pad =
            Conv2dShape::new(Nchw::new(1, 2, 8, 8), 2, (1, 1), (1, 1), Padding::same(1)).unwrap();
        assert!(mirrored_shape(&wide_pad).is_none());
        let same =
            Conv2dShape::new(Nchw::new(1, 2, 8, 8), 2, (3, 3), (1, 1), Padding::same(1)).unwrap();
        assert_eq!(mirrored_shape(&same).unwrap().output(), same.input);
    }
}
