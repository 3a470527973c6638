//! Strided matrix views and the one GEMM entry point of the CPU backend (the `gemm` crate).
//!
//! Convolution, linear layers and attention all reduce to `C (+)= alpha · A · B` on row-major
//! buffers or transposed/strided views of them; expressing the transpose as strides avoids copies.

use crate::float::Real;

/// A read-only `rows × cols` matrix view: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A writable `rows × cols` matrix view with the same addressing as [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a, T> MatRef<'a, T> {
    /// A contiguous row-major matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    pub fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(
            span(rows, cols, rs, cs) <= data.len(),
            "matmul: {rows}x{cols} view with strides ({rs}, {cs}) needs {} elements, buffer has {}",
            span(rows, cols, rs, cs),
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The transpose, as a view of the same memory.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl<'a, T> MatMut<'a, T> {
    pub fn rows(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    pub fn strided(data: &'a mut [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(
            span(rows, cols, rs, cs) <= data.len(),
            "matmul: {rows}x{cols} output view with strides ({rs}, {cs}) needs {} elements, buffer has {}",
            span(rows, cols, rs, cs),
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
}

/// How the GEMM may use threads. Callers that already run one GEMM per rayon task pass `Serial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    Serial,
    /// All threads of the current rayon pool.
    Pool,
}

/// `C = alpha · A · B`, or `C += alpha · A · B` when `accumulate`.
///
/// The `gemm` crate splits work over output blocks only, never over the reduction dimension, so
/// the result is bitwise the same for any thread count.
pub fn gemm<T: Real>(
    c: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    accumulate: bool,
    threads: Threads,
) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "matmul: shapes do not chain: C {m}x{n} = A {}x{} · B {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for col in 0..n {
                    c.data[r * c.rs + col * c.cs] = T::zero();
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::Serial => gemm::Parallelism::None,
        Threads::Pool => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: every view was bounds-checked against its slice when it was built, the output is
    // borrowed mutably (so it cannot alias an input), and `T` is f32 or f64, both supported.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            c.cs as isize,
            c.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    fn naive(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_including_transposed_views() {
        let (m, n, k) = (7, 5, 11);
        let mut rng = Philox::new(3);
        let a: Vec<f64> = rng.normal_vec(m * k, 1.0);
        let b: Vec<f64> = rng.normal_vec(k * n, 1.0);
        let want = naive(&a, &b, m, n, k);

        let mut c = vec![0.0; m * n];
        gemm(
            MatMut::rows(&mut c, m, n),
            MatRef::rows(&a, m, k),
            MatRef::rows(&b, k, n),
            1.0,
            false,
            Threads::Pool,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }

        // Same product from transposed storage: A stored as (k, m), B stored as (n, k).
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c2 = vec![1.0; m * n];
        gemm(
            MatMut::rows(&mut c2, m, n),
            MatRef::rows(&at, k, m).t(),
            MatRef::rows(&bt, n, k).t(),
            2.0,
            true,
            Threads::Serial,
        );
        for (x, y) in c2.iter().zip(&want) {
            assert!((x - (1.0 + 2.0 * y)).abs() < 1e-12);
        }
    }

    #[test]
    #[should_panic(expected = "needs 12 elements")]
    fn rejects_a_view_larger_than_its_buffer() {
        let data = [0.0f32; 11];
        let _ = MatRef::rows(&data, 3, 4);
    }
}
