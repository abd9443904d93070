//! A small Householder QR in `f64`, just enough for [`orthogonal`](super::orthogonal).

/// The reduced `Q` of `A = Q R` with each column `j` of `Q` multiplied by
/// `sign(R[j][j])`, which makes the factorisation unique (it is what
/// `torch.linalg.qr` followed by `q *= sign(diag(r))` gives, whatever sign convention the
/// Householder reflections use).
///
/// `a` is `m x n` with `m >= n`, column-major (`a[j * m + i]` is row `i`, column `j`); it is
/// overwritten with `R` in its upper triangle. The result is `m x n`, column-major.
/// A zero diagonal of `R` (a column in the span of the previous ones, which has
/// probability zero for a Gaussian matrix) counts as sign +1, where PyTorch's `sign(0) = 0`
/// would zero that column.
pub(super) fn householder_q_signed(a: &mut [f64], m: usize, n: usize) -> Vec<f64> {
    debug_assert!(m >= n && a.len() == m * n);
    // Householder vectors v_k (unit length, acting on rows k..m); empty when H_k = I.
    let mut vs: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut diag = vec![0.0f64; n];
    for k in 0..n {
        let col = &a[k * m + k..k * m + m];
        let norm = col.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            vs.push(Vec::new());
            continue;
        }
        // alpha = -sign(x0) * |x|, so v0 = x0 - alpha never cancels.
        let alpha = if col[0] >= 0.0 { -norm } else { norm };
        let mut v = col.to_vec();
        v[0] -= alpha;
        let vnorm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= vnorm);
        for j in k..n {
            reflect(&v, &mut a[j * m + k..j * m + m]);
        }
        diag[k] = a[k * m + k];
        vs.push(v);
    }
    // Q = H_0 H_1 ... H_{n-1} [I_n; 0], applied right to left. Column j < k of the partial
    // product is still e_j (H_k.. only touch rows >= k), so H_k only needs columns k..n.
    let mut q = vec![0.0f64; m * n];
    for j in 0..n {
        q[j * m + j] = 1.0;
    }
    for k in (0..n).rev() {
        let v = &vs[k];
        if v.is_empty() {
            continue;
        }
        for j in k..n {
            reflect(v, &mut q[j * m + k..j * m + m]);
        }
    }
    for (j, d) in diag.iter().enumerate() {
        if *d < 0.0 {
            q[j * m..(j + 1) * m].iter_mut().for_each(|x| *x = -*x);
        }
    }
    q
}

/// `x <- (I - 2 v v^T) x` for a unit `v`.
fn reflect(v: &[f64], x: &mut [f64]) {
    let dot: f64 = v.iter().zip(x.iter()).map(|(a, b)| a * b).sum();
    let s = 2.0 * dot;
    x.iter_mut().zip(v).for_each(|(xi, vi)| *xi -= s * vi);
}
