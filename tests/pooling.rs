//! Pooling semantics that random inputs do not reach: PyTorch's tie and NaN rules for
//! max pooling, gradients routed to a shared argmax, the average divisor of windows that
//! `ceil_mode` clips at the far edge, and the layers' saved indices.

use convinit::nn::{AdaptiveMaxPool2d, AvgPool2d, Layer, MaxPool2d};
use convinit::ops::{
    AvgPool2dOptions, MaxPool2dOptions, adaptive_max_pool2d_with_indices, avg_pool2d, max_pool2d,
    max_pool2d_backward, max_pool2d_with_indices,
};
use ndarray::{Array4, array};

fn plane(rows: &[&[f32]]) -> Array4<f32> {
    let (h, w) = (rows.len(), rows[0].len());
    Array4::from_shape_fn((1, 1, h, w), |(_, _, i, j)| rows[i][j])
}

#[test]
fn ties_go_to_the_first_maximum_in_scan_order() {
    // Every window is all ties: the index is the window's first in-bounds element.
    let x = Array4::from_elem((1, 1, 3, 3), 5.0f32);
    let o = MaxPool2dOptions::new((3, 3))
        .with_stride((1, 1))
        .with_padding((1, 1));
    let (y, idx) = max_pool2d_with_indices(x.view(), &o).unwrap();
    assert!(y.iter().all(|&v| v == 5.0));
    let want = array![[0i64, 0, 1], [0, 0, 1], [3, 3, 4]];
    assert_eq!(idx.slice(ndarray::s![0, 0, .., ..]), want);
    // A tie at the window's end does not displace an earlier maximum.
    let x = plane(&[&[1.0, 7.0], &[7.0, 7.0]]);
    let (_, idx) = max_pool2d_with_indices(x.view(), &MaxPool2dOptions::new((2, 2))).unwrap();
    assert_eq!(idx[[0, 0, 0, 0]], 1);
    // All -inf: the value is -inf and the index the window's first element.
    let x = Array4::from_elem((1, 1, 2, 4), f32::NEG_INFINITY);
    let (y, idx) = max_pool2d_with_indices(x.view(), &MaxPool2dOptions::new((2, 2))).unwrap();
    assert_eq!(y[[0, 0, 0, 1]], f32::NEG_INFINITY);
    assert_eq!(idx.iter().copied().collect::<Vec<_>>(), [0, 2]);
}

#[test]
fn nan_wins_and_the_last_nan_is_the_index() {
    // PyTorch's CPU kernel takes a value when `val > max || isnan(val)`: a NaN replaces
    // any maximum, and a later NaN replaces an earlier one.
    let x = plane(&[&[1.0, f32::NAN, 9.0, 2.0], &[3.0, f32::NAN, 4.0, 5.0]]);
    let (y, idx) = max_pool2d_with_indices(x.view(), &MaxPool2dOptions::new((2, 2))).unwrap();
    assert!(y[[0, 0, 0, 0]].is_nan());
    assert_eq!(idx[[0, 0, 0, 0]], 5);
    assert_eq!((y[[0, 0, 0, 1]], idx[[0, 0, 0, 1]]), (9.0, 2));
    // Adaptive max pooling follows the same rule; a later larger value does not win.
    let x = plane(&[&[f32::NAN, 100.0, f32::INFINITY]]);
    let (y, idx) = adaptive_max_pool2d_with_indices(x.view(), (1, 1)).unwrap();
    assert!(y[[0, 0, 0, 0]].is_nan());
    assert_eq!(idx[[0, 0, 0, 0]], 0);
    // The gradient of a NaN window goes to the NaN.
    let dx =
        max_pool2d_backward((1, 1, 1, 3), idx.view(), Array4::ones((1, 1, 1, 1)).view()).unwrap();
    assert_eq!(dx.iter().copied().collect::<Vec<_>>(), [1.0, 0.0, 0.0]);
}

#[test]
fn gradients_of_windows_sharing_a_maximum_add_up() {
    // k3 s1 on 3x4: both windows' maximum is the 9 at (1, 1)... and (1, 2) for the second.
    let x = plane(&[
        &[0.0, 1.0, 2.0, 0.0],
        &[0.0, 9.0, 3.0, 0.0],
        &[0.0, 0.0, 0.0, 0.0],
    ]);
    let mut pool = MaxPool2d::new(MaxPool2dOptions::new((3, 3)).with_stride((1, 1))).unwrap();
    let y = pool.forward(x.view().into_dyn()).unwrap();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), [9.0, 9.0]);
    let idx = pool.indices().unwrap().clone();
    assert_eq!(idx.iter().copied().collect::<Vec<_>>(), [5, 5]);
    let dy = array![[[[0.25f32, 0.5]]]];
    let dx = pool.backward(dy.view().into_dyn()).unwrap();
    assert_eq!(dx[[0, 0, 1, 1]], 0.75);
    assert_eq!(dx.iter().filter(|&&v| v != 0.0).count(), 1);
    // The functional form gives the same.
    let fdx = max_pool2d_backward((1, 1, 3, 4), idx.view(), dy.view()).unwrap();
    assert_eq!(fdx.into_dyn(), dx);
}

#[test]
fn ceil_mode_windows_count_padding_only_up_to_the_padded_end() {
    // 4x4 ones, k3 s2 p1, ceil mode: 3 outputs per axis starting at -1, 1, 3. The last
    // window [3, 6) is clipped by the padded end 4 + 1 = 5 to [3, 5): it counts 2 with
    // padding (1 inside), not 3.
    let x = Array4::<f32>::ones((1, 1, 4, 4));
    let o = AvgPool2dOptions::new((3, 3))
        .with_stride((2, 2))
        .with_padding((1, 1))
        .with_ceil_mode(true);
    let y = avg_pool2d(x.view(), &o).unwrap();
    assert_eq!(y.dim(), (1, 1, 3, 3));
    // Corner (0, 0): 4 of 9 inside; middle (1, 1): 9 of 9; far corner (2, 2): 1 of 2 x 2.
    assert_eq!(y[[0, 0, 0, 0]], 4.0 / 9.0);
    assert_eq!(y[[0, 0, 1, 1]], 1.0);
    assert_eq!(y[[0, 0, 2, 2]], 1.0 / 4.0);
    assert_eq!(y[[0, 0, 0, 2]], 2.0 / 6.0);
    // Without count_include_pad every window averages ones: 1.
    let y = avg_pool2d(x.view(), &o.with_count_include_pad(false)).unwrap();
    assert!(y.iter().all(|&v| v == 1.0), "{y:?}");
    // With no padding, the clipped last window counts only what is inside (3x3, k2 s2
    // ceil: the last window [2, 4) ends at 3 = 3 + 0).
    let x = plane(&[&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], &[7.0, 8.0, 9.0]]);
    let o = AvgPool2dOptions::new((2, 2)).with_ceil_mode(true);
    let y = avg_pool2d(x.view(), &o).unwrap();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), [3.0, 4.5, 7.5, 9.0]);
    // divisor_override replaces every divisor, clipped or not.
    let y = avg_pool2d(x.view(), &o.with_divisor_override(Some(2))).unwrap();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), [6.0, 4.5, 7.5, 4.5]);
}

#[test]
fn ceil_mode_drops_a_window_starting_past_the_left_padded_input() {
    // 7 wide, k2 s2, ceil mode: 4 windows, the last [6, 8) clipped to [6, 7).
    let o = MaxPool2dOptions::new((2, 2)).with_ceil_mode(true);
    assert_eq!(o.output_size((7, 7)), Some((4, 4)));
    // k2 s2 p1, ceil mode: on 5, ceil((5 + 2 - 2) / 2) + 1 = 4 would put the fourth
    // window at 3 * 2 - 1 = 5, past the input: dropped (3 * 2 >= 5 + 1), 3 windows. On 1,
    // the second would start at 1: dropped too. On 4, the third starts at 3: kept.
    let o = o.with_padding((1, 1));
    assert_eq!(o.output_size((1, 5)), Some((1, 3)));
    assert_eq!(o.output_size((4, 4)), Some((3, 3)));
    let x = plane(&[&[1.0, 5.0, 2.0, 4.0, 3.0]]);
    let (y, idx) = max_pool2d_with_indices(x.view(), &o).unwrap();
    // Columns [-1, 1), [1, 3), [3, 5).
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), [1.0, 5.0, 4.0]);
    assert_eq!(idx.iter().copied().collect::<Vec<_>>(), [0, 1, 3]);
}

#[test]
fn layers_keep_what_the_functional_forms_return() {
    let x = Array4::from_shape_fn((2, 3, 7, 6), |(a, b, c, d)| {
        ((a * 31 + b * 17 + c * 7 + d * 3) % 11) as f32 - 5.0
    });
    let o = MaxPool2dOptions::new((3, 2))
        .with_stride((2, 2))
        .with_padding((1, 1));
    let mut pool = MaxPool2d::new(o).unwrap();
    let y = pool.forward(x.view().into_dyn()).unwrap();
    let (fy, fidx) = max_pool2d_with_indices(x.view(), &o).unwrap();
    assert_eq!(y, fy.clone().into_dyn());
    assert_eq!(pool.indices(), Some(&fidx));
    assert_eq!(max_pool2d(x.view(), &o).unwrap(), fy);
    pool.clear_saved();
    assert!(pool.indices().is_none());

    let mut pool = AdaptiveMaxPool2d::new((4, 5)).unwrap();
    pool.forward(x.view().into_dyn()).unwrap();
    let (_, fidx) = adaptive_max_pool2d_with_indices(x.view(), (4, 5)).unwrap();
    assert_eq!(pool.indices(), Some(&fidx));

    let o = AvgPool2dOptions::new((3, 3)).with_padding((1, 1));
    let mut pool = AvgPool2d::new(o).unwrap();
    assert_eq!(pool.name(), "AvgPool2d");
    let y = pool.forward(x.view().into_dyn()).unwrap();
    assert_eq!(y, avg_pool2d(x.view(), &o).unwrap().into_dyn());
}

/// The scan PyTorch's CPU kernel runs, one window at a time: rows then columns, a value
/// replacing the maximum when larger or NaN; the first tap inside the input when none
/// does; index -1 for a window with no tap inside.
fn naive_max_pool(x: &Array4<f32>, o: &MaxPool2dOptions) -> (Array4<f32>, Array4<i64>) {
    let (n, c, h, w) = x.dim();
    let (oh, ow) = o.output_size((h, w)).unwrap();
    let mut y = Array4::from_elem((n, c, oh, ow), f32::NEG_INFINITY);
    let mut idx = Array4::from_elem((n, c, oh, ow), -1i64);
    for ((a, b, i, j), out) in y.indexed_iter_mut() {
        let mut first = None;
        let mut best = (f32::NEG_INFINITY, -1i64);
        for dr in 0..o.kernel.0 {
            for dc in 0..o.kernel.1 {
                let r = (i * o.stride.0 + dr * o.dilation.0) as i64 - o.padding.0 as i64;
                let q = (j * o.stride.1 + dc * o.dilation.1) as i64 - o.padding.1 as i64;
                if r < 0 || q < 0 || r >= h as i64 || q >= w as i64 {
                    continue;
                }
                let at = r * w as i64 + q;
                first.get_or_insert(at);
                let v = x[[a, b, r as usize, q as usize]];
                if v > best.0 || v.is_nan() {
                    best = (v, at);
                }
            }
        }
        if best.1 < 0 {
            best.1 = first.unwrap_or(-1);
        }
        *out = best.0;
        idx[[a, b, i, j]] = best.1;
    }
    (y, idx)
}

#[test]
fn every_window_geometry_matches_a_naive_scan() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(7);
    let mut checked = 0;
    for case in 0..400 {
        let k = (rng.random_range(1..=4), rng.random_range(1..=4));
        let s = (rng.random_range(1..=4), rng.random_range(1..=5));
        let d = (rng.random_range(1..=3), rng.random_range(1..=3));
        let p = (rng.random_range(0..=k.0 / 2), rng.random_range(0..=k.1 / 2));
        let o = MaxPool2dOptions::new(k)
            .with_stride(s)
            .with_padding(p)
            .with_dilation(d)
            .with_ceil_mode(rng.random_bool(0.5));
        let shape = (
            rng.random_range(1..=2),
            rng.random_range(1..=3),
            rng.random_range(1..=11),
            rng.random_range(1..=13),
        );
        if o.output_size((shape.2, shape.3)).is_none() {
            continue;
        }
        // Few distinct values (ties everywhere), some NaN and -inf.
        let x = Array4::from_shape_simple_fn(shape, || match rng.random_range(0..20) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            v => (v % 4) as f32,
        });
        let (want_y, want_i) = naive_max_pool(&x, &o);
        let (y, idx) = max_pool2d_with_indices(x.view(), &o).unwrap();
        let same = |a: &f32, b: &f32| a == b || (a.is_nan() && b.is_nan());
        assert!(
            y.iter().zip(&want_y).all(|(a, b)| same(a, b)),
            "case {case}: {o:?} on {shape:?}: values\n{y:?}\nwant\n{want_y:?}"
        );
        assert_eq!(idx, want_i, "case {case}: {o:?} on {shape:?}: indices");
        let y2 = max_pool2d(x.view(), &o).unwrap();
        assert!(
            y2.iter().zip(&want_y).all(|(a, b)| same(a, b)),
            "case {case}"
        );
        checked += 1;
    }
    assert!(checked > 250, "only {checked} geometries fit");
}
