//! Multi-head scaled dot-product attention (Vaswani et al., 2017, eq. 1) over token sequences.
//!
//! q, k, v, out: (B, L, C) with C = heads · d; head h owns channels [h·d, (h+1)·d), as in the
//! diffusers attention block. For spatial self-attention, L = H·W and the tokens come from
//! [`super::layout::nchw_to_tokens`]. Per image and head:
//!   S = Q Kᵀ / √d,  P = softmax_rows(S),  O = P V
//! Saved for backward: the probabilities P, (B, heads, L, L).

use rayon::prelude::*;

use super::matmul::{gemm, MatMut, MatRef, Threads};
use crate::float::Real;
use crate::shape::{expect_len, ShapeError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    /// Tokens per sequence (H·W for spatial attention).
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// `channels` split into `heads` heads of equal width.
    pub fn new(
        batch: usize,
        len: usize,
        channels: usize,
        heads: usize,
    ) -> Result<Self, ShapeError> {
        if heads == 0 || channels == 0 || !channels.is_multiple_of(heads) {
            return Err(ShapeError::new(
                "attention",
                format!("{channels} channels cannot be split into {heads} heads of equal width"),
            ));
        }
        Ok(Self {
            batch,
            len,
            heads,
            head_dim: channels / heads,
        })
    }

    pub fn channels(&self) -> usize {
        self.heads * self.head_dim
    }

    /// (B, L, C)
    pub fn tokens_len(&self) -> usize {
        self.batch * self.len * self.channels()
    }

    /// (B, heads, L, L)
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.len * self.len
    }

    fn scale<T: Real>(&self) -> T {
        T::lit(1.0 / (self.head_dim as f64).sqrt())
    }

    /// Head h of one item's (L, C) token matrix, as an (L, d) view.
    fn head<'a, T>(&self, item: &'a [T], h: usize) -> MatRef<'a, T> {
        MatRef::strided(
            &item[h * self.head_dim..],
            self.len,
            self.head_dim,
            self.channels(),
            1,
        )
    }

    fn head_mut<'a, T>(&self, item: &'a mut [T], h: usize) -> MatMut<'a, T> {
        MatMut::strided(
            &mut item[h * self.head_dim..],
            self.len,
            self.head_dim,
            self.channels(),
            1,
        )
    }

    fn check(&self, op: &str, bufs: &[(&str, usize)]) {
        let shape = format!("({}, {}, {})", self.batch, self.len, self.channels());
        for &(name, len) in bufs {
            expect_len(op, name, len, self.tokens_len(), &shape);
        }
    }
}

/// Numerically safe softmax of each row of a row-major (rows, len) buffer, in place.
pub fn softmax_rows<T: Real>(m: &mut [T], len: usize) {
    if len == 0 {
        return;
    }
    for row in m.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(T::neg_infinity(), T::max);
        let mut sum = T::zero();
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = T::one() / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// out = softmax(Q Kᵀ / √d) V per head; writes `probs` for the backward.
pub fn attention_forward<T: Real>(
    s: &AttentionShape,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &mut [T],
    probs: &mut [T],
) {
    s.check(
        "attention_forward",
        &[
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
            ("out", out.len()),
        ],
    );
    expect_len(
        "attention_forward",
        "probs",
        probs.len(),
        s.probs_len(),
        format!("({}, {}, {}, {})", s.batch, s.heads, s.len, s.len),
    );
    let (item, l) = (s.len * s.channels(), s.len);
    if s.tokens_len() == 0 {
        return;
    }
    out.par_chunks_mut(item)
        .zip(probs.par_chunks_mut(s.heads * l * l))
        .enumerate()
        .for_each(|(b, (out_b, probs_b))| {
            let (q_b, k_b, v_b) = (
                &q[b * item..(b + 1) * item],
                &k[b * item..(b + 1) * item],
                &v[b * item..(b + 1) * item],
            );
            for (h, p) in probs_b.chunks_exact_mut(l * l).enumerate() {
                // S = Q_h K_hᵀ / √d   (L, d) · (d, L)
                gemm(
                    MatMut::rows(p, l, l),
                    s.head(q_b, h),
                    s.head(k_b, h).t(),
                    s.scale(),
                    false,
                    Threads::Serial,
                );
                softmax_rows(p, l);
                // O_h = P V_h   (L, L) · (L, d)
                gemm(
                    s.head_mut(out_b, h),
                    MatRef::rows(p, l, l),
                    s.head(v_b, h),
                    T::one(),
                    false,
                    Threads::Serial,
                );
            }
        });
}

/// Backward of [`attention_forward`]; dq, dk, dv are written.
///   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),  dQ = dS K / √d,  dK = dSᵀ Q / √d
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    s: &AttentionShape,
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    dout: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    s.check(
        "attention_backward",
        &[
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
            ("dout", dout.len()),
            ("dq", dq.len()),
            ("dk", dk.len()),
            ("dv", dv.len()),
        ],
    );
    expect_len(
        "attention_backward",
        "probs",
        probs.len(),
        s.probs_len(),
        format!("({}, {}, {}, {})", s.batch, s.heads, s.len, s.len),
    );
    let (item, l) = (s.len * s.channels(), s.len);
    if s.tokens_len() == 0 {
        return;
    }
    dq.par_chunks_mut(item)
        .zip(dk.par_chunks_mut(item))
        .zip(dv.par_chunks_mut(item))
        .enumerate()
        .for_each_init(
            || vec![T::zero(); l * l],
            |ds, (b, ((dq_b, dk_b), dv_b))| {
                let span = b * item..(b + 1) * item;
                let (q_b, k_b, v_b, do_b) = (
                    &q[span.clone()],
                    &k[span.clone()],
                    &v[span.clone()],
                    &dout[span],
                );
                let probs_b = &probs[b * s.heads * l * l..(b + 1) * s.heads * l * l];
                for (h, p) in probs_b.chunks_exact(l * l).enumerate() {
                    let p_mat = MatRef::rows(p, l, l);
                    // dV_h = Pᵀ dO_h
                    gemm(
                        s.head_mut(dv_b, h),
                        p_mat.t(),
                        s.head(do_b, h),
                        T::one(),
                        false,
                        Threads::Serial,
                    );
                    // dP = dO_h V_hᵀ, then the softmax backward in place: dS = P ⊙ (dP − rowsum(P ⊙ dP))
                    gemm(
                        MatMut::rows(ds, l, l),
                        s.head(do_b, h),
                        s.head(v_b, h).t(),
                        T::one(),
                        false,
                        Threads::Serial,
                    );
                    for (ds_row, p_row) in ds.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
                        let dot: T = ds_row.iter().zip(p_row).map(|(&g, &pv)| g * pv).sum();
                        for (g, &pv) in ds_row.iter_mut().zip(p_row) {
                            *g = pv * (*g - dot);
                        }
                    }
                    let ds_mat = MatRef::rows(ds.as_slice(), l, l);
                    // dQ_h = dS K_h / √d,  dK_h = dSᵀ Q_h / √d
                    gemm(
                        s.head_mut(dq_b, h),
                        ds_mat,
                        s.head(k_b, h),
                        s.scale(),
                        false,
                        Threads::Serial,
                    );
                    gemm(
                        s.head_mut(dk_b, h),
                        ds_mat.t(),
                        s.head(q_b, h),
                        s.scale(),
                        false,
                        Threads::Serial,
                    );
                }
            },
        );
}
