//! Steady state: once warm, a training step of the notebook's net (as `train_mnist`
//! trains it: forward, cross-entropy, backward, SGD) makes no large allocation. The
//! layers hand their spent buffers to `convinit::buffers` and the ops take their outputs
//! from there, so a long-running process does not page-fault its activations and
//! gradients in again on every step. (Trains on the embedded sample: needs the default
//! `embedded-sample` feature.)
#![cfg(feature = "embedded-sample")]

use std::sync::Mutex;

use convinit::data::Mnist;
use convinit::init::Init;
use convinit::nn::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Relu, Sequential};
use convinit::ops::MemoryFormat;
use convinit::stats::{normalize, stats};
use convinit::train::{FitConfig, LrSchedule, Sgd, SgdConfig, Split, fit};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[path = "common/largest_alloc.rs"]
mod largest_alloc;
use largest_alloc::{COUNTED_FROM as LARGE, counted_allocations, take_largest_any_thread};

// Allocations of at least `LARGE` (64 KiB) bytes are counted: the batch (128 x 784 f32
// = 401 KB), every activation and gradient of the net, and conv 3's per-chunk
// weight-gradient partials are above it; the small bookkeeping of a step is below.

/// No warm step may allocate this much at once: every activation, gradient and batch
/// of the net (the smallest, conv 3's output, 128 x 64 x 4 x 4 f32, is 512 KiB) must
/// come from the buffer cache.
const MAX_WARM: usize = 256 << 10;
/// At most this many allocations of at least `LARGE` bytes per warm step: a packed
/// weight or two, below [`MAX_WARM`]. Conv 3's weight-gradient partials, one per
/// reduction chunk (16 of 72 KiB at N = 128), come from the small buffers kept for them
/// (`buffers`): from the allocator, they were 16 more allocations a step, and at N =
/// 1000 the notebook net's steps faulted them in afresh (690 page faults a step).
const MAX_WARM_COUNT: usize = 4;

/// `train_mnist`'s net: Conv2d 1-16-32-64-10 (5x5 then 3x3, stride 2), ReLU, average
/// pool, flatten; the first three convs' outputs in `layout` (`train_mnist` runs them
/// channels-last).
fn net(rng: &mut StdRng, layout: MemoryFormat) -> Sequential {
    let conv = |c, o, k, f, rng: &mut StdRng| {
        let cfg = Conv2dConfig::new(c, o, (k, k))
            .with_stride((2, 2))
            .with_padding((k / 2, k / 2))
            .with_memory_format(f);
        Conv2d::with_init(cfg, &Init::KAIMING_NORMAL, rng).unwrap()
    };
    Sequential::new()
        .with(conv(1, 16, 5, layout, rng))
        .with(Relu::new())
        .with(conv(16, 32, 3, layout, rng))
        .with(Relu::new())
        .with(conv(32, 64, 3, layout, rng))
        .with(Relu::new())
        .with(conv(64, 10, 3, MemoryFormat::Contiguous, rng))
        .with(AdaptiveAvgPool2d::new((1, 1)).unwrap())
        .with(Flatten::new(1, -1))
}

#[test]
fn a_warm_training_step_makes_no_large_allocation() {
    // One after the other: the allocation counter is process-wide.
    for layout in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
        warm_steps_make_no_large_allocation(layout);
    }
}

fn warm_steps_make_no_large_allocation(layout: MemoryFormat) {
    let mnist = Mnist::embedded().unwrap();
    let (mean, std) = stats(&mnist.train.0);
    let x = normalize(&mnist.train.0, mean, std);
    let train = Split::new(x.view(), mnist.train.1.view());
    let mut net = net(&mut StdRng::seed_from_u64(0), layout);
    let mut opt = Sgd::new(SgdConfig::new(0.1).with_momentum(0.9)).unwrap();
    // Batches of 128, the last of an epoch smaller: two epochs so shapes repeat.
    let config = FitConfig::new(2, 128)
        .with_seed(1)
        .with_schedule(LrSchedule::Constant);
    // Per step: (step, large allocations, largest allocation) since the last step.
    let per_step: Mutex<Vec<(usize, usize, usize)>> = Mutex::new(Vec::new());
    let mut last = 0;
    fit(&mut net, &mut opt, train, None, &config, |info, _| {
        let now = counted_allocations();
        let largest = take_largest_any_thread();
        per_step
            .lock()
            .unwrap()
            .push((info.step, now - last, largest));
        last = now;
        Ok(())
    })
    .unwrap();
    let per_step = per_step.into_inner().unwrap();
    let steps_per_epoch = mnist.train.0.nrows().div_ceil(128);
    // Warm: the second epoch, past its first full-size step (the first epoch's last,
    // smaller batch needs its own sizes once).
    let warm: Vec<_> = per_step
        .iter()
        .filter(|&&(s, _, _)| s > steps_per_epoch && s + 1 < 2 * steps_per_epoch)
        .collect();
    assert!(warm.len() >= 10, "{per_step:?}");
    // The cold steps do allocate: the counter sees the activations.
    assert!(per_step[0].2 >= 1 << 20, "{:?}", per_step[0]);
    for &&(step, count, largest) in &warm {
        assert!(
            largest < MAX_WARM && count <= MAX_WARM_COUNT,
            "{layout:?}: warm step {step}: {count} allocations of >= {LARGE} bytes, the largest \
             {largest} bytes (every step: {per_step:?})"
        );
    }
}
