//! Fully connected layer, PyTorch weight layout: y = x · Wᵀ + b.
//! Saved for backward: the input x.

use rayon::prelude::*;

use super::matmul::{gemm, MatMut, MatRef, Threads};
use crate::float::Real;
use crate::shape::expect_len;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of x (batch items, or tokens).
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl LinearShape {
    pub const fn new(rows: usize, d_in: usize, d_out: usize) -> Self {
        Self { rows, d_in, d_out }
    }

    fn check(&self, op: &str, x: usize, w: usize, y: usize) {
        expect_len(
            op,
            "x",
            x,
            self.rows * self.d_in,
            format!("({}, {})", self.rows, self.d_in),
        );
        expect_len(
            op,
            "weight",
            w,
            self.d_out * self.d_in,
            format!("({}, {})", self.d_out, self.d_in),
        );
        expect_len(
            op,
            "y",
            y,
            self.rows * self.d_out,
            format!("({}, {})", self.rows, self.d_out),
        );
    }
}

/// x: (N, d_in), W: (d_out, d_in), b: (d_out), y: (N, d_out).
pub fn linear_forward<T: Real>(s: &LinearShape, x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T]) {
    s.check("linear_forward", x.len(), w.len(), y.len());
    let w_t = MatRef::rows(w, s.d_out, s.d_in).t();
    gemm(
        MatMut::rows(y, s.rows, s.d_out),
        MatRef::rows(x, s.rows, s.d_in),
        w_t,
        T::one(),
        false,
        Threads::Pool,
    );
    if let Some(b) = b {
        expect_len(
            "linear_forward",
            "bias",
            b.len(),
            s.d_out,
            format!("({})", s.d_out),
        );
        y.par_chunks_mut(s.d_out.max(1)).for_each(|row| {
            row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
        });
    }
}

/// Backward of [`linear_forward`]: dx = dy · W is written; dW += dyᵀ · x and db += Σ_rows dy
/// accumulate.
pub fn linear_backward<T: Real>(
    s: &LinearShape,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    s.check("linear_backward", x.len(), w.len(), dy.len());
    expect_len("linear_backward", "dw", dw.len(), w.len(), "weight");
    let dy_mat = MatRef::rows(dy, s.rows, s.d_out);
    if let Some(dx) = dx {
        expect_len("linear_backward", "dx", dx.len(), x.len(), "x");
        gemm(
            MatMut::rows(dx, s.rows, s.d_in),
            dy_mat,
            MatRef::rows(w, s.d_out, s.d_in),
            T::one(),
            false,
            Threads::Pool,
        );
    }
    gemm(
        MatMut::rows(dw, s.d_out, s.d_in),
        dy_mat.t(),
        MatRef::rows(x, s.rows, s.d_in),
        T::one(),
        true,
        Threads::Pool,
    );
    if let Some(db) = db {
        expect_len(
            "linear_backward",
            "db",
            db.len(),
            s.d_out,
            format!("({})", s.d_out),
        );
        db.par_iter_mut().enumerate().for_each(|(j, d)| {
            *d += (0..s.rows).map(|r| dy[r * s.d_out + j]).sum::<T>();
        });
    }
}
