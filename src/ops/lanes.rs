//! Element-wise loops compiled for the vector ISA of a GEMM kernel (the callers pass
//! [`Kernel::selected`], or the plan's kernel: AVX-512, AVX2 or the portable build).
//!
//! The crate is built for baseline x86-64, where a loop such as ReLU's vectorises to
//! four-float SSE: ReLU forward and backward took 5% of `train_mnist`'s profile at
//! that width. Each function here has one generic body, `#[inline(always)]`, and
//! copies of it compiled under `#[target_feature]`, chosen at run time; the closure
//! the caller passes is inlined into each copy and vectorised at that copy's width.
//!
//! The results do not depend on the copy: every element is computed on its own, and
//! the one reduction ([`sum_f64`]) keeps its 32 partial sums in the same order on
//! every ISA (the vector width changes how many are added at once, not which).

use crate::gemm::Kernel;

/// Defines `$name` and its two `#[target_feature]` copies around one generic body.
macro_rules! multiversion {
    (
        $(#[$doc:meta])*
        fn $name:ident<$($g:ident: $bound:path),*>($($arg:ident: $ty:ty),*) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$doc])*
        ///
        /// Runs the copy compiled for `kernel`'s ISA when this CPU has it, else the
        /// portable one.
        pub(crate) fn $name<$($g: $bound),*>(kernel: Kernel, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$($g: $bound),*>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<$($g: $bound),*>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$($g: $bound),*>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if kernel.is_supported() {
                match kernel {
                    // SAFETY: the CPU has the kernel's features (checked), and each
                    // copy enables only those.
                    Kernel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Kernel::Avx2 => return unsafe { avx2($($arg),*) },
                    Kernel::Fallback => {}
                }
            }
            body($($arg),*)
        }
    };
}

multiversion! {
    /// `acc[j] += rows[i * acc.len() + j]` in f64, for every whole row `i` in order: the
    /// column sums of a row-major block (a channels-last tensor's per-channel sums).
    /// Eight columns at a time down all the rows, their sums in registers (row by row,
    /// each row's loads and stores of `acc` made it 3% of `train_mnist`'s profile); each
    /// sum still adds the rows in order.
    fn add_columns_f64<>(acc: &mut [f64], rows: &[f32]) {
        let w = acc.len();
        if w == 0 {
            return;
        }
        let n = rows.len() / w;
        let rows = &rows[..n * w];
        let mut j0 = 0;
        while j0 + 8 <= w {
            let mut a: [f64; 8] = acc[j0..j0 + 8].try_into().expect("8 sums");
            for row in rows.chunks_exact(w) {
                let v: &[f32; 8] = row[j0..j0 + 8].try_into().expect("8 floats");
                for (s, &x) in a.iter_mut().zip(v) {
                    *s += f64::from(x);
                }
            }
            acc[j0..j0 + 8].copy_from_slice(&a);
            j0 += 8;
        }
        for (j, s) in acc.iter_mut().enumerate().skip(j0) {
            for row in rows.chunks_exact(w) {
                *s += f64::from(row[j]);
            }
        }
    }
}

multiversion! {
    /// `s[i] = f(s[i])` for every element.
    fn update<F: Fn(f32) -> f32>(s: &mut [f32], f: &F) {
        for v in s.iter_mut() {
            *v = f(*v);
        }
    }
}

multiversion! {
    /// `g[i] = f(x[i], g[i])` for every element; the slices have the same length.
    fn update_with<F: Fn(f32, f32) -> f32>(g: &mut [f32], x: &[f32], f: &F) {
        for (g, &v) in g.iter_mut().zip(x) {
            *g = f(v, *g);
        }
    }
}

multiversion! {
    /// `out[i] = f(x[i])` for every element; the slices have the same length.
    fn map<F: Fn(f32) -> f32>(out: &mut [f32], x: &[f32], f: &F) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f(v);
        }
    }
}

multiversion! {
    /// `sum(v)` in f64 over 32 interleaved partial sums, which vectorise into
    /// independent vector sums (one running sum waits on each add's latency: it took 3%
    /// of a training step of the notebook net; one vector of eight still waited 4 cycles
    /// per 8 floats, 2% of `train_mnist`'s step). The partial sums and the order they
    /// are combined in are fixed, so the bits are the same on every ISA.
    fn sum_f64<>(v: &[f32]) -> f64 {
        let mut acc = [0.0f64; 32];
        let mut wide = v.chunks_exact(32);
        for c in &mut wide {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += f64::from(x);
            }
        }
        // Short rows (the small layers' 16 or 49 positions) in eights, then one by one.
        let mut narrow = wide.remainder().chunks_exact(8);
        for c in &mut narrow {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += f64::from(x);
            }
        }
        let tail: f64 = narrow.remainder().iter().map(|&x| f64::from(x)).sum();
        let mut lanes = [0.0f64; 8];
        for (i, l) in lanes.iter_mut().enumerate() {
            *l = (acc[i] + acc[i + 8]) + (acc[i + 16] + acc[i + 24]);
        }
        lanes.iter().sum::<f64>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ISA's copy gives the portable copy's bits, NaN and signed zeros included,
    /// on lengths around the vector widths.
    #[test]
    fn every_copy_matches_the_portable_one() {
        let relu = |v: f32| if v <= 0.0 { 0.0 } else { v };
        let grad = |v: f32, g: f32| if v <= 0.0 { 0.0 } else { g };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 33, 100, 1000] {
            let x: Vec<f32> = (0..len)
                .map(|i| match i % 7 {
                    0 => f32::NAN,
                    1 => -0.0,
                    _ => ((i * 7919) % 211) as f32 / 50.0 - 2.0,
                })
                .collect();
            let g: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - 3.0).collect();
            let mut want_map = vec![0.0; len];
            map(Kernel::Fallback, &mut want_map, &x, &relu);
            let mut want_with = g.clone();
            update_with(Kernel::Fallback, &mut want_with, &x, &grad);
            let want_sum = sum_f64(Kernel::Fallback, &g);
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut m = vec![1.0; len];
                map(kernel, &mut m, &x, &relu);
                assert_eq!(bits(&m), bits(&want_map), "map {kernel:?} {len}");
                let mut u = x.clone();
                update(kernel, &mut u, &relu);
                assert_eq!(bits(&u), bits(&want_map), "update {kernel:?} {len}");
                let mut w = g.clone();
                update_with(kernel, &mut w, &x, &grad);
                assert_eq!(bits(&w), bits(&want_with), "update_with {kernel:?} {len}");
                let sum = sum_f64(kernel, &g);
                assert_eq!(sum.to_bits(), want_sum.to_bits(), "sum {kernel:?} {len}");
            }
        }
    }

    /// Column sums against a plain loop adding the rows in order, for widths below, at
    /// and past eight columns, on every ISA's copy: the same bits.
    #[test]
    fn add_columns_adds_the_rows_in_order() {
        for w in [1, 3, 8, 10, 16, 17, 64] {
            let rows: Vec<f32> = (0..w * 37)
                .map(|i| ((i * 7919) % 1013) as f32 / 7.0 - 70.0)
                .collect();
            let start: Vec<f64> = (0..w).map(|j| j as f64 * 0.1).collect();
            let mut want = start.clone();
            for row in rows.chunks_exact(w) {
                for (a, &v) in want.iter_mut().zip(row) {
                    *a += f64::from(v);
                }
            }
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
                let mut got = start.clone();
                add_columns_f64(kernel, &mut got, &rows);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{kernel:?} width {w}");
            }
        }
    }
}
