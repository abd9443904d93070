//! `buffers::recycle`: a loop that calls the conv ops and hands their outputs back
//! allocates no new output once warm (each call's output, and its input gradient, reuse
//! the memory recycled before), and the results are the same bits as the first call's
//! on fresh memory, whatever values the recycled buffers held. Without recycling, every
//! call allocates its output anew (so the check can fail).

use convinit::buffers;
use convinit::ops::{
    Conv2dOptions, ConvAlgorithm, ConvAlgos, MemoryFormat, conv2d, conv2d_backward,
    to_memory_format,
};
use ndarray::Array4;

#[path = "common/largest_alloc.rs"]
mod largest_alloc;
use largest_alloc::largest_allocation_during;

fn array(shape: (usize, usize, usize, usize), seed: usize) -> Array4<f32> {
    let mut i = 0;
    Array4::from_shape_simple_fn(shape, || {
        i += 1;
        (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 0.5
    })
}

fn bits(a: &Array4<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

/// One test: the cache is process-wide, so the cases run one after the other.
#[test]
fn recycled_outputs_are_reused_with_the_same_results() {
    // (C, O, k, stride, groups, algorithm, channels-last output): the direct path both
    // ways, the column path, depthwise, pointwise and Winograd. Outputs of 8 x 64 x 32 x 32
    // f32 (16 x 16 at stride 2) are 512 KiB and more, above the cache's 256 KiB floor.
    let cases = [
        (16, 64, 3, 1, 1, "direct", false),
        (16, 64, 3, 1, 1, "direct", true),
        (16, 64, 3, 2, 1, "columns", false),
        (64, 64, 3, 1, 64, "depthwise", false),
        (32, 64, 1, 1, 1, "pointwise", false),
        (16, 64, 3, 1, 1, "winograd4", false),
    ];
    for (c, o, k, s, g, algo, last) in cases {
        let case = format!("{algo} C {c} O {o} k {k} s {s} g {g} last {last}");
        let format = match last {
            true => MemoryFormat::ChannelsLast,
            false => MemoryFormat::Contiguous,
        };
        let opts = Conv2dOptions::new()
            .with_stride((s, s))
            .with_padding((k / 2, k / 2))
            .with_groups(g)
            .with_memory_format(format)
            .with_algorithm(ConvAlgorithm::Fixed(ConvAlgos::named(algo).unwrap()));
        let x = array((8, c, 32, 32), 1);
        let x = to_memory_format(x.view(), format).unwrap();
        let w = array((o, c / g, k, k), 2);
        let b = array((1, 1, 1, o), 3).into_shape_with_order(o).unwrap();
        let y0 = conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        let dy = y0.mapv(|v| v * 0.5 - 0.1);
        let run = || {
            let y = conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap();
            let grads = conv2d_backward(x.view(), w.view(), true, dy.view(), &opts).unwrap();
            (y, grads)
        };
        let g0 = conv2d_backward(x.view(), w.view(), true, dy.view(), &opts).unwrap();
        let out_bytes = y0.len() * 4;
        let (want_y, want_dx, want_dw) = (bits(&y0), bits(&g0.dx), bits(&g0.dw));
        // Without recycling, each call's output is a new allocation.
        drop((y0, g0));
        buffers::clear_cache();
        let (_, largest) = largest_allocation_during(|| {
            drop(conv2d(x.view(), w.view(), Some(b.view()), &opts).unwrap());
        });
        assert!(largest >= out_bytes, "{case}: {largest} < {out_bytes}");
        // Recycled: after two warm rounds, a forward allocates nothing the size of its
        // output, and every round gives the first one's bits.
        for round in 0..4 {
            let ((y, grads), largest) = largest_allocation_during(run);
            assert_eq!(bits(&y), want_y, "{case}: round {round}: y");
            assert_eq!(bits(&grads.dx), want_dx, "{case}: round {round}: dx");
            assert_eq!(bits(&grads.dw), want_dw, "{case}: round {round}: dw");
            if round >= 2 {
                assert!(
                    largest < out_bytes,
                    "{case}: round {round}: an allocation of {largest} bytes, the output \
                     has {out_bytes}"
                );
            }
            // Scribbled over before they go back: a later op must not read them.
            let scribble = |mut a: Array4<f32>| {
                a.fill(f32::NAN);
                buffers::recycle(a);
            };
            scribble(y);
            scribble(grads.dx);
            scribble(grads.dw);
        }
        buffers::clear_cache();
    }
}
