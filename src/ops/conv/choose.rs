//! [`ConvPlan::choose`]: the one place an algorithm and its knobs are picked per shape.
//! Every threshold cites the measurement behind it (`examples/plan_sweep`, unless said).

use super::clipped;
use super::columns;
use super::common::{self, chunk_images};
use super::depthwise;
use super::direct;
use super::phase::PhaseGeometry;
use super::plan::{ConvPlan, ForwardAlgo, InputGradAlgo, WeightGradAlgo};
use super::winograd;
use crate::cpu::{CpuInfo, Microarch};
use crate::gemm::Kernel;
use crate::ops::geometry::Conv2dGeometry;

/// Bytes of one column buffer: a tile of `K x tile_cols` floats, `tile_cols` a multiple
/// of the AVX-512 kernel's 48 columns. Measured with `examples/plan_sweep` (2 threads,
/// back to back): resnet_64 (K = 576) runs best at 384-576 columns, 227 columns (512
/// KiB) is 3% slower and 96-192 up to 20% slower.
const TILE_BYTES: usize = 1 << 20;

/// Fewest columns per tile, whatever `K`: vgg_256 (K = 2304) at 56 columns runs 1.3x
/// slower forward than at 96-960 (the GEMM's 48-column panels run half empty).
const MIN_TILE_COLS: usize = 192;

/// An image whose column matrix takes at most this many bytes is never cut into tiles.
/// resnet_128s2 (K = 576, 784 columns, 1.8 MB), 1 thread, `plan_sweep` fwd / bwd ms:
/// whole images 32-36 / 72-74, tiles of 384-576 columns 36-41 / 84-88. resnet_64
/// (7.2 MB per image) is 1.6x faster forward in tiles than whole (71 vs 114 ms, 1
/// thread, against the previous whole-image im2col).
const WHOLE_IMAGE_BYTES: usize = 2 << 20;

/// Most columns per tile, whatever `K`: small images are grouped up to this many
/// columns. nb_32x1x5 (K = 25, 576 columns per image) runs fwd+bwd 1.3x faster one image
/// per tile than 18 images (10 464 columns) per tile, whose column and output buffers
/// (2.3 MB) spill from L2; seed_l1..l4 do not care between 384 and 3 600 columns.
const MAX_TILE_COLS: usize = 1024;

/// Strided convs whose output rows are at least this long, with an image's extended
/// column matrix within [`WHOLE_IMAGE_BYTES`], take the phase column lowering in their backward. Measured 1 thread
/// (fwd / bwd ms, im2col -> phase): seed_l1 (14 wide) 0.23 / 0.73 -> 0.155 / 0.61,
/// resnet_128s2 (28 wide) 25.0 / 53.7 -> 22.1 / 49.7; seed_l2 (7 wide) 0.17 / 0.50 ->
/// 0.44 / 0.71 (splitting tiny images into planes costs more than the gather it saves).
/// Stride-1 rows already lower by contiguous copies (nb_32x1x5: bwd 6.6 -> 7.6 ms).
const PHASE_MIN_OUT_W: usize = 12;

/// Fewest input channels for the direct forward and input gradient; fewer take the
/// phase forward and a column input gradient. The direct input gradient vectorises over input channels, so one
/// channel fills 1/16 of an AVX-512 vector: 1 thread, bwd ms, column path -> direct:
/// seed_l2 (8 channels) 0.51 -> 0.40, seed_l3 (16) 0.43 -> 0.35, seed_l4 (32) 0.16 ->
/// 0.14, resnet_64 114 -> 87; but seed_l1 (1 channel) 0.75 -> 1.07 and nb_32x1x5 (1)
/// 6.4 -> 26.6. Forward, direct -> phase: seed_l1 0.156 -> 0.129, nb_32x1x5 1.85 ->
/// 1.49 (their few output channels half fill the direct tile, and the phase forward
/// needs no transpose); seed_l2 (8 channels) 0.109 -> 0.267, resnet_128s2 18.0 -> 20.2.
const DIRECT_MIN_CHANNELS: usize = 8;

/// Most multiply-adds of the direct input gradient relative to the column lowering's
/// ([`direct::input_grad_work_ratio`]); past it the input gradient runs on the column
/// lowering. Convs without padding whose kernel nears the input size (the direct path
/// gathers each pixel's taps from a zero-padded `dy`, mostly zeros there): Zen 4 (EPYC
/// family 25 model 17), the whole backward with the direct weight gradient, 1 thread,
/// medians of 4 interleaved rounds, dx columns / direct time, by ratio: 25 (128 x 64 ->
/// 96, 5x5 onto 5x5) 0.33; 16 (16 x 64 -> 256, 7x7 onto 8x8) 0.64; 5.4 (64 x 32 -> 64,
/// 5x5 onto 7x7) 0.46; 4 (3x3 onto 4x4) 0.84; 3.1 (7x7 onto 14x14) 0.77; 2.8 (5x5 onto
/// 10x10) 0.75; 2.25 (3x3 onto 6x6) 0.89; but 1 (7x7, padding 3, on 7x7: both compute
/// the padding's taps) 1.50, and on 5x5 (64 x 64 -> 24) 3.4, seed_l4 (1) 1.93.
const DIRECT_DX_MAX_WORK_RATIO: f64 = 2.0;

/// ... unless that ratio times the output channels is at most this: the column
/// lowering's `W^T x dy` sums only `O` terms into each of its `C * kh * kw` rows and
/// scatters them all, a cost that does not shrink with `O`, while the direct input
/// gradient's does. Zen 4 (EPYC family 25 model 17), the whole backward with the direct
/// weight gradient, medians of 4 interleaved rounds, dx columns / direct time, 1 thread,
/// by ratio x outputs: 7x7 onto 16x16 (ratio 2.6), N = 4 and 32: 8 outputs (20) 2.22,
/// 2.17; 16 (41) 1.79, 1.41; 32 (82) 1.24, 1.02; 64 0.82-1.27; 5x5 onto 12x12 (2.25):
/// 8 (18) 2.33, 16 (36) 1.56, 32 (72) 1.11, 64 0.88; 5x5 onto 9x9 (3.2): 8 1.76, 16 (52)
/// 1.22, 32 (104) 0.91; 5x5 onto 8x8 (4): 8 1.49, 16 (64) 1.00, 32 0.71; 7x7 onto 10x10
/// (6.25): 8 (50) 1.20, 16 (100) 0.80, 64 0.47. At 2 threads the six points up to 64:
/// 1.19-1.87; the AVX2 kernel forced: 1.13-2.00, 0.88 at 64.
const DIRECT_DX_MAX_RATIO_TIMES_OUT: f64 = 64.0;

/// Most output channels per input channel for the direct input gradient of a
/// stride-1 layer under [`DIRECT_MIN_CHANNELS`] input channels: its vectors run over
/// the few input channels, but the column lowering's `W^T x dy` sums over the output
/// channels, as few there. Zen 4 (EPYC family 25 model 17), N = 64, the whole backward
/// with the direct weight gradient, dx direct / columns, medians of 4 interleaved
/// rounds, 1 thread: 3x3 padding 1, 28x28, C -> O: 2 -> 4 1.01, 4 -> 4 0.97, 6 -> 4
/// 0.48, 4 -> 8 0.87, 6 -> 8 0.65, 6 -> 16 1.03 (but 2 -> 8 1.21, 4 -> 16 1.01, 2 ->
/// 16 1.64); 7x7 padding 3, 14x14: 2 -> 4 0.68, 4 -> 4 0.46, 6 -> 4 0.39, 4 -> 8 0.60,
/// 6 -> 8 0.48, 3 -> 8 0.62, 6 -> 16 0.71 (but 2 -> 8 0.99, 4 -> 16 0.86, 2 -> 16
/// 1.39); N = 32, 5x5: 6 -> 16 0.85, 4 -> 16 1.08; 3x3 with 32 outputs: 2: 1.86, 4:
/// 1.24, 6: 1.17. The AVX2 kernel forced (4 -> 8 3x3 0.96, 3 -> 8 7x7 0.79, 6 -> 16
/// 0.97) and 2 threads (0.84, 0.64) alike. Strided layers keep their phase input
/// gradient: direct / phase 0.87-1.12 on five shapes.
const DIRECT_DX_FEW_CHANNELS_MAX_OUT_PER_IN: usize = 3;

/// A pointwise conv whose input and output take more than half the L3
/// ([`CpuInfo::l3_bytes`]) runs its forward on the column path: the pointwise forward's
/// GEMM reads each image in place, from memory once the batch has left the cache, while
/// the column path's copy streams it into a buffer the GEMM then finds in cache (the
/// profile puts the difference in the GEMM's macro kernel). Zen 4 (EPYC family 25 model
/// 17, 32 MiB L3), fwd, columns / pointwise, medians of 4 interleaved rounds, 1 thread,
/// by input + output: 128 x 32 -> 24, 56x56 (90 MB) 0.69; 64 x 32 -> 24, 56x56 (45 MB)
/// 0.76-0.79 (2 threads 0.79); pw_64x128 (77 MB) 0.95; 64 x 128 -> 32, 28x28 (32 MB)
/// 0.90; 32 x 32 -> 24, 56x56 (22 MB) 0.81; 16 x 64 -> 32, 56x56 (19 MB) 0.82; but in
/// cache the copy is only a cost: 32 x 256 -> 64, 14x14 (8 MB) 1.37; 32 x 128 -> 24,
/// 14x14 (3.8 MB) 1.55; 4 x 32 -> 24, 56x56 (2.8 MB) 1.32; 16 x 64 -> 128, 14x14 (2.4
/// MB) 1.11.
fn pointwise_streams(geo: &Conv2dGeometry, l3_bytes: usize) -> bool {
    let floats = geo.batch.saturating_mul(
        (geo.in_channels
            .saturating_mul(geo.in_h)
            .saturating_mul(geo.in_w))
        .saturating_add(geo.out_channels.saturating_mul(geo.col_cols())),
    );
    floats.saturating_mul(size_of::<f32>()) > l3_bytes / 2
}

/// A pointwise conv on small images (at most this many output positions each) in a
/// batch of at least [`POINTWISE_DIRECT_MIN_BATCH`], whose weight gradient is not the
/// pointwise GEMM ([`POINTWISE_DW_MIN_OUT`]), runs its input gradient on the direct
/// path with the AVX-512 kernel, and its forward too from
/// [`POINTWISE_DIRECT_FWD_MIN_CHANNELS`] input channels: the pointwise GEMM runs one
/// small product per image (or copies a few side by side), the direct kernel tiles
/// positions across the batch. Zen 4 (EPYC family 25 model 17), medians of 3-5
/// interleaved rounds, direct / pointwise, 1 thread (2 threads), fwd ; bwd (both with
/// the direct weight gradient):
/// - 8x8: N = 128, 128 -> 8, 16, 32, 64: 0.72-0.81 (0.59) ; 0.44-0.76 (0.47); N = 64,
///   64 -> 64: 0.80 (0.86) ; 0.63 (0.76);
/// - 14x14 to 20x20, N = 16 to 64: 32 x 256 -> 64 14x14 0.87 (0.77) ; 0.94 (0.86); 64 x
///   128 -> 64 10x10 0.88 ; 0.82; 32 x 96 -> 48 18x18 0.87 ; 0.92; 32 x 64 -> 32 20x20
///   0.94-0.97 (0.82) ; 0.75-0.80 (0.77); 32 x 128 -> 64 20x20 0.90 (0.79) ; 0.97
///   (0.90); 16 x 64 -> 32 12x12 and 16x16 0.91-0.93 (0.81-0.90) ; 0.68-0.79
///   (0.71-0.77); 32 x 256 -> 8..64 16x16 0.76-1.01 ; 0.81-0.99; under 64 input
///   channels the forward is even or slower (64 x 32 -> 8..64 14x14 0.86-1.11, 32 x 8
///   -> 16 1.16, 16 x 16 -> 24 20x20 1.20) while the input gradient gains (0.58-0.81,
///   0.76, 0.76);
/// - but larger images lose: 28x28 and 24x24, N = 8 and 32, 8 to 64 outputs: fwd
///   0.91-1.79, bwd 1.08-1.36; and small batches: N = 1, 2, 4, 8 (14x14, 7x7, 16x16,
///   12x12, 20x20) fwd 0.82-1.27 (2 threads up to 2.0), bwd 1.04-1.35 (up to 2.25);
/// - with the AVX2 kernel forced the direct path loses everywhere: fwd 0.62-1.67, bwd
///   0.92-1.71. Where the weight gradient is the pointwise GEMM (128 outputs and 64
///   inputs, 7x7 to 14x14) direct is even: fwd 0.95-1.29, bwd 0.95-1.02.
const POINTWISE_DIRECT_MAX_POSITIONS: usize = 400;

/// See [`POINTWISE_DIRECT_MAX_POSITIONS`].
const POINTWISE_DIRECT_MIN_BATCH: usize = 16;

/// See [`POINTWISE_DIRECT_MAX_POSITIONS`].
const POINTWISE_DIRECT_FWD_MIN_CHANNELS: usize = 64;

/// Whether the pointwise conv `geo` runs its input gradient (and with enough input
/// channels its forward) direct: [`POINTWISE_DIRECT_MAX_POSITIONS`].
fn pointwise_small_images(geo: &Conv2dGeometry, kernel: Kernel, pointwise_dw: bool) -> bool {
    kernel == Kernel::Avx512
        && !pointwise_dw
        && geo.batch >= POINTWISE_DIRECT_MIN_BATCH
        && geo.out_h.saturating_mul(geo.out_w) <= POINTWISE_DIRECT_MAX_POSITIONS
}

/// Fewest of a conv's direct multiply-adds that read padding (the share of all taps of
/// all windows, [`clipped::padding_share`]) for the clipped forward to replace the
/// direct one: 1 thread, Zen 4, fwd ms, direct -> clipped, by share: seed_l3 and
/// seed_l4 (31%) 0.160 -> 0.111 and 0.048 -> 0.028, 100 x 32 -> 64 4x4 s1 (31%) 0.557
/// -> 0.406, 100 x 64 -> 64 7x7 s1 (18%) 3.36 -> 2.73, 100 x 16 -> 32 10x10 (13%) 0.91
/// -> 0.79, seed_l2 (9.3%) 0.138 -> 0.117, 100 x 16 -> 32 14x14 (9.3%) 1.82 -> 1.71;
/// below it even: 100 x 16 -> 32 20x20 (6.6%) 4.02 -> 4.04, 28x28 (4.7%) 7.76 ->
/// 7.77, 100 x 3 -> 16 32x32 (4.1%) 1.55 -> 1.52 (medians of 6 interleaved runs). The
/// AVX2 kernel (forced) the same way: seed_l3 0.193 -> 0.130, 14x14 2.00 -> 1.76,
/// 32x32 1.44 -> 1.44, 20x20 4.24 -> 4.31. (Measured with each class's weights
/// copied; read in place through an index, seed_l2..l4 time the same at 1 thread.)
const CLIPPED_MIN_PADDING_SHARE: f64 = 0.08;

/// Most bytes of packed weights (`K x ldw` floats) for the clipped forward at
/// [`CLIPPED_MIN_PADDING_SHARE`]; larger weights need [`CLIPPED_LARGE_WEIGHTS_MIN_SHARE`].
/// Each class of positions reads its taps' rows for its own rows only, and a class of
/// few positions per block (a corner: one per image) streams them for a few rows. 1
/// thread, fwd ms, direct -> clipped (9.3% of the taps in the padding, class weights
/// copied): 100 x 64 -> 64 7x7 (147 KB) 3.50 -> 2.85; 32 x 128 -> 128 14x14 (590 KB)
/// 17.8 -> 15.9; 32 x 256 -> 256 14x14 (2.4 MB) 70.7 -> 69.9; 32 x 512 -> 512 7x7 (9.4
/// MB) 83.0 -> 83.6 (the gain gone past the L2). The L2 of Zen 4 and Zen 5 cores, half
/// an Intel Xeon's.
const CLIPPED_MAX_WEIGHT_BYTES: usize = 1 << 20;

/// Fewest taps in the padding for the clipped forward of weights past
/// [`CLIPPED_MAX_WEIGHT_BYTES`]: with the weight rows read in place, more taps skipped
/// outweigh the classes' short streams of large weights. Zen 4 (EPYC family 25 model
/// 17), `convbench --pass fwd`, medians of 4 interleaved rounds, clipped / direct
/// time, 1 thread | 2 threads: 30.6% (16 x 256 -> 512, 7x7, stride 2, 4.7 MB) 0.88;
/// 30.6% (32 x 256 -> 256 7x7 s2, 2.4 MB) 0.67; 27.8% (32 x 128 -> 256 8x8 5x5, 3.3
/// MB) 0.77; 23% (32 x 64 -> 256 14x14 7x7, 3.2 MB) 0.80; 22.6% (32 x 96 -> 128 10x10
/// 5x5 s2, 1.2 MB) 0.73 | 0.84, AVX2 kernel forced 0.90; but 16.4% (32 x 128 -> 256
/// 14x14 5x5, 3.3 MB) 0.88 | 0.96, AVX2 1.01; 9.3% (16 x 512 -> 512 14x14 s2, 9.4 MB)
/// 0.94 | 0.89, AVX2 1.06; 8.2% (32 x 256 -> 512 16x16 s2, 4.7 MB) 0.93 | 1.04.
const CLIPPED_LARGE_WEIGHTS_MIN_SHARE: f64 = 0.2;

/// Packed weights of at least this many L2s, with at least
/// [`STREAM_MIN_WEIGHT_BYTES_PER_POSITION`] of them per output position of the batch,
/// run the im2col forward where the direct one would (not the clipped one, which skips
/// the padding's taps: 4 x 128 -> 256 7x7 on 7x7, padding 3, 6.4 MB, 33 KiB per
/// position: columns / clipped 1.47 at 1 thread in a random sweep): the direct kernel
/// streams its packed weights past each tile of positions, so a few positions (small
/// images, few of them) leave it reading weights from beyond L2, while the column GEMM
/// packs them once and runs every position past each block. Zen 4 (EPYC family 25
/// model 17, L2 1 MiB), 3x3 convs C -> C, padding 1, interleaved, fwd, columns /
/// direct, 1 thread | 2 threads: 512 (9.4 MB), one image of 7x7 0.55 | 0.35, 10x10
/// 0.66 | 0.56, 14x14 0.86 | 0.67; two of 7x7 0.82 | 0.37, 10x10 0.84 | 0.68; three of
/// 7x7 0.83 | 0.77; 384 (5.3 MB), one of 7x7 0.69 | 0.58, 10x10 0.81 | 0.58; two of 7x7
/// 0.69 | 0.71; three of 7x7 0.98 | 0.64; 256 -> 512 stride 2 (4.7 MB), one of 7x7
/// 0.37 | 0.51; with the AVX2 kernel forced, one image of 512 7x7 0.42 | 0.21, 384
/// 10x10 0.63 | 0.44. Below either bound the direct forward wins or ties at 1 thread:
/// 256 (2.4 MB, 2.3 L2s), one of 7x7 0.80-1.16 | 0.60-0.96 (AVX2 0.69 | 0.38), two of
/// 7x7 (24 KiB per position) 1.09 | 0.83; 384, one of 14x14 0.90 | 0.73, three of
/// 10x10 1.07 | 0.74; 192 (1.3 MB), one of 7x7 1.21 | 0.67, two 1.36 | 1.06. In L2s,
/// not bytes: the L2 is what the direct kernel's weights overflow (Zen 5 has Zen 4's 1
/// MiB; an Intel Xeon's 2 MiB doubles the bound).
const STREAM_MIN_WEIGHT_L2S: usize = 3;

/// See [`STREAM_MIN_WEIGHT_L2S`].
const STREAM_MIN_WEIGHT_BYTES_PER_POSITION: usize = 32 << 10;

/// Whether `weights` bytes of packed weights stream past too few output positions of
/// `geo` for the direct forward ([`STREAM_MIN_WEIGHT_L2S`]).
fn streams_weights(geo: &Conv2dGeometry, weights: usize, l2_bytes: usize) -> bool {
    let positions = geo.batch.saturating_mul(geo.col_cols()).max(1);
    weights >= STREAM_MIN_WEIGHT_L2S.saturating_mul(l2_bytes)
        && weights / positions >= STREAM_MIN_WEIGHT_BYTES_PER_POSITION
}

/// Fewest taps in the padding for the clipped forward to replace the phase forward of
/// a layer of fewer than [`DIRECT_MIN_CHANNELS`] input channels (NCHW; channels-last
/// runs the direct forward, [`CLIPPED_MIN_PADDING_SHARE`]), except with the AVX-512
/// kernel from 2 channels, which takes [`CLIPPED_MIN_PADDING_SHARE`]. Zen 4 (EPYC
/// family 25 model 17), `N = 32`, fwd, clipped / phase time, medians of 4 interleaved
/// rounds:
/// - 23-31% of the taps in the padding (7x7, padding 3, 14x14 or 10x10): AVX-512, 1
///   thread: 1 channel 0.69, 2: 0.67, 3: 0.40-0.63, 4: 0.62, 6: 0.61, 7: 0.60; 2
///   threads: 1 channel 0.78, 3: 0.43-0.65; AVX2 forced, 1 thread: 1 channel 1.02, 2:
///   0.79, 3: 0.68-0.72;
/// - 8.4% (5x5, padding 2, 28x28): AVX-512, 1 thread: 2 channels 0.83, 3: 0.78, 4:
///   0.73, 6: 0.70, 7: 0.70 (the full 512-bit tiles forced, `CONVINIT_HALF_VECTORS=off`:
///   2: 0.93, 4: 0.80); 2 threads 2: 1.01, 4: 0.69; but 1 channel 0.98 (16 outputs),
///   1.29 (6 outputs; seed_l1, 8 outputs, stride 2: 1.29); AVX2 forced: 2 channels
///   1.55, 4: 1.13, 6: 1.05 (stride 2: 0.89);
/// - 4.7% (3x3, padding 1, 28x28), below either bound: 0.99-1.11 from 2 to 7 channels.
const CLIPPED_FEW_CHANNELS_MIN_SHARE: f64 = 0.2;

/// Under 8 input channels with the AVX-512 kernel, from 2 channels, the clipped
/// forward (then the direct kernel on every window) also for output rows shorter than
/// this, whatever the padding: the phase forward's extended rows run part-empty
/// register tiles there. Zen 4 (EPYC family 25 model 17), fwd, clipped / phase time,
/// medians of 4 interleaved rounds, no padding, 1 thread (2 threads): 64 x 4 -> 32,
/// 14x14 stride 2 (6 wide) 0.60-0.61 (0.62); 64 x 6 -> 32, 10x10 stride 2 0.26 (0.33);
/// 64 x 2 -> 32, 14x14 stride 2 0.71; 64 x 4 -> 64, 5x5 stride 2 0.52; 32 x 3 -> 32,
/// 20x20 stride 2 (9 wide) 0.86 (0.80); stride 1: 64 x 4 -> 32, 8x8 (6 wide) 0.69
/// (0.69), 64 x 2 -> 16, 10x10 0.90 (0.86), 64 x 3 -> 64, 12x12 5x5 0.84 (0.80). But one
/// channel 1.12 (1.01), and rows of 12 or more: 14x14 stride 1 (12 wide) 0.88, 28x28
/// and 32x32 stride 2 (13 and 15) 0.92 and 1.06, 24x24 stride 1 (22) 1.11 (1.09). The
/// AVX2 kernel forced: stride 2 0.46-1.02, stride 1 0.98-1.11, one channel 1.39.
const CLIPPED_FEW_CHANNELS_MAX_OUT_W: usize = 12;

/// A strided 1x1 conv without padding (a ResNet shortcut) runs its forward on the
/// column path instead of the direct one (channel-major layouts, groups of 1): its
/// lowering copies just the pixels the stride keeps before one GEMM, where the direct
/// path transposes the whole input. Zen 4 (EPYC family 25 model 17), fwd, columns /
/// direct time, medians of 4 interleaved rounds, 1 thread | 2 threads: 32 x 64 -> 128,
/// 56x56, stride 2: 0.76 | 0.65 (AVX2 forced, 1 thread: 0.50); 64 x 24 -> 96, 40x40:
/// 0.78 | 0.83; 100 x 16 -> 32, 14x14: 0.95 (AVX2 0.44); 32 x 256 -> 512, 28x28: 0.93;
/// 8 x 512 -> 1024, 14x14: 1.01 at 2 threads. The backward even (0.93-1.03): direct.
fn strided_pointwise(geo: &Conv2dGeometry) -> bool {
    let o = &geo.options;
    geo.kernel == (1, 1)
        && o.padding == (0, 0)
        && o.stride != (1, 1)
        && o.groups == 1
        && o.memory_format != crate::ops::MemoryFormat::ChannelsLast
}

/// Below this many multiply-adds in the whole conv (`N * O * L * K / groups`), run on the
/// calling thread: waking the pool costs more than it saves. `plan_sweep`, 2 threads,
/// on the im2col path, fwd ms serial -> parallel: seed_l1 (3.9 M) 0.40 -> 0.22, seed_l2
/// (5.6 M) 0.19 -> 0.11.
const PARALLEL_MACS: usize = 1 << 20;

/// ... or from this many floats of input and output up, whatever the multiply-adds:
/// per-image copies and transposes cost time too. 2 threads, fwd / bwd ms, serial ->
/// parallel: seed_l4 (0.1 M MACs, 52 K floats) 0.050 / 0.094 -> 0.037 / 0.086; but
/// 10 x 8 x 8 x 8 -> 8 (0.4 M MACs, 10 K floats) 0.012 / 0.028 -> 0.035 / 0.034 and
/// 20 x 8 x 8 x 8 -> 8, stride 2 (13 K floats) 0.008 / 0.029 -> 0.018 / 0.039.
const PARALLEL_FLOATS: usize = 1 << 15;

/// Depthwise convs (`groups == C > 1`) with a channel multiplier `O / C` of at most
/// this take the depthwise path for all three passes. `convbench`, median ms, auto
/// (phase / columns / columns) -> depthwise:
/// - dw_64 (m = 1, 3x3, 56x56, N = 32), fwd / bwd / fwd+bwd, `--reps 5`: 2 threads
///   10.2 / 59.7 / 69.9 -> 5.1 / 7.8 / 12.9; 1 thread 17.7 / 127.0 / 144.9 -> 8.8 /
///   17.5 / 26.3;
/// - 96 channels 5x5 28x28 (m = 1, N = 16), 2 threads: 2.8 / 27.6 / 30.4 -> 2.4 / 4.7
///   / 7.1;
/// - 1 thread, before the stride-1 gather input gradient (the backward is faster now),
///   32 -> 64 channels (m = 2) 56x56: 14.3 / 64.6 / 78.6 -> 8.6 / 22.1 / 30.6; stride
///   2: 6.2 / 24.1 / 30.2 -> 6.0 / 16.3 / 22.3; 16 -> 64 (m = 4): 10.2 / 36.3 / 46.4
///   -> 7.4 / 18.7 / 26.4 (forward alone, later: 6.6 phase vs 6.2, and 5.3 vs 4.9 at
///   2 threads: even);
/// - but 32 -> 256 channels (m = 8) 28x28, 2 threads: 4.4 / 9.8 / 14.3 -> 9.0 / 16.1 /
///   24.1 (the GEMM shares each input tap over the 8 outputs), and one input channel
///   (groups of 1, m = 8 or 32) is far slower: seed_l1 fwd+bwd 0.66 -> 3.19, nb_32x1x5
///   6.1 -> 34.4.
///
/// The rule holds with the other kernels forced (`CONVINIT_GEMM_KERNEL`, same Intel
/// Xeon, 2 threads, fwd / fwd+bwd, depthwise vs the best other path): AVX2, dw_64 5.5 /
/// 13.6 vs 13.2 / 62.6 (phase), 16 -> 64 (m = 4) 4.5 / 10.9 vs 5.4 / 19.3; portable,
/// dw_64 5.9 / 15.2 vs 17.5 / 91.9, m = 4 5.7 / 14.0 vs 6.4 / 27.6.
const DEPTHWISE_MAX_MULTIPLIER: usize = 4;

/// Fewest output channels (summed over by the input gradient) for the Winograd input
/// gradient by default: below, each of the 36 GEMMs is too short to beat the direct
/// path, and the transforms cost as much per channel. Intel Xeon (family 6 model 207,
/// AVX-512, 2 vCPUs), the whole backward with the direct weight gradient, median ms of
/// 9, dx direct -> F4, 1 thread | 2 threads, with the AVX-512 input gather: N = 32, 32
/// channels 28x28 (0.8 M) 7.40 -> 7.03 | 4.08 -> 3.88; 32 channels 56x56 (3.2 M)
/// 33.5 -> 27.0 | 20.0 -> 14.5; N = 8, 64 channels 28x28 (0.4 M) 8.09 -> 6.91 | 4.34
/// -> 3.83; N = 32, 64 channels 14x14 (0.4 M) 7.58 -> 6.15 | 4.31 -> 3.75; but 16
/// channels 28x28 2.32 -> 2.53 | 1.32 -> 1.48. Before the gather (forward then, ms
/// direct / F2 / F4): N = 32, 32 channels, 28x28: 3.94 / 7.68 / 4.67.
///
/// On a Zen 4 (EPYC family 25 model 17) the Winograd input gradient gains no more than
/// on the Xeon, so the rule is the same there: the whole backward, dW direct, median
/// ms of 15, dx direct -> F4, 1 | 2 threads: N = 32, 16 -> 16 channels 28x28 2.36 ->
/// 2.70 | 1.23 -> 1.39; 16 -> 24 channels 4.00 -> 4.22 | 2.04 -> 2.17; 24 -> 24 6.71 ->
/// 5.83 | 3.41 -> 2.94; 32 -> 32 9.12 -> 8.91 | 4.44 -> 4.49; N = 8, 64 channels 14x14
/// (0.1 M) 2.18 -> 2.62 | 1.16 -> 1.42.
const WINOGRAD_MIN_CHANNELS: usize = 32;

/// Fewest input channels (the rows of each of the 36 GEMMs, the channels it produces)
/// for the Winograd input gradient by default: below, the GEMMs run on a few rows and
/// the transforms of `dy` over all its channels are not shared; the direct input
/// gradient (from 8 channels, [`DIRECT_MIN_CHANNELS`]) or the column lowering (below)
/// is faster. Zen 4 (EPYC family 25 model 17), 3x3, padding 1, the whole backward with
/// the direct weight gradient, medians of 4 interleaved rounds, dx direct (or columns)
/// against F4, 1 thread: N = 32, 28x28, C -> 64 channels: 3 channels columns 0.49 (direct
/// 0.88), 4: 0.65 (0.89), 8: 0.86, 16: 0.91, 24: 1.03; C -> 128: 8: 0.92, 16: 0.92, 24:
/// 1.03, 32: 1.07; C -> 256: 8: 0.92, 16: 0.93, 24: 0.95, 32: 1.06; 2 threads, C -> 128:
/// 16: 0.93, 24: 0.97, 32: 1.05, 48: 1.09; N = 8, 24 -> 64, 56x56: 1.15. A VGG or CIFAR
/// first layer (3 -> 64, 224x224 or 32x32) had its backward 2.3x and 1.4x slower on F4
/// than on the column lowering. The reason (few GEMM rows) holds on every CPU; the Xeon
/// gains less from Winograd than a Zen 4 (twice the FMA throughput for the same
/// transforms), so the bound is no lower there.
const WINOGRAD_DX_MIN_IN_CHANNELS: usize = 24;

/// Fewest `positions x channels` for the Winograd input gradient by default, the input
/// positions `N * H * W` times the output channels (the forward has its own,
/// [`WINOGRAD_FWD_MIN_WORK`]): the filter transform and the packing of `U` (`36 O C`
/// floats per call) must be shared by many tiles. With the AVX-512 input gather (as
/// [`WINOGRAD_MIN_CHANNELS`]): N = 8, 64 channels 14x14 (0.1 M) 2.09 -> 2.31 | 1.27 ->
/// 1.56, while 0.4 M wins. The history below is of the rule the forward and input
/// gradient shared before the gather, at 2^20.
///
/// F(4x4, 3x3) is the default: on the points 0, 1, -1, 1/2, -2 its error stays within
/// the tests' `1e-5` relative tolerance with margin up to 256 channels
/// (`examples/winograd_error.rs`, kaiming-normal weights, N(0, 1) or post-ReLU inputs,
/// max error relative to `max|ref|`, direct / F2 / F4, forward: 64 channels 9.6e-7 /
/// 3.4e-7 / 2.2e-6, 256 channels 2.5e-6 / 7.6e-7 / 5.8e-6; input gradient at 256:
/// 2.2e-6 / 7.4e-7 / 5.1e-6), and it runs faster than F2 wherever either beats the
/// direct path. Same machine, 1 thread, ms direct -> F4 (fwd; dx + dW with the direct
/// dW), runs back to back: resnet_64 (64 channels, 56x56, N = 32: 6.4 M) fwd 71.4 /
/// 71.7 / 74.2 -> 53.1 / 50.6 / 52.0, bwd 133.7 / 132.9 / 141.6 -> 116.4 / 115.7 /
/// 115.7; vgg_256 (256 channels, 28x28, N = 8: 1.6 M) fwd 58.1 -> 40.3 (F2 45.7), bwd
/// 122.7 -> 108.0; 128 channels, 28x28, N = 32 (3.2 M) fwd 61.2 -> 40.3, bwd 116.7 ->
/// 103.1; the final build, two more runs: resnet_64 fwd 70.4 / 70.1 -> 48.9 / 53.8, bwd
/// 130.8 / 131.2 -> 112.2 / 113.6. At 2 threads (a shared machine: noisy) resnet_64 fwd 70.8 / 80.6 -> 68.5 /
/// 75.1, bwd 129.4 / 140.5 -> 116.4 / 123.4; vgg_256 fwd 58.7 / 63.9 -> 43.1 / 51.3.
/// Smaller: N = 8, 64 channels, 28x28 (0.4 M) fwd 3.37 -> 3.68; N = 8, 128 channels,
/// 14x14 (0.2 M) 3.65 -> 3.23 but bwd 8.1 -> 9.8; N = 8, 512 channels, 7x7 (0.2 M)
/// fwd 32.3 -> 52.4 (a 7x7 image is 2x2 tiles of 4, half of them empty; with the
/// gather, F2, which the chooser takes past 256 channels: 32.4 -> 17.8 at 1 thread,
/// 24.8 -> 16.2 at 2).
const WINOGRAD_MIN_WORK: usize = 1 << 18;

/// The forward's own minimums, lower than the input gradient's
/// ([`WINOGRAD_MIN_CHANNELS`], [`WINOGRAD_MIN_WORK`]) since its input gather runs on
/// AVX-512 vectors (`winograd/gather.rs`): fewest input channels, and fewest `N *
/// out_h * out_w * C`. `convbench --pass fwd`, Intel Xeon 6/207, median ms of 9,
/// direct -> F4, 1 thread | 2 threads: N = 32, 16 channels, 28x28 (0.4 M) 1.18 ->
/// 0.97 | 1.19 -> 0.70; 32 channels 14x14 (0.2 M) 0.84 -> 0.70 | 0.51 -> 0.52; N = 8,
/// 64 channels 14x14 (0.1 M) 1.08 -> 0.69 | 0.69 -> 0.62; N = 8, 32 channels 28x28
/// (0.2 M) 0.96 -> 0.71 | 0.53 -> 0.52; N = 32, 32 channels 28x28 3.91 -> 2.89 | 2.15
/// -> 1.75; N = 8, 64 channels 28x28 4.13 -> 2.39 | 2.20 -> 1.96. Not measured below
/// 16 channels. With the other kernels forced (`CONVINIT_GEMM_KERNEL`, whose gathers
/// are scalar), 1 | 2 threads: AVX2, 16 channels 28x28 1.69 -> 1.89 | 1.70 -> 1.11,
/// 32 channels 14x14 1.53 -> 1.64 | 1.52 -> 1.19, 8 x 64 x 28x28 7.14 -> 3.70 | 3.85
/// -> 2.18 (the smallest shapes 7-12% slower on one AVX2 thread, kept for one rule);
/// portable, the same three 4.83 -> 2.65, 4.88 -> 2.57, 20.6 -> 6.6 at 1 thread.
const WINOGRAD_FWD_MIN_CHANNELS: usize = 16;

/// See [`WINOGRAD_FWD_MIN_CHANNELS`].
const WINOGRAD_FWD_MIN_WORK: usize = 1 << 17;

/// [`WINOGRAD_FWD_MIN_CHANNELS`] on a Zen 4 running the AVX-512 kernel: its FMA
/// throughput per core is half the Xeon's while the transforms are loads, stores and
/// adds, so F4's 4x fewer multiplications pay off from fewer channels. Zen 4 (EPYC
/// family 25 model 17), `convbench --pass fwd`, median ms of 15, direct -> F4, 1
/// thread | 2 threads: N = 32, 12 -> 32 channels, 28x28 1.77 -> 1.34 | 0.91 -> 0.73;
/// 8 -> 16 channels, 28x28 0.60 -> 0.59 | 0.37 -> 0.30; at 16 channels, as on the
/// Xeon, 16 -> 16 channels 28x28 1.25 -> 0.94 | 0.57 -> 0.47. The work minimum
/// ([`WINOGRAD_FWD_MIN_WORK`]) holds there too: below it, N = 8, 16 -> 32 channels
/// 14x14 0.079 -> 0.119 at 2 threads.
const WINOGRAD_FWD_MIN_CHANNELS_ZEN4: usize = 8;

/// ... or, below [`WINOGRAD_FWD_MIN_WORK`], at least this many multiply-adds (direct,
/// `N * out_h * out_w * C * O * 9`) over at least [`WINOGRAD_FWD_MIN_TILES`] 4x4 output
/// tiles: the work minimum counts the input side alone (the input transform, per tile
/// and input channel), while F4's saving grows with the output channels too, so a few
/// images through a wide layer pay. Zen 4 (EPYC family 25 model 17), fwd, medians of 4
/// interleaved rounds, F4 against the next choice (clipped or direct), time of that /
/// F4's, 1 thread | 2 threads | the AVX2 kernel forced, 1 thread: 4 x 64 -> 256, 16x16
/// (151 M, 64 tiles) 1.32 | 1.16, 0.90 | 1.94; 1 x 16 -> 128, 56x56 (58 M, 196 tiles)
/// 1.19 | 1.05 | 1.30; 2 x 16 -> 128, 56x56 1.17 | 1.20 | 1.40; 2 x 64 -> 64, 28x28 (58
/// M, 98 tiles) 1.00-1.05 | 0.94-1.00 | 1.10; 1 x 32 -> 128, 32x32 (38 M, 64 tiles) 1.22
/// | 1.07 | 1.50; 1 x 64 -> 64, 32x32 1.27 | 1.15 | 1.45 (the 2-thread figures of one
/// image against the direct forward split by positions, `common::splits_images`).
/// Below: 1 x 64 -> 64, 28x28 (29 M, 49 tiles) 0.91-0.95; 2 x 64 -> 256, 16x16 (32
/// tiles) 1.02; 2 x 128 -> 128, 14x14 (32 tiles) 0.79; 8 x 32 -> 32, 14x14 (15 M) 0.96.
const WINOGRAD_FWD_MIN_MACS: usize = 1 << 25;

/// See [`WINOGRAD_FWD_MIN_MACS`].
const WINOGRAD_FWD_MIN_TILES: usize = 64;

/// Fewest tenths of the 4x4 output tiles' floats that are outputs for
/// [`WINOGRAD_FWD_MIN_MACS`]: 14x14 outputs fill 77% of their tiles (and 9% of the
/// direct taps read padding, which the clipped forward skips), and there F4 and the
/// clipped forward are even, 1 thread | 2 threads: N = 8, 64 -> 64 (58 M) 1.16 | 0.89;
/// 4 x 64 -> 128 0.97 | 0.84; 16 x 16 -> 128 0.80 | 0.80; while full tiles stay even
/// or better: 4 x 32 -> 64, 28x28 1.02 | 0.99, 8 x 16 -> 64 1.07 | 1.02 (the AVX2
/// kernel forced: 1.10-1.37 on all five).
const WINOGRAD_FWD_MIN_FILL_TENTHS: usize = 9;

/// The forward's fewest input channels for Winograd with `kernel` on `microarch`.
fn winograd_fwd_min_channels(microarch: Microarch, kernel: Kernel) -> usize {
    if microarch == Microarch::Zen4 && kernel == Kernel::Avx512 {
        WINOGRAD_FWD_MIN_CHANNELS_ZEN4
    } else {
        WINOGRAD_FWD_MIN_CHANNELS
    }
}

/// Smallest output side for the F(4x4, 3x3) forward: a small image leaves its 4x4
/// tiles part empty (5x5 fills 39% of its four, 6x6 56%) and pays the transforms on
/// the padding the clipped forward skips. Zen 4 (EPYC family 25 model 17), fwd,
/// clipped / F4 time, medians of 4 interleaved rounds, 1 thread (2 threads): N = 64, 64
/// -> 64 channels: 5x5 0.45 (0.37), 6x6 0.66 (0.66), 7x7 0.95, but 8x8 1.24, 10x10
/// 1.26, 12x12 1.81; N = 64, 128 channels 7x7: 8 outputs 0.65, 16: 0.63. Few output
/// channels alone make no rule: 8 outputs, 64 channels 14x14 0.93, 48 channels 12x12
/// 1.20, 28x28 1.00 (4 outputs 1.02, 16: 1.11). F(2x2, 3x3) past
/// [`WINOGRAD_F4_MAX_CHANNELS`] keeps every size: its 2x2 tiles fill small images
/// (ResNet's 512-channel 7x7 layer: F2 59 ms, clipped 69, 1 thread).
const WINOGRAD_F4_FWD_MIN_OUT_SIDE: usize = 8;

/// Smallest output side for the F(2x2, 3x3) forward where F4's is too small for F4
/// ([`WINOGRAD_F4_FWD_MIN_OUT_SIDE`]) and under 8% of the taps read padding (where the
/// direct forward, not the clipped one, would run), with F4's channel and work
/// minimums. Zen 4 (EPYC family 25 model 17), fwd, F2 / direct time, medians of 4
/// interleaved rounds, no padding, 1 thread | 2 threads | AVX2 forced: 128 x 128 -> 48,
/// 6x6 outputs 0.68 | 0.84 | 0.90; 128 x 64 -> 64, 6x6 0.76 | 0.93 | 0.96; 32 x 256 ->
/// 256, 7x7 0.75 | 0.88 | 0.72; but 5x5 outputs 1.21 | 1.52 | 1.51, 4x4 1.05 | 1.11 |
/// 0.84. With padding the clipped forward skips (6x6, 7x7, padding 1): F2 / clipped
/// 0.93 (6x6), 1.50-1.51 (7x7).
const WINOGRAD_F2_FWD_MIN_OUT_SIDE: usize = 6;

/// Most channels summed over (input channels forward, output channels for the input
/// gradient) for F(4x4, 3x3) by default; F(2x2, 3x3) above. F4's error grows with the
/// sum and reaches the tests' tolerance: `examples/winograd_error.rs`, 14x14, max error
/// relative to `max|ref|`, y / dx, direct, F2, F4: 512 channels 3.4e-6 / 3.4e-6, 8.8e-7
/// / 7.8e-7, 7.0e-6 / 6.3e-6 (post-ReLU); 1024 channels 4.1e-6 / 4.9e-6, 1.2e-6 /
/// 1.5e-6, 7.5e-6 / **1.05e-5** (over `1e-5`). At 256 channels F4 keeps a margin of
/// 1.7x (5.8e-6). F2 stays faster than the direct path there: N = 16, 512 channels,
/// 14x14, 2 threads, fwd / bwd ms: direct 118 / 339, F2 101 / 320, F4 86 / 306.
const WINOGRAD_F4_MAX_CHANNELS: usize = 256;

/// Fewest channels on both sides (`min(C, O)`) for the Winograd weight gradient by
/// default, and fewest F(4x4) tiles per reduction chunk (`ceil(N / 8)` images, at
/// most 8, times `ceil(out_h / 4) * ceil(out_w / 4)`): each chunk's 36 GEMMs sum over
/// its tiles, and the `36 O C` sums are transformed back once per chunk.
///
/// F4 only: F2 was slower than the direct weight gradient on every shape measured
/// (resnet_64 bwd 1 thread 166 ms against 102). F4's error does not grow with the
/// channels (the sum runs over positions): 3.5e-6 of `max|ref|` at 256 channels 56x56,
/// 1.6e-6 at 1024 (`examples/winograd_error.rs`, direct 1.7e-6 / 7.6e-7).
///
/// `convbench --pass bwd`, Intel Xeon 6/207, an idle machine, the AVX-512 input
/// gather, median ms of 5, two runs, the input gradient on F4 in both, weight gradient
/// direct -> F4 (1 thread | 2 threads):
/// - resnet_64 (32 x 64 x 56x56, 784 tiles per chunk): 100.0 / 106.3 -> 87.5 / 91.2 |
///   61.5 / 54.2 -> 50.5 / 49.0;
/// - 64 x 64 x 56x56 (1 568 tiles): 202.9 / 202.4 -> 180.1 / 186.2 | 110.6 / 104.7 ->
///   105.3 / 96.4;
/// - 32 x 128 x 28x28 (196 tiles), dx + dW on F4 against both direct: 115.2 / 116.1
///   -> 82.9 / 84.0 | 60.0 / 57.6 -> 44.6 / 42.5 (before the AVX-512 gather, under
///   load, dx on F4 in both: 94.7 -> 88.0 | 50.9 -> 45.4); 32 x 256 x 28x28: 373 ->
///   279 | 197 -> 156; 8 x 128 x 56x56: 88.0 -> 77.5 | 46.1 -> 40.9;
/// - but vgg_256 (8 x 256 x 28x28, 49 tiles per chunk): 114.5 / 113.3 -> 127.0 /
///   134.1 | 63.7 / 63.5 -> 76.4 / 72.5; and 32 channels (32 x 32 x 28x28, 196 tiles),
///   dx + dW on F4 against direct: 7.5 -> 9.1 | 4.0 -> 4.6.
///
/// With AVX2 forced (`CONVINIT_GEMM_KERNEL=avx2`), the input gradient on F4, dW
/// direct -> F4, median ms of 5, 1 | 2 threads: resnet_64 166 -> 122 | 86.8 -> 65.3;
/// 32 x 128 x 28x28 158 -> 106 | 82.2 -> 56.1 (AVX-512 the same run: 94.5 -> 85.1 |
/// 54.6 -> 42.5; 91.0 -> 76.2 | 45.3 -> 40.2).
///
/// The rule holds on a Zen 4 (EPYC family 25 model 17, FMA throughput per core half
/// the Xeon's): the input gradient on F4, dW direct -> F4, median ms of 7, 1 thread |
/// 2 threads: resnet_64 111.0 -> 92.4 | 57.7 -> 51.3; 32 x 128 x 28x28 115.2 -> 99.6 |
/// 59.3 -> 52.4; 8 x 128 x 56x56 104.1 -> 89.2 | 53.2 -> 44.8; 32 x 64 x 28x28 (196
/// tiles) 31.5 -> 30.2 | 16.2 -> 15.3; but vgg_256 116.3 -> 151.4 | 62.3 -> 80.1.
const WINOGRAD_DW_MIN_CHANNELS: usize = 64;

/// See [`WINOGRAD_DW_MIN_CHANNELS`].
const WINOGRAD_DW_MIN_TILES: usize = 196;

/// Fewest output and input channels for a pointwise (1x1, stride 1, unpadded) conv's
/// weight gradient to run as the plain GEMM (`Pointwise`) rather than on the direct
/// path: `dW += dy_n x_n^T` per image, the GEMM's `O x C` output tiles filled, beats the
/// direct kernel once both sides are wide. Zen 4 (EPYC family 25 model 17), `convbench
/// --pass bwd`, the input gradient pointwise in both, median ms of 9, dW direct ->
/// pointwise, 1 thread | 2 threads:
/// - faster: pw_64x128 (32 x 64 -> 128, 56x56) 50.7 -> 40.7 | 24.8 -> 20.3; 32 x 128
///   -> 256, 28x28 39.2 -> 35.2 | 18.9 -> 18.0; 8 x 256 -> 512, 14x14 9.4 -> 9.0 | 4.83
///   -> 4.72; 8 x 64 -> 256, 28x28 4.73 -> 4.49 | 2.36 -> 2.22; 16 x 512 -> 512, 7x7
///   10.1 -> 9.9 | 5.2 -> 5.0;
/// - slower: 32 x 256 -> 64, 14x14 6.4 -> 7.0 | 2.8 -> 3.1; 32 x 32 -> 32, 28x28 1.28
///   -> 1.52 | 0.64 -> 0.74; 16 x 16 -> 16, 56x56 0.81 -> 1.10; 100 x 16 -> 32, 7x7
///   0.37 -> 0.39; 100 x 8 -> 16, 14x14 0.42 -> 0.54.
///
/// With the AVX2 kernel forced, 1 thread: pw_64x128 63.5 -> 43.4, 32 x 128 -> 256
/// 44.2 -> 36.5. Not measured on Zen 5 or the Intel Xeon: a shape rule, taken on every
/// CPU.
const POINTWISE_DW_MIN_OUT: usize = 128;

/// See [`POINTWISE_DW_MIN_OUT`].
const POINTWISE_DW_MIN_IN: usize = 64;

/// Output channels from which a pointwise conv's weight gradient runs as the plain GEMM
/// whatever its input channels (and from [`POINTWISE_DW_MIN_OUT`] with
/// [`POINTWISE_DW_NARROW_MIN_IN`]), but on the small images whose input gradient runs
/// direct ([`POINTWISE_DIRECT_MAX_POSITIONS`]). The direct weight gradient's output
/// is `C x O`: few input channels leave its tiles' rows empty. Zen 4, the two plans
/// interleaved in one process (3 rounds), backward time, dW direct -> pointwise (the
/// input gradient as chosen), 1
/// thread: 256 outputs, C = 1, 3, 4, 8, 16, 32, 48 on 32 x 28x28 and 8 x 56x56:
/// 0.47-0.75 of the time; 128 outputs from 8 channels 0.59-0.91, under 8 0.63-1.11; 64
/// outputs 0.83-1.33, 32 outputs 1.10-1.33. 2 threads: 3 -> 256 0.50, 1 -> 256 0.59, 8
/// -> 128 0.62, 16 -> 128 0.82, 48 -> 128 0.81; the AVX2 kernel forced (1 thread)
/// 0.43-0.77. The random sweep's worst gap (128 x 3 -> 256 on 40x40, 2 threads: 72.7 ->
/// 21.5 ms). Small images stay direct (64 x 32 -> 128 14x14, 128 x 16 -> 256 7x7, 16 x
/// 24 -> 128 16x16: pointwise for both gradients 1.03-1.24 of the direct ones), and so
/// do batches under [`POINTWISE_DW_WIDE_MIN_POSITIONS`].
const POINTWISE_DW_WIDE_OUT: usize = 256;

/// Fewest output positions of the batch for [`POINTWISE_DW_WIDE_OUT`]'s rule: below,
/// the two weight gradients tie (5 interleaved rounds, dW direct -> pointwise, 1
/// thread): 3 -> 256 on 8 x 14x14 1.13, 32 x 14x14 0.95, 8 x 28x28 0.83-1.06; 8 -> 128
/// on 8 x 28x28 1.01; from it (32 x 28x28, 8 x 56x56, 128 x 14x14) 0.47-0.80.
const POINTWISE_DW_WIDE_MIN_POSITIONS: usize = 1 << 14;

/// See [`POINTWISE_DW_WIDE_OUT`].
const POINTWISE_DW_NARROW_MIN_IN: usize = 8;

impl ConvPlan {
    /// The plan for `geo` on a pool of `threads` threads (`rayon::current_num_threads()`
    /// for the public ops), with the process's GEMM kernel ([`Kernel::selected`]:
    /// the fastest this CPU runs, or `CONVINIT_GEMM_KERNEL`): what
    /// [`ConvAlgorithm::Auto`](super::ConvAlgorithm::Auto) runs. Pure: the same inputs
    /// give the same plan. Every threshold below is a constant in `choose.rs` that cites
    /// the measurement behind it:
    ///
    /// - every pass: `Depthwise` for depthwise convs (`groups == C > 1`) with a channel
    ///   multiplier of at most 4 (`DEPTHWISE_MAX_MULTIPLIER`); otherwise:
    /// - a channels-last 1x1 / stride-1 / unpadded conv of groups of 1: `Direct` for all
    ///   three passes; otherwise:
    /// - forward: `Pointwise` for a 1x1 / stride-1 / unpadded conv (`Direct` with the
    ///   AVX-512 kernel on images of at most 400 positions in batches of 16 or more from
    ///   64 input channels, `POINTWISE_DIRECT_MAX_POSITIONS`; `Columns` when its
    ///   input and output take more than half the L3, `pointwise_streams`); `WinogradF4` for a
    ///   3x3 conv of stride 1, dilation 1 and groups of 1 with at least 16 input
    ///   channels (`WINOGRAD_FWD_MIN_CHANNELS`; 8 on a Zen 4 with the AVX-512 kernel,
    ///   `WINOGRAD_FWD_MIN_CHANNELS_ZEN4`) and `N * out_h * out_w * C` of at least
    ///   2^17 (`WINOGRAD_FWD_MIN_WORK`; or 2^25 multiply-adds over 64 output tiles,
    ///   `WINOGRAD_FWD_MIN_MACS`), outputs of at least 8x8
    ///   (`WINOGRAD_F4_FWD_MIN_OUT_SIDE`);
    ///   `WinogradF2` instead above 256 channels (`WINOGRAD_F4_MAX_CHANNELS`), any
    ///   size, and on 6x6 and 7x7 outputs with under 8% of the taps in the padding
    ///   (`WINOGRAD_F2_FWD_MIN_OUT_SIDE`); else for groups of 1 with at least 8 input
    ///   channels (`DIRECT_MIN_CHANNELS`) `Columns` for a strided 1x1 conv without
    ///   padding in a channel-major layout (`strided_pointwise`), `Clipped` where at least 8% of the taps read
    ///   padding (`CLIPPED_MIN_PADDING_SHARE`; 20% for packed weights past 1 MB,
    ///   `CLIPPED_MAX_WEIGHT_BYTES`, `CLIPPED_LARGE_WEIGHTS_MIN_SHARE`) unless the pool
    ///   runs the batch split by positions (`common::splits_images`), else `Direct`;
    ///   for fewer input channels (groups of 1) `Clipped` from 20% of the taps in the
    ///   padding (`CLIPPED_FEW_CHANNELS_MIN_SHARE`; 8% with the AVX-512 kernel from 2
    ///   channels, or any share on output rows under 12, `CLIPPED_FEW_CHANNELS_MAX_OUT_W`),
    ///   else `Phase`; grouped convs `Phase`;
    /// - input gradient: `WinogradF4` (`WinogradF2` above 256) for such a 3x3 conv with
    ///   at least 32 output channels (`WINOGRAD_MIN_CHANNELS`), 24 input channels
    ///   (`WINOGRAD_DX_MIN_IN_CHANNELS`) and `N * H * W * O` of at least 2^18
    ///   (`WINOGRAD_MIN_WORK`); else `Direct` for groups of 1 with at least 8 input
    ///   channels (not pointwise; fewer with stride 1 and at most 3 output channels per
    ///   input channel, `DIRECT_DX_FEW_CHANNELS_MAX_OUT_PER_IN`) and at most twice the
    ///   column lowering's multiply-adds (`DIRECT_DX_MAX_WORK_RATIO`; or that ratio
    ///   times the output channels at most 64, `DIRECT_DX_MAX_RATIO_TIMES_OUT`), and for
    ///   pointwise convs of small images as the forward's rule (from 8 input channels),
    ///   else a column lowering: `Pointwise`, `Phase` for strided convs with
    ///   output rows of at least 12 (`PHASE_MIN_OUT_W`) and an extended column matrix
    ///   within 2 MiB (`WHOLE_IMAGE_BYTES`), else `Columns`;
    /// - weight gradient: `WinogradF4` for such a 3x3 conv with at least 64 channels
    ///   on both sides (`WINOGRAD_DW_MIN_CHANNELS`) and at least 196 4x4 tiles per
    ///   reduction chunk (`WINOGRAD_DW_MIN_TILES`); `Pointwise` for a pointwise conv
    ///   with at least 128 output and 64 input channels (`POINTWISE_DW_MIN_OUT`,
    ///   `POINTWISE_DW_MIN_IN`); else `Direct` for every groups-of-1 conv, else the
    ///   input gradient's column lowering (so the two run fused);
    /// - tiles of 1 MiB of columns (`TILE_BYTES`), within 192 and 1024 columns
    ///   (`MIN_TILE_COLS`, `MAX_TILE_COLS`), whole images up to 2 MiB; the index map for
    ///   output rows of at most 16; parallel from 2^20 multiply-adds or 2^15 floats of
    ///   input and output up (`PARALLEL_MACS`, `PARALLEL_FLOATS`), on more than one
    ///   thread.
    pub fn choose(geo: &Conv2dGeometry, threads: usize) -> ConvPlan {
        let o = &geo.options;
        let phase = o.stride != (1, 1)
            && geo.out_w >= PHASE_MIN_OUT_W
            && geo.col_rows().saturating_mul(PhaseGeometry::new(geo).ext)
                <= WHOLE_IMAGE_BYTES / size_of::<f32>();
        let k = geo.col_rows().max(1);
        let mut tile_cols =
            (TILE_BYTES / (k * size_of::<f32>()) / 48 * 48).clamp(MIN_TILE_COLS, MAX_TILE_COLS);
        let l = geo.col_cols();
        if l > tile_cols && k * l * size_of::<f32>() <= WHOLE_IMAGE_BYTES {
            tile_cols = l;
        }
        // Saturating: only compared with thresholds (a broadcast input may be larger
        // than memory; its copy then fails as too large to allocate).
        let macs = [geo.batch, geo.out_channels, geo.col_cols(), k / o.groups]
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d));
        let image = [geo.in_channels, geo.in_h, geo.in_w]
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d));
        let floats = geo
            .batch
            .saturating_mul(image.saturating_add(geo.out_channels * geo.col_cols()));
        let parallel = (macs >= PARALLEL_MACS || floats >= PARALLEL_FLOATS) && threads > 1;
        // A channels-last pointwise conv runs all three passes direct: the pointwise
        // and column paths work on channel-major copies. Zen 4, 2 threads, `convbench
        // --memory-format channels-last`, fwd / bwd ms, pointwise -> direct, with the
        // copies by blocked transposes: pw_64x128 20.8 / 36.9 -> 10.9 / 20.7; 32 x 4 ->
        // 64, 56x56 4.2 / 6.2 -> 0.81 / 2.5; 100 x 16 -> 32, 7x7 0.097 / 0.251 -> 0.033
        // / 0.077; 32 x 256 -> 64, 14x14 2.2 / 5.3 -> 1.0 / 2.2 (with the copies element
        // by element, as before: 54.4 / 114.6, 9.7 / 29.7, 0.57 / 1.37, 7.0 / 11.6).
        let cl_pointwise = columns::pointwise_fits(geo)
            && o.groups == 1
            && o.memory_format == crate::ops::MemoryFormat::ChannelsLast;
        let pointwise = columns::pointwise_fits(geo) && !cl_pointwise;
        let direct = o.groups == 1 && (geo.in_channels >= DIRECT_MIN_CHANNELS || cl_pointwise);
        // Under `DIRECT_MIN_CHANNELS`, the direct input gradient still pays with few
        // output channels per input channel, at stride 1.
        let few_channel_direct_dx = o.groups == 1
            && o.stride == (1, 1)
            && geo.out_channels
                <= DIRECT_DX_FEW_CHANNELS_MAX_OUT_PER_IN.saturating_mul(geo.in_channels);
        // A channels-last output: the direct forward writes it as its kernel produces it,
        // where the others' output is transposed after. Forward ms, 2 threads, Intel Xeon
        // 6/207, direct (channels-last) against phase (channel-major, then the copy to
        // channels-last): 128 x 1 x 28x28 -> 16, 5x5 s2: 0.19 against 1.34; seed_l1
        // 0.14-0.16 against 0.19; nb_32x1x5 1.6 against 5.5 (phase alone, channel-major:
        // 0.20, 0.11, 1.3). 1 thread the same order.
        let direct_forward =
            direct || (o.groups == 1 && o.memory_format == crate::ops::MemoryFormat::ChannelsLast);
        let winograd = winograd::supports(geo);
        let work = |positions: [usize; 3], channels: usize, (min_channels, min_work)| {
            channels >= min_channels
                && positions.iter().fold(channels, |a, &d| a.saturating_mul(d)) >= min_work
        };
        let kernel = Kernel::selected();
        let cpu = CpuInfo::get();
        let pointwise_dw = pointwise
            && geo.out_channels >= POINTWISE_DW_MIN_OUT
            && geo.in_channels >= POINTWISE_DW_MIN_IN;
        let small_pointwise =
            pointwise && direct && pointwise_small_images(geo, kernel, pointwise_dw);
        // Narrower inputs with wide outputs too, but for small images ([`POINTWISE_DW_WIDE_OUT`]).
        let pointwise_dw = pointwise_dw
            || pointwise
                && !small_pointwise
                && geo.batch.saturating_mul(geo.col_cols()) >= POINTWISE_DW_WIDE_MIN_POSITIONS
                && (geo.out_channels >= POINTWISE_DW_WIDE_OUT
                    || geo.out_channels >= POINTWISE_DW_MIN_OUT
                        && geo.in_channels >= POINTWISE_DW_NARROW_MIN_IN);
        let fwd_min_channels = winograd_fwd_min_channels(cpu.microarch, kernel);
        let f4_fits = geo.out_h.min(geo.out_w) >= WINOGRAD_F4_FWD_MIN_OUT_SIDE;
        let image_tiles = geo.out_h.div_ceil(4).saturating_mul(geo.out_w.div_ceil(4));
        let f4_tiles = geo.batch.saturating_mul(image_tiles);
        // Outputs over the floats of their 4x4 tiles, in tenths.
        let f4_fill = (geo.out_h * geo.out_w * 10).checked_div(image_tiles * 16);
        let winograd_forward = winograd
            && (f4_fits || geo.in_channels > WINOGRAD_F4_MAX_CHANNELS)
            && (work(
                [geo.batch, geo.out_h, geo.out_w],
                geo.in_channels,
                (fwd_min_channels, WINOGRAD_FWD_MIN_WORK),
            ) || geo.in_channels >= fwd_min_channels
                && f4_tiles >= WINOGRAD_FWD_MIN_TILES
                && f4_fill >= Some(WINOGRAD_FWD_MIN_FILL_TENTHS)
                && macs >= WINOGRAD_FWD_MIN_MACS);
        let f2_small_outputs = winograd
            && !f4_fits
            && geo.out_h.min(geo.out_w) >= WINOGRAD_F2_FWD_MIN_OUT_SIDE
            && clipped::padding_share(geo) < CLIPPED_MIN_PADDING_SHARE
            && work(
                [geo.batch, geo.out_h, geo.out_w],
                geo.in_channels,
                (fwd_min_channels, WINOGRAD_FWD_MIN_WORK),
            );
        let winograd_dx = winograd
            && geo.in_channels >= WINOGRAD_DX_MIN_IN_CHANNELS
            && work(
                [geo.batch, geo.in_h, geo.in_w],
                geo.out_channels,
                (WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_WORK),
            );
        let chunk_tiles = chunk_images(geo.batch)
            .saturating_mul(geo.out_h.div_ceil(4))
            .saturating_mul(geo.out_w.div_ceil(4));
        let winograd_dw = winograd
            && geo.in_channels.min(geo.out_channels) >= WINOGRAD_DW_MIN_CHANNELS
            && chunk_tiles >= WINOGRAD_DW_MIN_TILES;
        let depthwise = depthwise::supports(geo)
            && o.groups > 1
            && geo.out_channels / geo.in_channels <= DEPTHWISE_MAX_MULTIPLIER;
        // The column paths run channel-major: a channels-last conv on them copies.
        let channels_last = o.memory_format == crate::ops::MemoryFormat::ChannelsLast;
        // The direct forward's packed weights.
        let weights = k
            .saturating_mul(kernel.indirect_ldw(geo.out_channels))
            .saturating_mul(4);
        // The column lowering of the backward passes that do not run direct.
        let (columns_dx, columns_dw) = if pointwise {
            (InputGradAlgo::Pointwise, WeightGradAlgo::Pointwise)
        } else if phase {
            (InputGradAlgo::Phase, WeightGradAlgo::Phase)
        } else {
            (InputGradAlgo::Columns, WeightGradAlgo::Columns)
        };
        ConvPlan {
            // The direct forward beats the column paths on every benchmark shape but 1x1
            // (1 thread, fwd ms, column path -> direct): seed_l2 0.19 -> 0.12, seed_l3
            // 0.16 -> 0.10, seed_l4 0.083 -> 0.064, nb_32x1x5 1.86 -> 1.71, resnet_64
            // 47.5 -> 38.2, resnet_128s2 22.4 -> 17.6, vgg_256 37.7 -> 36.4. A 1x1
            // stride-1 conv is a plain GEMM already, without the direct path's transpose.
            forward: if depthwise {
                ForwardAlgo::Depthwise
            } else if small_pointwise && geo.in_channels >= POINTWISE_DIRECT_FWD_MIN_CHANNELS {
                ForwardAlgo::Direct
            } else if pointwise && pointwise_streams(geo, cpu.l3_bytes) {
                ForwardAlgo::Columns
            } else if pointwise {
                ForwardAlgo::Pointwise
            } else if winograd_forward {
                if geo.in_channels <= WINOGRAD_F4_MAX_CHANNELS {
                    ForwardAlgo::WinogradF4
                } else {
                    ForwardAlgo::WinogradF2
                }
            } else if f2_small_outputs {
                ForwardAlgo::WinogradF2
            } else if direct_forward && strided_pointwise(geo) {
                ForwardAlgo::Columns
            } else if direct_forward {
                let share = clipped::padding_share(geo);
                // A batch the pool cannot share by images: the direct forward shares
                // each image's positions, the clipped one runs its images' blocks
                // (one image: one block, one thread). Zen 4, 2 threads, fwd, direct /
                // clipped: one image of 64 x 14x14 -> 64 0.99, 32 x 28x28 -> 64 5x5
                // 0.62, 16 x 56x56 -> 128 0.56 (F4 takes that one), but 128 x 7x7 ->
                // 128 1.16; three images 0.90-0.97.
                let uneven = parallel && common::splits_images(geo.batch, threads);
                let clipped = share >= CLIPPED_MIN_PADDING_SHARE
                    && (weights <= CLIPPED_MAX_WEIGHT_BYTES
                        || share >= CLIPPED_LARGE_WEIGHTS_MIN_SHARE)
                    && !uneven;
                if clipped {
                    ForwardAlgo::Clipped
                } else if !channels_last && streams_weights(geo, weights, cpu.l2_bytes) {
                    ForwardAlgo::Columns
                } else {
                    ForwardAlgo::Direct
                }
            } else if o.groups == 1 {
                let min_share = if kernel == Kernel::Avx512 && geo.in_channels >= 2 {
                    CLIPPED_MIN_PADDING_SHARE
                } else {
                    CLIPPED_FEW_CHANNELS_MIN_SHARE
                };
                let short_rows = kernel == Kernel::Avx512
                    && geo.in_channels >= 2
                    && geo.out_w < CLIPPED_FEW_CHANNELS_MAX_OUT_W;
                match clipped::padding_share(geo) >= min_share || short_rows {
                    true => ForwardAlgo::Clipped,
                    false => ForwardAlgo::Phase,
                }
            } else {
                ForwardAlgo::Phase
            },
            input_grad: if depthwise {
                InputGradAlgo::Depthwise
            } else if winograd_dx {
                if geo.out_channels <= WINOGRAD_F4_MAX_CHANNELS {
                    InputGradAlgo::WinogradF4
                } else {
                    InputGradAlgo::WinogradF2
                }
            } else if small_pointwise
                || (direct || few_channel_direct_dx) && !pointwise && {
                    let ratio = direct::input_grad_work_ratio(geo);
                    ratio <= DIRECT_DX_MAX_WORK_RATIO
                        || ratio * geo.out_channels as f64 <= DIRECT_DX_MAX_RATIO_TIMES_OUT
                }
            {
                InputGradAlgo::Direct
            } else {
                columns_dx
            },
            // The direct weight gradient serves every groups-of-1 conv; only its input
            // gradient needs several input channels to fill the vectors. 1 thread,
            // weights-only backward ms, columns -> direct: seed_l1 0.38 -> 0.24
            // (N = 100), 4.35 -> 2.48 (N = 1000); nb_32x1x5 3.74 -> 2.62.
            weight_grad: if depthwise {
                WeightGradAlgo::Depthwise
            } else if winograd_dw {
                WeightGradAlgo::WinogradF4
            } else if pointwise_dw {
                WeightGradAlgo::Pointwise
            } else if o.groups == 1 {
                WeightGradAlgo::Direct
            } else {
                columns_dw
            },
            tile_cols,
            // Short output rows gather faster through the map (`plan_sweep`, 2 threads,
            // fwd / bwd ms by rows -> by map: seed_l1 (14 wide) 0.22 / 0.60 -> 0.13 /
            // 0.40, seed_l2 (7) 0.23 / 0.56 -> 0.11 / 0.29, seed_l4 (2) 0.36 / 0.72 ->
            // 0.08 / 0.17); 24-wide rows of nb_32x1x5 copy as fast by rows (fwd 2.2 ms
            // both) and scatter faster by rows (bwd 8.4 ms vs 9.3 ms).
            use_map: geo.out_w <= 16,
            parallel,
            kernel,
        }
    }
}
