//! The elementwise update every sampler step is made of, on the CPU (this file) and on the GPU
//! (`kernels/diffusion.cu`, the same arithmetic in the same order).
//!
//! ```text
//! o      = out                       (or, guided: o_u + g·(o_c − o_u), Ho & Salimans 2022 eq. 6)
//! raw    = x0_x·xₜ + x0_out·o        x̂₀ from the model output (DDPM eq. 15 for ε)
//! x̂₀     = clamp(raw, −clip, clip)   clip = +∞ when off
//! x_new  = c_x0·x̂₀ + c_x0_raw·raw + c_xt·xₜ + c_out·o + c_h·h + σ·z
//! h_new  = d_x0·x̂₀ + d_xt·xₜ + d_h·h
//! ```
//!
//! `h` is one history buffer per image: the previous x̂₀ of DPM-Solver++(2M), or Heun's partial
//! sum. Every sampler in [`super`] is a sequence of model evaluations, each followed by this
//! update with its own coefficients; all of them are computed per step in f64 and rounded to
//! f32 once.

use rayon::prelude::*;

use crate::shape::expect_len;

/// Per-evaluation coefficients of [`step_element`], rounded to f32 from f64. Field for field
/// the struct the CUDA step kernel takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepCoeffs {
    /// raw x̂₀ = x0_x·xₜ + x0_out·o.
    pub x0_x: f32,
    pub x0_out: f32,
    /// Bound of |x̂₀|; +∞ when clipping is off.
    pub clip: f32,
    /// Weight of the clipped x̂₀ in x_new.
    pub c_x0: f32,
    /// Weight of the unclipped x̂₀ in x_new (DDIM with ε̂ from the unclipped x̂₀).
    pub c_x0_raw: f32,
    /// Weight of xₜ in x_new.
    pub c_xt: f32,
    /// Weight of the model output itself in x_new (DDIM inversion, where x̂₀ may not carry ε̂).
    pub c_out: f32,
    /// Weight of the history h in x_new.
    pub c_h: f32,
    /// Standard deviation of the added noise; 0 = draw none.
    pub sigma: f32,
    /// h_new = d_x0·x̂₀ + d_xt·xₜ + d_h·h; all three 0 leaves h alone (and it may be absent).
    pub d_x0: f32,
    pub d_xt: f32,
    pub d_h: f32,
    /// Classifier-free guidance scale g, used when an unconditional output is given.
    pub guidance: f32,
}

impl StepCoeffs {
    /// All zero except `clip` = +∞ and `guidance` = 1: x_new = 0. Constructors fill in the rest.
    pub fn zero() -> Self {
        Self {
            clip: f32::INFINITY,
            guidance: 1.0,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    /// Whether the update writes the history buffer.
    pub fn writes_history(&self) -> bool {
        self.d_x0 != 0.0 || self.d_xt != 0.0 || self.d_h != 0.0
    }

    /// Whether the update reads the history buffer.
    pub fn reads_history(&self) -> bool {
        self.c_h != 0.0 || self.d_h != 0.0
    }
}

/// The guided model output o_u + g·(o_c − o_u) (Ho & Salimans 2022, eq. 6 with w = g − 1).
#[inline]
pub fn guide(c: &StepCoeffs, cond: f32, uncond: f32) -> f32 {
    uncond + c.guidance * (cond - uncond)
}

/// One element of an update: (x_new, clipped x̂₀, h_new). `o` is the (guided) model output;
/// `z` is ignored when σ = 0, `h` when the coefficients do not read it.
#[inline]
pub fn step_element_full(c: &StepCoeffs, x_t: f32, o: f32, h: f32, z: f32) -> (f32, f32, f32) {
    let raw = c.x0_x * x_t + c.x0_out * o;
    let x0 = raw.clamp(-c.clip, c.clip);
    let mut mean = c.c_x0 * x0 + c.c_x0_raw * raw + c.c_xt * x_t;
    // Skipped when 0 so that a non-finite o or h cannot reach samplers that do not use them.
    if c.c_out != 0.0 {
        mean += c.c_out * o;
    }
    if c.c_h != 0.0 {
        mean += c.c_h * h;
    }
    let x_new = if c.sigma > 0.0 {
        mean + c.sigma * z
    } else {
        mean
    };
    let mut h_new = c.d_x0 * x0 + c.d_xt * x_t;
    if c.d_h != 0.0 {
        h_new += c.d_h * h;
    }
    (x_new, x0, h_new)
}

/// One element of a step without history: (x_new, clipped x̂₀).
#[inline]
pub fn step_element(c: &StepCoeffs, x_t: f32, out: f32, z: f32) -> (f32, f32) {
    let (x, x0, _) = step_element_full(c, x_t, out, 0.0, z);
    (x, x0)
}

/// The buffers of one update over a batch, all (B, C, H, W).
pub struct StepBuffers<'a> {
    pub x_t: &'a [f32],
    /// The model output (conditional, when guided).
    pub out: &'a [f32],
    /// The unconditional output, for classifier-free guidance.
    pub out_uncond: Option<&'a [f32]>,
    /// The history; needed iff the coefficients read or write it.
    pub hist: Option<&'a mut [f32]>,
    /// Standard normal noise; needed iff σ > 0.
    pub z: Option<&'a [f32]>,
    pub x_new: &'a mut [f32],
    pub x0: &'a mut [f32],
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// An update over a batch (see the module docs).
pub fn apply_update(c: &StepCoeffs, b: StepBuffers<'_>) {
    let n = b.x_t.len();
    let shape = format!("({n})");
    let check = |what: &str, len: usize| expect_len("apply_update", what, len, n, &shape);
    check("out", b.out.len());
    check("x_new", b.x_new.len());
    check("x0", b.x0.len());
    if let Some(u) = b.out_uncond {
        check("out_uncond", u.len());
    }
    let z = match (c.sigma > 0.0, b.z) {
        (true, Some(z)) => {
            check("z", z.len());
            Some(z)
        }
        (true, None) => panic!("apply_update: σ = {} > 0 but no noise given", c.sigma),
        (false, _) => None,
    };
    let needs_h = c.reads_history() || c.writes_history();
    let hist = match (needs_h, b.hist) {
        (true, Some(h)) => {
            check("hist", h.len());
            Some(h)
        }
        (true, None) => panic!("apply_update: the coefficients use a history buffer, none given"),
        (false, _) => None,
    };
    let (x_t, out, uncond) = (b.x_t, b.out, b.out_uncond);
    let write_h = c.writes_history();
    let hist_chunks: Vec<Option<&mut [f32]>> = match hist {
        Some(h) => h.chunks_mut(CHUNK).map(Some).collect(),
        None => (0..n.div_ceil(CHUNK)).map(|_| None).collect(),
    };
    b.x_new
        .par_chunks_mut(CHUNK)
        .zip(b.x0.par_chunks_mut(CHUNK))
        .zip(hist_chunks)
        .enumerate()
        .for_each(|(ci, ((xn, x0), mut h))| {
            let base = ci * CHUNK;
            for j in 0..xn.len() {
                let i = base + j;
                let o = match uncond {
                    Some(u) => guide(c, out[i], u[i]),
                    None => out[i],
                };
                let hv = h.as_ref().map_or(0.0, |h| h[j]);
                let zi = z.map_or(0.0, |z| z[i]);
                let (x, x0v, hn) = step_element_full(c, x_t[i], o, hv, zi);
                xn[j] = x;
                x0[j] = x0v;
                if write_h {
                    if let Some(h) = h.as_deref_mut() {
                        h[j] = hn;
                    }
                }
            }
        });
}

/// A step without guidance or history over a batch: writes x_prev and the clipped x̂₀.
/// `z` is needed iff σ > 0.
pub fn apply_step(
    c: &StepCoeffs,
    x_t: &[f32],        // (B, C, H, W)
    out: &[f32],        // (B, C, H, W) model output
    z: Option<&[f32]>,  // (B, C, H, W) standard normal noise
    x_prev: &mut [f32], // (B, C, H, W)
    x0: &mut [f32],     // (B, C, H, W)
) {
    apply_update(
        c,
        StepBuffers {
            x_t,
            out,
            out_uncond: None,
            hist: None,
            z,
            x_new: x_prev,
            x0,
        },
    );
}
