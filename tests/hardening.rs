//! Error audit: every public function that can fail, each failure path, and the test
//! that covers it. Every bad call below runs inside `catch_unwind` ([`PANIC_TABLE`] via
//! [`bad_calls_return_typed_errors_and_never_panic`]) and must return the listed
//! [`Error`] variant with a message that names the op (or format) and an offending value.
//!
//! Found with `grep -rn "pub fn" src | grep -B8 "Result<"` (plus the `Layer` trait's
//! `forward` / `backward`). Each row's "test" is the name of its entry (or entries) in
//! the table; the `corrected_*` tests check that the same calls with the fault removed
//! succeed, so an entry cannot pass because the call fails for another reason. The
//! layer rows of the former `tests/nn_errors.rs` are in the same table (`nn_cases`),
//! and the generic layer misuses are checked once per op-case entry
//! ([`every_op_case_layer_rejects_generic_bad_calls`]), so a new layer in
//! `tests/common/ops.rs` is covered without a row here.
//!
//! | function | failure paths | table entries |
//! |---|---|---|
//! | `gemm::sgemm` | inner dims differ; C not (m, n) | `sgemm: *` |
//! | `ops::conv2d` | channels vs weight; stride / dilation / groups 0; groups not dividing; zero kernel; kernel larger than padded input; bias length; output too large to allocate | `conv2d: *` |
//! | `ops::conv2d_backward` | grad_out shape; bad config; channels | `conv2d_backward: *` |
//! | `ops::Conv2dOptions::validate`, `ops::Conv2dGeometry::new` | stride / dilation / groups 0; shapes | `Conv2dOptions::validate: *`, `Conv2dGeometry::new: *` |
//! | `ops::linear`, `ops::linear_backward` | features; bias length; grad_out shape | `linear: *`, `linear_backward: *` |
//! | `ops::adaptive_avg_pool2d` | output size 0; empty spatial dim; output too large | `adaptive_avg_pool2d: *` |
//! | `ops::adaptive_avg_pool2d_backward` | batch / channels mismatch; zero grad size; input too large to allocate | `adaptive_avg_pool2d_backward: *` |
//! | `ops::relu_backward`, `ops::leaky_relu_backward` | grad_out shape | `relu_backward: *`, `leaky_relu_backward: *` |
//! | `ops::max_pool2d`, `avg_pool2d`, `adaptive_max_pool2d` and their backwards | zero kernel / output size; padding above half the kernel; input smaller than the (dilated) kernel; empty input; zero channels; index outside the plane / negative; grad_out shape | `max_pool2d*: *`, `avg_pool2d*: *`, `adaptive_max_pool2d*: *` |
//! | `ops::batch_norm2d`, `batch_norm2d_backward` | eval mode without running statistics; bias length; NaN eps; dy shape | `batch_norm2d*: *` |
//! | `ops::mse`, `ops::mse_backward` | pred rank; target shape; empty | `mse: *`, `mse_backward: *` |
//! | `ops::flatten`, `flatten_shape`, `flatten_backward` | dims out of range / unordered; grad_out shape; sizes overflowing | `flatten*: *` |
//! | `nn::Conv2dConfig::validate`, `Conv2d::new`, `Conv2d::with_init` | stride / groups / kernel; bad init parameters | `Conv2d::new: *`, `Conv2d::with_init: *` |
//! | `nn::Conv2d::from_parts` | weight shape; bias length; bias given / missing vs config | `Conv2d::from_parts: *` |
//! | `nn::Conv2d::geometry` | input that does not fit | `Conv2d::geometry: *` |
//! | `Layer::forward` (every layer of fixed rank in the op-case table) | one dimension fewer | `every_op_case_layer_rejects_generic_bad_calls` (every entry of `tests/common/ops.rs`'s `op_cases()`) |
//! | `Layer::forward` (Conv2d, Linear, AdaptiveAvgPool2d, BatchNorm2d, Flatten) | wrong rank; wrong channels / features; dims out of range | `<Layer>.forward: *`, `Conv2d: channel mismatch`, `BatchNorm2d: *` |
//! | `Layer::backward` (every layer of the op-case table) | before forward; grad_out shape | `every_op_case_layer_rejects_generic_bad_calls`, and `<Layer>.backward: *` for Conv2d, Linear, AdaptiveAvgPool2d, Relu, LeakyRelu, Flatten |
//! | `Layer::backward`, `forward` (Conv2d, Linear, BatchNorm2d) | weight replaced through `weight_mut` | `<Layer>.backward: weight replaced *`, `BatchNorm2d: a weight replaced *` |
//! | `Layer::forward` (every layer) | input or output too large to allocate | `<Layer>.forward: a broadcast input of terabytes`, `<Layer>.forward: an output of terabytes` |
//! | `nn::Linear::new`, `with_init`, `from_parts` | weight / bias shape; bias vs config; bad init | `Linear::*: *` |
//! | `nn::AdaptiveAvgPool2d::new`, `AdaptiveMaxPool2d::new`, `MaxPool2d::new`, `AvgPool2d::new` | output size 0; zero stride / dilation; zero divisor_override | `AdaptiveAvgPool2d*: *`, `AdaptiveMaxPool2d: *`, `MaxPool2d: *`, `AvgPool2d: *` |
//! | `nn::BatchNorm2d::new`, `forward` | no channels; eps < 0; momentum > 1; one value per channel (training, or eval without running statistics) | `BatchNorm2d: *` |
//! | `nn::Dropout::new`, `Dropout2d::new` | p outside [0, 1] | `Dropout: *`, `Dropout2d: *` |
//! | `nn::Sequential::forward`, `backward` | a layer's error (index added); before forward; grad_out shape | `Sequential.*: *` |
//! | `Layer::backward_params`, `nn::Sequential::backward_params` | as `backward`: the same errors, message for message | `tests/backward_params.rs`: `errors_are_backwards` |
//! | `init::Nonlinearity::from_name` | unknown name | `Nonlinearity::from_name: *` |
//! | `init::fans`, `default_bounds`, `kaiming_std`, `xavier_std` | rank < 2; overflow; non-finite a / gain | `fans: *`, `default_bounds: *`, `kaiming_std: *`, `xavier_std: *` |
//! | `init::uniform`, `normal`, `trunc_normal`, `constant` | non-finite / out of f32 range parameters; low > high; std < 0 (trunc: <= 0); a >= b | `uniform: *`, `normal: *`, `trunc_normal: *`, `constant: *` |
//! | `init::kaiming_uniform`, `kaiming_normal`, `xavier_uniform`, `xavier_normal`, `orthogonal`, `pytorch_default_reset` | rank < 2; non-finite a / gain | one entry each |
//! | `init::Init::apply`, `apply_with_bias` | the scheme's own checks; bad bias rule | `Init::apply: *`, `Init::apply_with_bias: *` |
//! | `stats::to_images` | width not a square; zero width | `to_images: *` |
//! | `data::pickle::from_reader`, `load` | empty; truncated; unknown opcode / protocol; stack underflow; no MARK; memo miss; negative / lying lengths; bad UTF-8; odd dict; append to non-list; unsupported globals, opcodes, dtypes, wide ints; nesting too deep; recursive structures; more than 5 call arguments; array data length; pending array; bad gzip (garbage, truncated, CRC); pickle bomb (result expansion; copies of shared keys / strings: `tests/regressions`); missing file | `pickle: *` |
//! | `data::idx::from_reader`, `load` | truncated magic / dims / data; bad magic; type code; zero dims; trailing bytes; too large; bad gzip; missing file | `idx: *` |
//! | `data::Mnist::from_value`, `from_pickle_reader`, `load`, `from_idx_dir` | not 3 splits; split not (x, y); x not 2-D f32; y not 1-D ints; counts differ; bad pickle; missing files; too few train images; wrong IDX types / ranks | `mnist: *` |
//!
//! `ops::relu`, `ops::leaky_relu` and their backwards fail only to allocate: the
//! `alloc_cases` rows. Functions that cannot fail on any input and so are not in the
//! table: `stats::stats` (NaN for empty input, as torch), `stats::normalize`,
//! `init::zeros`, `init::ones`, `init::calculate_gain`, `ops::conv_out_size` (returns
//! `None`).

mod common;

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use convinit::Error;
use convinit::data::{Mnist, Value, idx, pickle};
use convinit::gemm::sgemm;
use convinit::init::{
    self, BiasInit, FanMode, Init, Nonlinearity, constant, default_bounds, fans, kaiming_normal,
    kaiming_std, kaiming_uniform, normal, orthogonal, pytorch_default_reset, trunc_normal, uniform,
    xavier_normal, xavier_std, xavier_uniform,
};
use convinit::nn::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, BatchNorm2dConfig, Conv2d,
    Conv2dConfig, Dropout, Dropout2d, Flatten, GeneralRelu, Layer, LeakyRelu, Linear, LinearConfig,
    MaxPool2d, Relu, Sequential,
};
use convinit::ops::{
    AvgPool2dOptions, BatchNormOptions, Conv2dGeometry, Conv2dOptions, ConvAlgorithm, ConvAlgos,
    MaxPool2dOptions, MemoryFormat, adaptive_avg_pool2d, adaptive_avg_pool2d_backward,
    adaptive_max_pool2d, adaptive_max_pool2d_backward, avg_pool2d, avg_pool2d_backward,
    batch_norm2d, batch_norm2d_backward, conv2d, conv2d_backward, flatten, flatten_backward,
    flatten_shape, leaky_relu, leaky_relu_backward, linear, linear_backward, max_pool2d,
    max_pool2d_backward, mse, mse_backward, relu, relu_backward, to_memory_format,
};
use convinit::stats::to_images;
use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The error variants, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    Io,
    Truncated,
    InvalidData,
    Unsupported,
    Shape,
    Config,
    State,
    Alloc,
}

fn variant(e: &Error) -> Option<V> {
    Some(match e {
        Error::Io { .. } => V::Io,
        Error::Truncated { .. } => V::Truncated,
        Error::InvalidData { .. } => V::InvalidData,
        Error::Unsupported { .. } => V::Unsupported,
        Error::Shape { .. } => V::Shape,
        Error::Config { .. } => V::Config,
        Error::State { .. } => V::State,
        Error::Alloc { .. } => V::Alloc,
        _ => return None,
    })
}

type Call = Box<dyn Fn() -> Result<(), Error>>;

/// One bad call: its name, the call, the variant it must return, and substrings its
/// message must contain (the op or format first, then the offending values).
struct Case {
    name: &'static str,
    call: Call,
    want: V,
    needles: &'static [&'static str],
}

fn case<T>(
    name: &'static str,
    want: V,
    needles: &'static [&'static str],
    f: impl Fn() -> Result<T, Error> + 'static,
) -> Case {
    Case {
        name,
        call: Box::new(move || f().map(drop)),
        want,
        needles,
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0)
}

fn ones4(shape: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::ones(shape)
}

fn ones_d(shape: &[usize]) -> ArrayD<f32> {
    ArrayD::ones(IxDyn(shape))
}

fn opts() -> Conv2dOptions {
    Conv2dOptions::new()
}

fn conv(cfg: Conv2dConfig) -> Conv2d {
    Conv2d::new(cfg, &mut rng()).unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn pkl(bytes: &'static [u8]) -> impl Fn() -> Result<Value, Error> {
    move || pickle::from_reader(bytes)
}

fn pkl_owned(bytes: Vec<u8>) -> impl Fn() -> Result<Value, Error> {
    move || pickle::from_reader(&bytes[..])
}

fn idx_owned(bytes: Vec<u8>) -> impl Fn() -> Result<convinit::data::NdArray, Error> {
    move || idx::from_reader(&bytes[..])
}

/// A protocol 2 pickle of one numpy array, as numpy writes it: `_reconstruct`, then
/// `BUILD` with `(1, shape, dtype, False, data)`. `shape` is pickle ops for the tuple.
fn np_array(shape_ops: &[u8], descr: &[u8], data: &[u8]) -> Vec<u8> {
    let mut p = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01"
        .to_vec();
    p.extend_from_slice(shape_ops);
    p.extend_from_slice(b"cnumpy\ndtype\nU");
    p.push(descr.len() as u8);
    p.extend_from_slice(descr);
    p.extend_from_slice(b"K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
    p.extend_from_slice(b"\x89T");
    p.extend_from_slice(&(data.len() as u32).to_le_bytes());
    p.extend_from_slice(data);
    p.extend_from_slice(b"tb.");
    p
}

fn f32_array(shape: &[usize]) -> Value {
    Value::Array(ArrayD::<f32>::zeros(IxDyn(shape)).into())
}

fn i64_array(shape: &[usize]) -> Value {
    Value::Array(ArrayD::<i64>::zeros(IxDyn(shape)).into())
}

fn split(x: Value, y: Value) -> Value {
    Value::Tuple(vec![x, y])
}

fn good_split() -> Value {
    split(f32_array(&[3, 4]), i64_array(&[3]))
}

fn mnist_with(train: Value) -> Value {
    Value::Tuple(vec![train, good_split(), good_split()])
}

fn idx_bytes(code: u8, shape: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, code, shape.len() as u8];
    for d in shape {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Loads MNIST from a scratch directory holding the four IDX files (see `idx_dir`),
/// then removes the directory.
fn load_idx_dir(
    tag: &str,
    train_n: u32,
    images_code: u8,
    labels_code: u8,
    images_3d: bool,
) -> Result<Mnist, Error> {
    let dir = idx_dir(tag, train_n, images_code, labels_code, images_3d);
    let loaded = Mnist::from_idx_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

/// A directory with the four MNIST IDX files, `train_n` training images of 2 x 2
/// pixels; `images_code` / `labels_code` pick the IDX types.
fn idx_dir(
    tag: &str,
    train_n: u32,
    images_code: u8,
    labels_code: u8,
    images_3d: bool,
) -> std::path::PathBuf {
    // One directory per call: tests run the table on several threads at once.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "convinit-hardening-{tag}-{}-{call}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (prefix, n) in [("train", train_n), ("t10k", 3)] {
        let shape: Vec<u32> = if images_3d { vec![n, 2, 2] } else { vec![n, 4] };
        let images = idx_bytes(images_code, &shape, &vec![1; n as usize * 4]);
        let labels = idx_bytes(labels_code, &[n], &vec![1; n as usize]);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    dir
}

/// The table of bad calls.
#[allow(clippy::too_many_lines)]
fn table() -> Vec<Case> {
    use V::*;
    let mut t = vec![
        // ------------------------------------------------------------------ gemm
        case(
            "sgemm: inner dims differ",
            Shape,
            &["sgemm", "(2, 3)", "(4, 5)"],
            || {
                let mut c = Array2::<f32>::zeros((2, 5));
                sgemm(
                    1.0,
                    Array2::zeros((2, 3)).view(),
                    Array2::zeros((4, 5)).view(),
                    0.0,
                    c.view_mut(),
                )
            },
        ),
        case(
            "sgemm: C not (m, n)",
            Shape,
            &["sgemm", "(3, 4)", "(3, 3)"],
            || {
                let mut c = Array2::<f32>::zeros((3, 3));
                sgemm(
                    1.0,
                    Array2::zeros((2, 3)).view(),
                    Array2::zeros((3, 4)).view(),
                    0.0,
                    c.view_mut(),
                )
            },
        ),
        // ------------------------------------------------------------------ conv2d
        case(
            "conv2d: channels differ from weight",
            Shape,
            &["conv2d", "[1, 3, 5, 5]", "[2, 2, 3, 3]"],
            || {
                conv2d(
                    ones4((1, 3, 5, 5)).view(),
                    ones4((2, 2, 3, 3)).view(),
                    None,
                    &opts(),
                )
            },
        ),
        case(
            "conv2d: zero stride",
            Config,
            &["conv2d", "stride", "(0, 1)"],
            || {
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_stride((0, 1)),
                )
            },
        ),
        case(
            "conv2d: zero dilation",
            Config,
            &["conv2d", "dilation", "(1, 0)"],
            || {
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_dilation((1, 0)),
                )
            },
        ),
        case(
            "conv2d: zero groups",
            Config,
            &["conv2d", "groups", "0"],
            || {
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_groups(0),
                )
            },
        ),
        case(
            "conv2d: groups not dividing channels",
            Config,
            &["conv2d", "groups 2", "[1, 3, 5, 5]", "[2, 1, 3, 3]"],
            || {
                conv2d(
                    ones4((1, 3, 5, 5)).view(),
                    ones4((2, 1, 3, 3)).view(),
                    None,
                    &opts().with_groups(2),
                )
            },
        ),
        case(
            "conv2d: zero-sized kernel",
            Config,
            &["conv2d", "kernel", "[1, 1, 0, 3]"],
            || {
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((1, 1, 0, 3)).view(),
                    None,
                    &opts(),
                )
            },
        ),
        case(
            "conv2d: kernel larger than padded input",
            Shape,
            &["conv2d", "[1, 1, 2, 2]", "[1, 1, 5, 5]", "does not fit"],
            || {
                conv2d(
                    ones4((1, 1, 2, 2)).view(),
                    ones4((1, 1, 5, 5)).view(),
                    None,
                    &opts().with_padding((1, 1)),
                )
            },
        ),
        case(
            "conv2d: dilated kernel larger than input",
            Shape,
            &["conv2d", "dilation", "(3, 1)", "[1, 1, 6, 6]"],
            || {
                conv2d(
                    ones4((1, 1, 6, 6)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_dilation((3, 1)),
                )
            },
        ),
        case(
            "conv2d: bias length",
            Shape,
            &["conv2d", "bias has length 3", "2 output channels"],
            || {
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((2, 1, 3, 3)).view(),
                    Some(Array1::zeros(3).view()),
                    &opts(),
                )
            },
        ),
        case(
            "conv2d: output too large to allocate",
            Shape,
            &["conv2d", "[1, 1, 1, 1]", "too large"],
            || {
                conv2d(
                    ones4((1, 1, 1, 1)).view(),
                    ones4((1, 1, 1, 1)).view(),
                    None,
                    &opts().with_padding((1 << 30, 1 << 30)),
                )
            },
        ),
        case(
            "conv2d_backward: grad_out shape",
            Shape,
            &["conv2d", "grad_out", "[1, 2, 4, 4]", "(1, 2, 3, 3)"],
            || {
                conv2d_backward(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((2, 1, 3, 3)).view(),
                    true,
                    ones4((1, 2, 4, 4)).view(),
                    &opts(),
                )
            },
        ),
        case(
            "conv2d_backward: zero stride",
            Config,
            &["conv2d", "stride", "(1, 0)"],
            || {
                conv2d_backward(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    false,
                    ones4((1, 1, 3, 3)).view(),
                    &opts().with_stride((1, 0)),
                )
            },
        ),
        case(
            "conv2d_backward: channels differ",
            Shape,
            &["conv2d", "[1, 2, 5, 5]", "[1, 1, 3, 3]"],
            || {
                conv2d_backward(
                    ones4((1, 2, 5, 5)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    false,
                    ones4((1, 1, 3, 3)).view(),
                    &opts(),
                )
            },
        ),
        case(
            "Conv2dOptions::validate: zero stride",
            Config,
            &["myop", "stride", "(0, 0)"],
            || opts().with_stride((0, 0)).validate("myop"),
        ),
        case(
            "Conv2dOptions::validate: zero groups",
            Config,
            &["myop", "groups", "0"],
            || opts().with_groups(0).validate("myop"),
        ),
        case(
            "Conv2dGeometry::new: groups not dividing outputs",
            Config,
            &["geo", "groups 2", "[3, 1, 1, 1]"],
            || Conv2dGeometry::new("geo", [1, 2, 4, 4], [3, 1, 1, 1], &opts().with_groups(2)),
        ),
        case(
            "Conv2dGeometry::new: buffers overflow usize",
            Shape,
            &["geo", "too large"],
            || {
                Conv2dGeometry::new(
                    "geo",
                    [usize::MAX / 2, 1, 1, 1],
                    [usize::MAX / 2, 1, 1, 1],
                    &opts(),
                )
            },
        ),
        // ------------------------------------------------------------------ linear
        case(
            "linear: features differ",
            Shape,
            &["linear", "[2, 3]", "[4, 5]"],
            || {
                linear(
                    Array2::zeros((2, 3)).view(),
                    Array2::zeros((4, 5)).view(),
                    None,
                )
            },
        ),
        case(
            "linear: bias length",
            Shape,
            &["linear", "bias has length 2", "[4, 3]"],
            || {
                linear(
                    Array2::zeros((2, 3)).view(),
                    Array2::zeros((4, 3)).view(),
                    Some(Array1::zeros(2).view()),
                )
            },
        ),
        case(
            "linear_backward: grad_out shape",
            Shape,
            &["linear", "grad_out", "[2, 5]", "(2, 4)"],
            || {
                linear_backward(
                    Array2::zeros((2, 3)).view(),
                    Array2::zeros((4, 3)).view(),
                    true,
                    Array2::zeros((2, 5)).view(),
                )
            },
        ),
        case(
            "linear_backward: features differ",
            Shape,
            &["linear", "[2, 2]", "[4, 3]"],
            || {
                linear_backward(
                    Array2::zeros((2, 2)).view(),
                    Array2::zeros((4, 3)).view(),
                    true,
                    Array2::zeros((2, 4)).view(),
                )
            },
        ),
        // ------------------------------------------------------------------ pooling
        case(
            "adaptive_avg_pool2d: zero output size",
            Config,
            &["adaptive_avg_pool2d", "(0, 2)", "[1, 1, 4, 4]"],
            || adaptive_avg_pool2d(ones4((1, 1, 4, 4)).view(), (0, 2)),
        ),
        case(
            "adaptive_avg_pool2d: empty spatial dim",
            Shape,
            &["adaptive_avg_pool2d", "[1, 1, 0, 4]"],
            || adaptive_avg_pool2d(Array4::zeros((1, 1, 0, 4)).view(), (1, 1)),
        ),
        case(
            "adaptive_avg_pool2d: output too large",
            Config,
            &["adaptive_avg_pool2d", "too large", "[1, 1, 4, 4]"],
            || adaptive_avg_pool2d(ones4((1, 1, 4, 4)).view(), (usize::MAX, 1)),
        ),
        case(
            "adaptive_avg_pool2d_backward: batch differs",
            Shape,
            &["adaptive_avg_pool2d", "[2, 1, 1, 1]", "[1, 1, 4, 4]"],
            || adaptive_avg_pool2d_backward((1, 1, 4, 4), ones4((2, 1, 1, 1)).view()),
        ),
        case(
            "adaptive_avg_pool2d_backward: empty grad_out",
            Config,
            &["adaptive_avg_pool2d", "(0, 1)"],
            || adaptive_avg_pool2d_backward((1, 1, 4, 4), Array4::zeros((1, 1, 0, 1)).view()),
        ),
        case(
            "adaptive_avg_pool2d_backward: input too large to allocate",
            Shape,
            &["adaptive_avg_pool2d", "too large", "4611686018427387904"],
            || adaptive_avg_pool2d_backward((1, 1, 1 << 62, 1), ones4((1, 1, 1, 1)).view()),
        ),
        // ------------------------------------------------------------------ activations, mse
        case(
            "relu_backward: grad_out shape",
            Shape,
            &["relu", "[3]", "[2]"],
            || relu_backward(Array1::<f32>::zeros(2).view(), Array1::zeros(3).view()),
        ),
        case(
            "relu_backward: 4-D shapes differ",
            Shape,
            &["relu", "[1, 1, 2, 3]", "[1, 1, 3, 2]"],
            || relu_backward(ones4((1, 1, 3, 2)).view(), ones4((1, 1, 2, 3)).view()),
        ),
        case(
            "leaky_relu_backward: grad_out shape",
            Shape,
            &["leaky_relu", "[1, 4]", "[4, 1]"],
            || {
                leaky_relu_backward(
                    Array2::<f32>::zeros((4, 1)).view(),
                    Array2::zeros((1, 4)).view(),
                    0.1,
                )
            },
        ),
        case("mse: pred rank", Shape, &["mse", "[2, 2]"], || {
            mse(
                Array2::<f32>::zeros((2, 2)).view(),
                Array1::<f32>::zeros(2).view(),
            )
        }),
        case("mse: target shape", Shape, &["mse", "[3]", "[4]"], || {
            mse(
                Array1::<f32>::zeros(3).view(),
                Array1::<f32>::zeros(4).view(),
            )
        }),
        case("mse: empty", Shape, &["mse", "empty", "[0]"], || {
            mse(
                Array1::<f32>::zeros(0).view(),
                Array1::<f32>::zeros(0).view(),
            )
        }),
        case(
            "mse_backward: target shape",
            Shape,
            &["mse", "[3, 1]", "[3, 1]"],
            || {
                mse_backward(
                    Array2::<f32>::zeros((3, 1)).view(),
                    Array2::<f32>::zeros((3, 1)).view(),
                )
            },
        ),
        // ------------------------------------------------------------------ flatten
        case(
            "flatten: start_dim out of range",
            Shape,
            &["flatten", "start_dim 4", "[1, 2, 3]"],
            || flatten(ones_d(&[1, 2, 3]).view(), 4, -1),
        ),
        case(
            "flatten: unordered dims",
            Shape,
            &["flatten", "start_dim 2", "end_dim 1"],
            || flatten(ones_d(&[1, 2, 3]).view(), 2, 1),
        ),
        case(
            "flatten_shape: end_dim below -rank",
            Shape,
            &["flatten", "end_dim -5", "[2, 2]"],
            || flatten_shape(&[2, 2], 0, -5),
        ),
        case(
            "flatten_backward: grad_out shape",
            Shape,
            &["flatten", "[2, 5]", "[2, 6]"],
            || flatten_backward(&[2, 2, 3], ones_d(&[2, 5]).view(), 1, -1),
        ),
        case(
            "flatten_backward: input shape overflows",
            Shape,
            &["flatten", "[4294967296, 4294967296]"],
            || flatten_backward(&[1 << 32, 1 << 32], ones_d(&[1]).view(), 0, -1),
        ),
        // ------------------------------------------------------------------ nn::Conv2d
        case(
            "Conv2d::new: groups not dividing",
            Config,
            &["Conv2d", "groups 2", "in_channels 3"],
            || Conv2d::new(Conv2dConfig::new(3, 4, (3, 3)).with_groups(2), &mut rng()),
        ),
        case(
            "Conv2d::new: zero kernel",
            Config,
            &["Conv2d", "kernel", "(0, 3)"],
            || Conv2d::new(Conv2dConfig::new(1, 1, (0, 3)), &mut rng()),
        ),
        case(
            "Conv2d::new: zero stride",
            Config,
            &["Conv2d", "stride", "(0, 2)"],
            || {
                Conv2d::new(
                    Conv2dConfig::new(1, 1, (3, 3)).with_stride((0, 2)),
                    &mut rng(),
                )
            },
        ),
        case(
            "Conv2d::new: zero groups",
            Config,
            &["Conv2d", "groups", "0"],
            || Conv2d::new(Conv2dConfig::new(1, 1, (3, 3)).with_groups(0), &mut rng()),
        ),
        case(
            "Conv2d::with_init: low > high",
            Config,
            &["uniform", "low = 2", "high = 1"],
            || {
                Conv2d::with_init(
                    Conv2dConfig::new(1, 1, (3, 3)),
                    &Init::Uniform {
                        low: 2.0,
                        high: 1.0,
                    },
                    &mut rng(),
                )
            },
        ),
        case(
            "Conv2d::from_parts: weight shape",
            Shape,
            &["Conv2d", "[2, 1, 5, 5]", "(2, 1, 3, 3)"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 2, (3, 3)),
                    Array4::zeros((2, 1, 5, 5)),
                    Some(Array1::zeros(2)),
                )
            },
        ),
        case(
            "Conv2d::from_parts: bias length",
            Shape,
            &["Conv2d", "bias has length 3", "2 outputs"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 2, (3, 3)),
                    Array4::zeros((2, 1, 3, 3)),
                    Some(Array1::zeros(3)),
                )
            },
        ),
        case(
            "Conv2d::from_parts: bias missing",
            Config,
            &["Conv2d", "config.bias is true", "not given"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 2, (3, 3)),
                    Array4::zeros((2, 1, 3, 3)),
                    None,
                )
            },
        ),
        case(
            "Conv2d::from_parts: bias unexpected",
            Config,
            &["Conv2d", "config.bias is false"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 2, (3, 3)).with_bias(false),
                    Array4::zeros((2, 1, 3, 3)),
                    Some(Array1::zeros(2)),
                )
            },
        ),
        case(
            "Conv2d::from_parts: bad config",
            Config,
            &["Conv2d", "dilation", "(0, 1)"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 2, (3, 3)).with_dilation((0, 1)),
                    Array4::zeros((2, 1, 3, 3)),
                    Some(Array1::zeros(2)),
                )
            },
        ),
        case(
            "Conv2d::geometry: input too small",
            Shape,
            &["Conv2d", "[1, 1, 2, 2]", "[1, 1, 3, 3]"],
            || conv(Conv2dConfig::new(1, 1, (3, 3))).geometry([1, 1, 2, 2]),
        ),
        case(
            "Conv2d.forward: rank 3 input",
            Shape,
            &["Conv2d", "(N, C, H, W)", "[1, 5, 5]"],
            || conv(Conv2dConfig::new(1, 1, (3, 3))).forward(ones_d(&[1, 5, 5]).view()),
        ),
        case(
            "Conv2d.forward: channels",
            Shape,
            &["conv2d", "[1, 2, 5, 5]", "[1, 1, 3, 3]"],
            || conv(Conv2dConfig::new(1, 1, (3, 3))).forward(ones_d(&[1, 2, 5, 5]).view()),
        ),
        case(
            "Conv2d.backward: before forward",
            State,
            &["Conv2d", "backward called before forward"],
            || conv(Conv2dConfig::new(1, 1, (3, 3))).backward(ones_d(&[1, 1, 3, 3]).view()),
        ),
        case(
            "Conv2d.backward: grad_out shape",
            Shape,
            &["Conv2d", "[1, 1, 4, 4]", "[1, 1, 3, 3]"],
            || {
                let mut c = conv(Conv2dConfig::new(1, 1, (3, 3)));
                c.forward(ones_d(&[1, 1, 5, 5]).view())?;
                c.backward(ones_d(&[1, 1, 4, 4]).view())
            },
        ),
        case(
            "Conv2d.backward: weight replaced by another shape",
            Shape,
            &["Conv2d", "[4, 1, 3, 3]", "[2, 1, 3, 3]"],
            || {
                let mut c = conv(Conv2dConfig::new(1, 2, (3, 3)).with_bias(false));
                *c.weight_mut() = Array4::ones((4, 1, 3, 3));
                c.forward(ones_d(&[1, 1, 5, 5]).view())?;
                c.backward(ones_d(&[1, 4, 3, 3]).view())
            },
        ),
        // ------------------------------------------------------------------ nn::Linear
        case(
            "Linear::from_parts: weight shape",
            Shape,
            &["Linear", "[3, 2]", "(2, 3)"],
            || {
                Linear::from_parts(
                    LinearConfig::new(3, 2),
                    Array2::zeros((3, 2)),
                    Some(Array1::zeros(2)),
                )
            },
        ),
        case(
            "Linear::from_parts: bias length",
            Shape,
            &["Linear", "bias has length 5", "2 outputs"],
            || {
                Linear::from_parts(
                    LinearConfig::new(3, 2),
                    Array2::zeros((2, 3)),
                    Some(Array1::zeros(5)),
                )
            },
        ),
        case(
            "Linear::from_parts: bias missing",
            Config,
            &["Linear", "config.bias is true"],
            || Linear::from_parts(LinearConfig::new(3, 2), Array2::zeros((2, 3)), None),
        ),
        case(
            "Linear::with_init: negative std",
            Config,
            &["normal", "std = -1"],
            || {
                Linear::with_init(
                    LinearConfig::new(3, 2),
                    &Init::Normal {
                        mean: 0.0,
                        std: -1.0,
                    },
                    &mut rng(),
                )
            },
        ),
        case(
            "Linear::with_init: orthogonal gain NaN",
            Config,
            &["orthogonal", "gain = NaN"],
            || {
                Linear::with_init(
                    LinearConfig::new(3, 2),
                    &Init::Orthogonal { gain: f64::NAN },
                    &mut rng(),
                )
            },
        ),
        case(
            "Linear.forward: rank 3 input",
            Shape,
            &["Linear", "(N, in_features)", "[2, 3, 1]"],
            || Linear::new(LinearConfig::new(3, 2), &mut rng())?.forward(ones_d(&[2, 3, 1]).view()),
        ),
        case(
            "Linear.forward: features",
            Shape,
            &["linear", "[2, 4]", "[2, 3]"],
            || Linear::new(LinearConfig::new(3, 2), &mut rng())?.forward(ones_d(&[2, 4]).view()),
        ),
        case(
            "Linear.backward: before forward",
            State,
            &["Linear", "backward called before forward"],
            || Linear::new(LinearConfig::new(3, 2), &mut rng())?.backward(ones_d(&[2, 2]).view()),
        ),
        case(
            "Linear.backward: grad_out shape",
            Shape,
            &["Linear", "[2, 3]", "[2, 2]"],
            || {
                let mut l = Linear::new(LinearConfig::new(3, 2), &mut rng())?;
                l.forward(ones_d(&[2, 3]).view())?;
                l.backward(ones_d(&[2, 3]).view())
            },
        ),
        case(
            "Linear.backward: weight replaced by another shape",
            Shape,
            &["Linear", "[5, 3]", "[2, 3]"],
            || {
                let mut l = Linear::new(LinearConfig::new(3, 2).with_bias(false), &mut rng())?;
                *l.weight_mut() = Array2::ones((5, 3));
                l.forward(ones_d(&[2, 3]).view())?;
                l.backward(ones_d(&[2, 5]).view())
            },
        ),
        // ------------------------------------------------------------------ other layers
        case(
            "AdaptiveAvgPool2d::new: zero output",
            Config,
            &["AdaptiveAvgPool2d", "(1, 0)"],
            || AdaptiveAvgPool2d::new((1, 0)),
        ),
        case(
            "AdaptiveAvgPool2d.forward: rank 2 input",
            Shape,
            &["AdaptiveAvgPool2d", "[4, 4]"],
            || AdaptiveAvgPool2d::new((1, 1))?.forward(ones_d(&[4, 4]).view()),
        ),
        case(
            "AdaptiveAvgPool2d.backward: before forward",
            State,
            &["AdaptiveAvgPool2d", "before forward"],
            || AdaptiveAvgPool2d::new((1, 1))?.backward(ones_d(&[1, 1, 1, 1]).view()),
        ),
        case(
            "AdaptiveAvgPool2d.backward: grad_out shape",
            Shape,
            &["AdaptiveAvgPool2d", "[1, 1, 2, 2]", "[1, 1, 1, 1]"],
            || {
                let mut p = AdaptiveAvgPool2d::new((1, 1))?;
                p.forward(ones_d(&[1, 1, 4, 4]).view())?;
                p.backward(ones_d(&[1, 1, 2, 2]).view())
            },
        ),
        case(
            "Relu.backward: before forward",
            State,
            &["ReLU", "before forward"],
            || Relu::new().backward(ones_d(&[2]).view()),
        ),
        case(
            "Relu.backward: grad_out shape",
            Shape,
            &["ReLU", "[3]", "[2]"],
            || {
                let mut r = Relu::new();
                r.forward(ones_d(&[2]).view())?;
                r.backward(ones_d(&[3]).view())
            },
        ),
        case(
            "LeakyRelu.backward: before forward",
            State,
            &["LeakyReLU", "before forward"],
            || LeakyRelu::new(0.1).backward(ones_d(&[2]).view()),
        ),
        case(
            "LeakyRelu.backward: grad_out shape",
            Shape,
            &["LeakyReLU", "[2, 1]", "[2]"],
            || {
                let mut r = LeakyRelu::new(0.1);
                r.forward(ones_d(&[2]).view())?;
                r.backward(ones_d(&[2, 1]).view())
            },
        ),
        case(
            "Flatten.forward: dims out of range",
            Shape,
            &["flatten", "start_dim 3", "[2, 2]"],
            || Flatten::new(3, -1).forward(ones_d(&[2, 2]).view()),
        ),
        case(
            "Flatten.backward: before forward",
            State,
            &["Flatten", "before forward"],
            || Flatten::new(1, -1).backward(ones_d(&[2, 4]).view()),
        ),
        case(
            "Flatten.backward: grad_out shape",
            Shape,
            &["flatten", "[2, 5]", "[2, 4]"],
            || {
                let mut f = Flatten::new(1, -1);
                f.forward(ones_d(&[2, 2, 2]).view())?;
                f.backward(ones_d(&[2, 5]).view())
            },
        ),
        case(
            "Sequential.forward: a layer's error names the layer",
            Shape,
            &["Conv2d", "layer 1", "[1, 2, 5, 5]"],
            || {
                Sequential::new()
                    .with(Relu::new())
                    .with(conv(Conv2dConfig::new(1, 1, (3, 3))))
                    .forward(ones_d(&[1, 2, 5, 5]).view())
            },
        ),
        case(
            "Sequential.backward: before forward",
            State,
            &["Conv2d", "layer 0", "before forward"],
            || {
                Sequential::new()
                    .with(conv(Conv2dConfig::new(1, 1, (3, 3))))
                    .backward(ones_d(&[1, 1, 3, 3]).view())
            },
        ),
        case(
            "Sequential.backward: grad_out shape",
            Shape,
            &["Linear", "layer 0", "[1, 3]", "[1, 2]"],
            || {
                let mut s =
                    Sequential::new().with(Linear::new(LinearConfig::new(3, 2), &mut rng())?);
                s.forward(ones_d(&[1, 3]).view())?;
                s.backward(ones_d(&[1, 3]).view())
            },
        ),
        // ------------------------------------------------------------------ init
        case(
            "Nonlinearity::from_name: unknown",
            Config,
            &["calculate_gain", "\"gelu\""],
            || Nonlinearity::from_name("gelu"),
        ),
        case("fans: rank 1", Shape, &["fans", "[5]"], || fans(&[5])),
        case(
            "fans: overflow",
            Shape,
            &["fans", "overflow", "18446744073709551615"],
            || fans(&[2, 2, usize::MAX, 2]),
        ),
        case("default_bounds: rank 0", Shape, &["fans", "[]"], || {
            default_bounds(&[])
        }),
        case(
            "kaiming_std: rank 1",
            Shape,
            &["kaiming_std", "[3]"],
            || kaiming_std(&[3], FanMode::FanIn, Nonlinearity::Relu),
        ),
        case(
            "kaiming_std: a not finite",
            Config,
            &["kaiming_std", "a = inf"],
            || {
                kaiming_std(
                    &[3, 3],
                    FanMode::FanIn,
                    Nonlinearity::LeakyRelu(f64::INFINITY),
                )
            },
        ),
        case(
            "xavier_std: gain NaN",
            Config,
            &["xavier", "gain", "NaN"],
            || xavier_std(&[3, 3], f64::NAN),
        ),
        case("xavier_std: rank 1", Shape, &["xavier", "[3]"], || {
            xavier_std(&[3], 1.0)
        }),
        case(
            "uniform: low > high",
            Config,
            &["uniform", "low = 1", "high = 0"],
            || uniform(Array1::<f32>::zeros(3).view_mut(), 1.0, 0.0, &mut rng()),
        ),
        case(
            "uniform: NaN low",
            Config,
            &["uniform", "low = NaN"],
            || {
                uniform(
                    Array1::<f32>::zeros(3).view_mut(),
                    f64::NAN,
                    0.0,
                    &mut rng(),
                )
            },
        ),
        case(
            "uniform: beyond f32",
            Config,
            &["uniform", "high = 1000000000000000000000", "f32"],
            || uniform(Array1::<f32>::zeros(3).view_mut(), 0.0, 1e300, &mut rng()),
        ),
        case(
            "uniform: range overflows f32",
            Config,
            &[
                "uniform",
                "overflows",
                "low = -300000000000000000000000000000000000000",
            ],
            || uniform(Array1::<f32>::zeros(3).view_mut(), -3e38, 3e38, &mut rng()),
        ),
        case(
            "normal: negative std",
            Config,
            &["normal", "std = -0.5"],
            || normal(Array1::<f32>::zeros(3).view_mut(), 0.0, -0.5, &mut rng()),
        ),
        case(
            "normal: infinite mean",
            Config,
            &["normal", "mean = inf"],
            || {
                normal(
                    Array1::<f32>::zeros(3).view_mut(),
                    f64::INFINITY,
                    1.0,
                    &mut rng(),
                )
            },
        ),
        case(
            "trunc_normal: a >= b",
            Config,
            &["trunc_normal", "a = 2", "b = -2"],
            || {
                trunc_normal(
                    Array1::<f32>::zeros(3).view_mut(),
                    0.0,
                    1.0,
                    2.0,
                    -2.0,
                    &mut rng(),
                )
            },
        ),
        case(
            "trunc_normal: zero std",
            Config,
            &["trunc_normal", "std = 0"],
            || {
                trunc_normal(
                    Array1::<f32>::zeros(3).view_mut(),
                    0.0,
                    0.0,
                    -2.0,
                    2.0,
                    &mut rng(),
                )
            },
        ),
        case(
            "constant: NaN",
            Config,
            &["constant", "value = NaN"],
            || constant(Array1::<f32>::zeros(3).view_mut(), f64::NAN),
        ),
        case(
            "kaiming_uniform: rank 1",
            Shape,
            &["kaiming_uniform", "[4]"],
            || {
                kaiming_uniform(
                    Array1::<f32>::zeros(4).view_mut(),
                    FanMode::FanIn,
                    Nonlinearity::Relu,
                    &mut rng(),
                )
            },
        ),
        case(
            "kaiming_normal: a NaN",
            Config,
            &["kaiming_normal", "a = NaN"],
            || {
                kaiming_normal(
                    Array2::<f32>::zeros((2, 2)).view_mut(),
                    FanMode::FanOut,
                    Nonlinearity::LeakyRelu(f64::NAN),
                    &mut rng(),
                )
            },
        ),
        case(
            "xavier_uniform: rank 1",
            Shape,
            &["xavier_uniform", "[4]"],
            || xavier_uniform(Array1::<f32>::zeros(4).view_mut(), 1.0, &mut rng()),
        ),
        case(
            "xavier_normal: gain inf",
            Config,
            &["xavier_normal", "gain", "inf"],
            || {
                xavier_normal(
                    Array2::<f32>::zeros((2, 2)).view_mut(),
                    f64::INFINITY,
                    &mut rng(),
                )
            },
        ),
        case("orthogonal: rank 1", Shape, &["orthogonal", "[4]"], || {
            orthogonal(Array1::<f32>::zeros(4).view_mut(), 1.0, &mut rng())
        }),
        case(
            "pytorch_default_reset: rank 1",
            Shape,
            &["pytorch_default_reset", "[4]"],
            || {
                pytorch_default_reset(
                    ArrayD::<f32>::zeros(IxDyn(&[4])).view_mut(),
                    None,
                    &mut rng(),
                )
            },
        ),
        case(
            "Init::apply: trunc_normal a >= b",
            Config,
            &["trunc_normal", "a = 1", "b = 1"],
            || {
                Init::TruncNormal {
                    mean: 0.0,
                    std: 1.0,
                    a: 1.0,
                    b: 1.0,
                }
                .apply(
                    ArrayD::<f32>::zeros(IxDyn(&[2, 2])).view_mut(),
                    None,
                    &mut rng(),
                )
            },
        ),
        case(
            "Init::apply: kaiming on rank 1",
            Shape,
            &["kaiming_uniform", "[3]"],
            || {
                Init::KAIMING_UNIFORM.apply(
                    ArrayD::<f32>::zeros(IxDyn(&[3])).view_mut(),
                    None,
                    &mut rng(),
                )
            },
        ),
        case(
            "Init::apply_with_bias: bad bias rule",
            Config,
            &["BiasInit::Uniform", "low = 1", "high = -1"],
            || {
                let mut b = Array1::<f32>::zeros(2);
                Init::Zeros.apply_with_bias(
                    ArrayD::<f32>::zeros(IxDyn(&[2, 2])).view_mut(),
                    Some(b.view_mut()),
                    BiasInit::Uniform {
                        low: 1.0,
                        high: -1.0,
                    },
                    &mut rng(),
                )
            },
        ),
        case(
            "Init::apply_with_bias: bias constant inf",
            Config,
            &["BiasInit::Constant", "value = inf"],
            || {
                let mut b = Array1::<f32>::zeros(2);
                Init::Zeros.apply_with_bias(
                    ArrayD::<f32>::zeros(IxDyn(&[2, 2])).view_mut(),
                    Some(b.view_mut()),
                    BiasInit::Constant(f64::INFINITY),
                    &mut rng(),
                )
            },
        ),
        // ------------------------------------------------------------------ stats
        case(
            "to_images: width not a square",
            Shape,
            &["to_images", "width 5", "(2, 5)"],
            || to_images(&Array2::<f32>::zeros((2, 5))),
        ),
        case(
            "to_images: zero width",
            Shape,
            &["to_images", "width 0"],
            || to_images(&Array2::<f32>::zeros((2, 0))),
        ),
    ];
    t.extend(data_cases());
    t.extend(alloc_cases());
    t.extend(nn_cases());
    t
}

/// Far more than any machine holds (each is at least 4 TB), so `try_reserve` fails even
/// with Linux's overcommit, which grants a request of a few times the RAM.
const TB_SIDE: usize = 1 << 20;

/// One element broadcast to `shape`: a view with a huge logical size and no memory.
fn broadcast4(shape: (usize, usize, usize, usize)) -> ndarray::ArrayView4<'static, f32> {
    use ndarray::ShapeBuilder;
    static ONE: [f32; 1] = [1.0];
    ndarray::ArrayView4::from_shape(shape.strides((0, 0, 0, 0)), &ONE).unwrap()
}

fn broadcast_d(shape: &[usize]) -> ndarray::ArrayViewD<'static, f32> {
    use ndarray::ShapeBuilder;
    static ONE: [f32; 1] = [1.0];
    let zeros = IxDyn(&vec![0; shape.len()]);
    ndarray::ArrayViewD::from_shape(IxDyn(shape).strides(zeros), &ONE).unwrap()
}

/// 1 x 1 input, 1 x 1 kernel, padding `TB_SIDE / 2` and stride `TB_SIDE`: a 2 x 2 output
/// whose padded image is `TB_SIDE^2` pixels per channel.
fn far() -> Conv2dOptions {
    opts()
        .with_padding((TB_SIDE / 2, TB_SIDE / 2))
        .with_stride((TB_SIDE, TB_SIDE))
}

/// Calls whose buffers cannot be allocated: each is [`Error::Alloc`] naming the op and
/// a shape or size, never an abort of the process (which would end this whole test).
fn alloc_cases() -> Vec<Case> {
    use V::*;
    let side = 2 * TB_SIDE + 1;
    vec![
        case(
            "conv2d: a broadcast input's copy",
            Alloc,
            &["conv2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
            || {
                conv2d(
                    broadcast4((TB_SIDE, 1, 1024, 1024)),
                    ones4((1, 1, 1024, 1024)).view(),
                    None,
                    &opts(),
                )
            },
        ),
        case(
            "to_memory_format: a channels-last copy of a broadcast input",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "ChannelsLast copy",
                "[1048576, 1, 1024, 1024]",
            ],
            || {
                to_memory_format(
                    broadcast4((TB_SIDE, 1, 1024, 1024)),
                    MemoryFormat::ChannelsLast,
                )
            },
        ),
        case(
            "conv2d: a broadcast input's copy, channels-last output",
            Alloc,
            &["conv2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
            || {
                conv2d(
                    broadcast4((TB_SIDE, 1, 1024, 1024)),
                    ones4((1, 1, 1024, 1024)).view(),
                    None,
                    &opts().with_memory_format(MemoryFormat::ChannelsLast),
                )
            },
        ),
        case(
            "conv2d: a broadcast weight's copy",
            Alloc,
            &["conv2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
            || {
                conv2d(
                    ones4((1, 1, 1024, 1024)).view(),
                    broadcast4((TB_SIDE, 1, 1024, 1024)),
                    None,
                    &opts(),
                )
            },
        ),
        case(
            "conv2d: output of terabytes",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "output",
                "[1, 1, 2097153, 2097153]",
            ],
            || {
                let pad = opts().with_padding((TB_SIDE, TB_SIDE));
                conv2d(
                    ones4((1, 1, 1, 1)).view(),
                    ones4((1, 1, 1, 1)).view(),
                    None,
                    &pad,
                )
            },
        ),
        case(
            "conv2d: padding of terabytes, direct path",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "padded images of the direct path",
                "padding (524288, 524288)",
            ],
            || {
                // Forced: auto takes the clipped forward here, which pads nothing.
                let direct = ConvAlgos::named("direct").unwrap();
                conv2d(
                    ones4((1, 8, 1, 1)).view(),
                    ones4((1, 8, 1, 1)).view(),
                    None,
                    &far().with_algorithm(ConvAlgorithm::Fixed(direct)),
                )
            },
        ),
        case(
            "conv2d: padding of terabytes, phase path",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "phase planes",
                "padding (524288, 524288)",
            ],
            || {
                // Forced: auto takes the clipped forward here too (the taps all padding).
                let phase = ConvAlgos::named("phase").unwrap();
                conv2d(
                    ones4((1, 1, 1, 1)).view(),
                    ones4((1, 1, 1, 1)).view(),
                    None,
                    &far().with_algorithm(ConvAlgorithm::Fixed(phase)),
                )
            },
        ),
        case(
            "conv2d_backward: padding of terabytes, direct path",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "padded images of the direct path",
                "padding (524288, 524288)",
            ],
            || {
                let (x, w) = (ones4((1, 8, 1, 1)), ones4((1, 8, 1, 1)));
                let dy = ones4((1, 1, 2, 2));
                conv2d_backward(x.view(), w.view(), true, dy.view(), &far())
            },
        ),
        case(
            "conv2d_backward: padding of terabytes, phase path",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "phase planes",
                "padding (524288, 6291456)",
            ],
            || {
                // Grouped (no direct weight gradient), 13 outputs wide, the phase path
                // forced (auto takes the depthwise path: one channel per group).
                let (x, w) = (ones4((1, 2, 1, 1)), ones4((2, 1, 1, 1)));
                let dy = ones4((1, 2, 2, 13));
                let phase = ConvAlgos::named("phase").unwrap();
                let wide = far()
                    .with_padding((TB_SIDE / 2, 6 * TB_SIDE))
                    .with_groups(2)
                    .with_algorithm(ConvAlgorithm::Fixed(phase));
                conv2d_backward(x.view(), w.view(), true, dy.view(), &wide)
            },
        ),
        case(
            "conv2d: padding of terabytes, depthwise path",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "padded plane of the depthwise path",
                "padding (524288, 524288)",
            ],
            || {
                conv2d(
                    ones4((1, 2, 1, 1)).view(),
                    ones4((2, 1, 1, 1)).view(),
                    None,
                    &far().with_groups(2),
                )
            },
        ),
        case(
            "conv2d_backward: padding of terabytes, depthwise path",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "padded plane of the depthwise path",
                "padding (524288, 6291456)",
            ],
            || {
                let (x, w) = (ones4((1, 2, 1, 1)), ones4((2, 1, 1, 1)));
                let dy = ones4((1, 2, 2, 13));
                let wide = far()
                    .with_padding((TB_SIDE / 2, 6 * TB_SIDE))
                    .with_groups(2);
                conv2d_backward(x.view(), w.view(), true, dy.view(), &wide)
            },
        ),
        case(
            "conv2d_backward: a broadcast grad_out's copy",
            Alloc,
            &[
                "conv2d",
                "cannot allocate",
                "grad_out",
                "[1, 1, 2097153, 2097153]",
            ],
            move || {
                let pad = opts().with_padding((TB_SIDE, TB_SIDE));
                let (x, w) = (ones4((1, 1, 1, 1)), ones4((1, 1, 1, 1)));
                let dy = broadcast4((1, 1, side, side));
                conv2d_backward(x.view(), w.view(), false, dy, &pad)
            },
        ),
        case(
            "adaptive_avg_pool2d: output of terabytes",
            Alloc,
            &[
                "adaptive_avg_pool2d",
                "cannot allocate",
                "[1, 1, 1048576, 1048576]",
            ],
            || adaptive_avg_pool2d(ones4((1, 1, 4, 4)).view(), (TB_SIDE, TB_SIDE)),
        ),
        case(
            "adaptive_avg_pool2d_backward: input gradient of terabytes",
            Alloc,
            &[
                "adaptive_avg_pool2d",
                "cannot allocate",
                "[1, 1, 1048576, 1048576]",
            ],
            || adaptive_avg_pool2d_backward((1, 1, TB_SIDE, TB_SIDE), ones4((1, 1, 1, 1)).view()),
        ),
        case(
            "linear: output of a broadcast input",
            Alloc,
            &["linear", "cannot allocate", "[1099511627776, 4]"],
            || {
                let x = broadcast_d(&[1 << 40, 4]).into_dimensionality().unwrap();
                linear(x, Array2::<f32>::ones((4, 4)).view(), None)
            },
        ),
        case(
            "linear_backward: input gradient of a broadcast input",
            Alloc,
            &["linear", "cannot allocate", "[1099511627776, 4]"],
            || {
                let x = broadcast_d(&[1 << 40, 4]).into_dimensionality().unwrap();
                let w = Array2::<f32>::ones((4, 4));
                linear_backward(x, w.view(), true, x)
            },
        ),
        case(
            "flatten: a broadcast input's copy",
            Alloc,
            &["flatten", "cannot allocate", "[1048576, 1048576, 4]"],
            || flatten(broadcast_d(&[TB_SIDE, TB_SIDE, 4]), 1, -1),
        ),
        case(
            "flatten_backward: a broadcast grad_out's copy",
            Alloc,
            &["flatten", "cannot allocate", "[1048576, 4194304]"],
            || {
                flatten_backward(
                    &[TB_SIDE, TB_SIDE, 4],
                    broadcast_d(&[TB_SIDE, 4 * TB_SIDE]),
                    1,
                    -1,
                )
            },
        ),
        case(
            "relu: the output of a broadcast input of terabytes",
            Alloc,
            &["relu", "cannot allocate", "[1048576, 1048576]"],
            || relu(broadcast_d(&[TB_SIDE, TB_SIDE])),
        ),
        case(
            "leaky_relu: the output of a broadcast input of terabytes",
            Alloc,
            &["leaky_relu", "cannot allocate", "[1048576, 1048576]"],
            || leaky_relu(broadcast_d(&[TB_SIDE, TB_SIDE]), 0.1),
        ),
        case(
            "relu_backward: the gradient of terabytes",
            Alloc,
            &["relu", "cannot allocate", "grad_out [1048576, 1048576]"],
            || {
                relu_backward(
                    broadcast_d(&[TB_SIDE, TB_SIDE]),
                    broadcast_d(&[TB_SIDE, TB_SIDE]),
                )
            },
        ),
        case(
            "leaky_relu_backward: the gradient of terabytes",
            Alloc,
            &[
                "leaky_relu",
                "cannot allocate",
                "grad_out [1048576, 1048576]",
            ],
            || {
                leaky_relu_backward(
                    broadcast_d(&[TB_SIDE, TB_SIDE]),
                    broadcast_d(&[TB_SIDE, TB_SIDE]),
                    0.1,
                )
            },
        ),
    ]
}

fn data_cases() -> Vec<Case> {
    use V::*;
    // A valid gzip of a valid pickle, then corrupted.
    let good = gz(b"\x80\x02K\x01.");
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let cut = good[..good.len() - 6].to_vec();
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b'(', 201));
    deep.extend(std::iter::repeat_n(b't', 201));
    deep.push(b'.');
    let mut bomb = b"\x80\x02N".to_vec();
    for _ in 0..40 {
        bomb.extend_from_slice(b"2\x86");
    }
    bomb.push(b'.');
    let mut long_line = b"I".to_vec();
    long_line.extend(std::iter::repeat_n(b'1', 2000));
    vec![
        // ------------------------------------------------------------------ pickle
        case("pickle: empty input", InvalidData, &["pickle", "byte 0", "empty input"], pkl(b"")),
        case("pickle: protocol 6", Unsupported, &["pickle", "protocol 6"], pkl(b"\x80\x06K\x01.")),
        case("pickle: truncated argument", Truncated, &["pickle", "byte 3", "BININT1"], pkl(b"\x80\x02K")),
        case("pickle: no STOP", Truncated, &["pickle", "byte 4", "STOP"], pkl(b"\x80\x02K\x01")),
        case("pickle: STOP on empty stack", InvalidData, &["pickle", "byte 2", "stack underflow"], pkl(b"\x80\x02.")),
        case("pickle: unknown opcode", InvalidData, &["pickle", "0xff", "does not start like a pickle"], pkl(b"\xff\x00")),
        case("pickle: global not allowed", Unsupported, &["pickle", "os.system"], pkl(b"\x80\x02cos\nsystem\n.")),
        case("pickle: TUPLE without MARK", InvalidData, &["pickle", "no MARK", "TUPLE"], pkl(b"\x80\x02K\x01t.")),
        case("pickle: memo miss", InvalidData, &["pickle", "memo has no entry 5"], pkl(b"\x80\x02h\x05.")),
        case("pickle: negative BINSTRING length", InvalidData, &["pickle", "negative length"], pkl(b"\x80\x02T\xff\xff\xff\xff.")),
        case("pickle: lying BINSTRING length", Truncated, &["pickle", "16 bytes", "BINSTRING"], pkl(b"\x80\x02T\x10\x00\x00\x00ab")),
        case("pickle: 65-byte LONG1", Unsupported, &["pickle", "65-byte integer"], pkl(b"\x80\x02\x8a\x41")),
        case("pickle: LONG1 wider than 64 bits", Unsupported, &["pickle", "wider than 64 bits"], pkl(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.")),
        case("pickle: INT beyond i64", Unsupported, &["pickle", "99999999999999999999"], pkl(b"\x80\x02I99999999999999999999\n.")),
        case("pickle: text line too long", InvalidData, &["pickle", "longer than 1024"], pkl_owned(long_line)),
        case("pickle: bad FLOAT", InvalidData, &["pickle", "FLOAT", "\"1.x\""], pkl(b"\x80\x02F1.x\n.")),
        case("pickle: BINUNICODE not UTF-8", InvalidData, &["pickle", "UTF-8", "BINUNICODE"], pkl(b"\x80\x02X\x01\x00\x00\x00\xff.")),
        case("pickle: odd dict items", InvalidData, &["pickle", "odd number"], pkl(b"\x80\x02(K\x01d.")),
        case("pickle: APPEND to an int", Unsupported, &["pickle", "append to a int"], pkl(b"\x80\x02K\x01K\x02a.")),
        case("pickle: SETITEM on a list", Unsupported, &["pickle", "set items of a list"], pkl(b"\x80\x02]K\x01K\x02s.")),
        case("pickle: REDUCE with 6 arguments", Unsupported, &["pickle", "6 arguments", "at most 5"], pkl(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(NNNNNNtR.")),
        case("pickle: calling an int", Unsupported, &["pickle", "calling a int"], pkl(b"\x80\x02K\x01)R.")),
        case("pickle: BUILD on an int", Unsupported, &["pickle", "BUILD on a int"], pkl(b"\x80\x02K\x01)b.")),
        case("pickle: persistent id", Unsupported, &["pickle", "persistent"], pkl(b"\x80\x02K\x01Q.")),
        case("pickle: sets", Unsupported, &["pickle", "sets"], pkl(b"\x80\x04\x8f.")),
        case("pickle: out-of-band buffer", Unsupported, &["pickle", "out-of-band"], pkl(b"\x80\x05\x97.")),
        case("pickle: protocol 0 string", Unsupported, &["pickle", "quoted strings"], pkl(b"S'a'\n.")),
        case("pickle: nested too deep", InvalidData, &["pickle", "deeper than 200"], pkl_owned(deep)),
        case("pickle: list changed after embedding", Unsupported, &["pickle", "recursive"], pkl(b"\x80\x02]q\x00h\x00\x85h\x00K\x01a.")),
        case("pickle: keyword arguments", Unsupported, &["pickle", "keyword arguments"], pkl(b"\x80\x04c__builtin__\nbytes\n)}K\x01K\x02s\x92.")),
        case("pickle: array data length", InvalidData, &["pickle", "array data is 4 bytes", "[2]", "needs 8"], pkl_owned(np_array(b"K\x02\x85", b"f4", &[0; 4]))),
        case("pickle: unsupported dtype", Unsupported, &["pickle", "c16"], pkl_owned(np_array(b"K\x01\x85", b"c16", &[0; 16]))),
        case("pickle: array never built", InvalidData, &["pickle", "never given its state"], pkl(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R.")),
        case("pickle: result is a global", Unsupported, &["pickle", "global", "numpy.ndarray"], pkl(b"\x80\x02cnumpy\nndarray\n.")),
        case("pickle: pickle bomb", Unsupported, &["pickle", "pickle bomb", "4194304"], pkl_owned(bomb)),
        case("pickle: gzip garbage", InvalidData, &["gzip", "corrupt"], pkl(b"\x1f\x8b\x00garbage garbage garbage")),
        case("pickle: gzip truncated", Truncated, &["gzip", "compressed stream"], pkl_owned(cut)),
        case("pickle: gzip CRC", InvalidData, &["gzip", "corrupt"], pkl_owned(bad_crc)),
        case("pickle::load: missing file", Io, &["/nonexistent/convinit.pkl"], || pickle::load("/nonexistent/convinit.pkl")),
        // ------------------------------------------------------------------ idx
        case("idx: empty", Truncated, &["idx", "byte 0", "magic"], idx_owned(vec![])),
        case("idx: bad magic", InvalidData, &["idx", "0x01", "not an IDX file"], idx_owned(vec![1, 0, 8, 1, 0, 0, 0, 0])),
        case("idx: unknown type code", InvalidData, &["idx", "byte 2", "0x07"], idx_owned(vec![0, 0, 7, 1, 0, 0, 0, 0])),
        case("idx: zero dimensions", InvalidData, &["idx", "byte 3", "zero dimensions"], idx_owned(vec![0, 0, 8, 0])),
        case("idx: truncated dimension", Truncated, &["idx", "dimension 1 of 2"], idx_owned(vec![0, 0, 8, 2, 0, 0, 0, 1, 0, 0])),
        case("idx: truncated data", Truncated, &["idx", "u8 data of shape [4]", "byte 8"], idx_owned(idx_bytes(8, &[4], &[1, 2]))),
        case("idx: trailing bytes", InvalidData, &["idx", "trailing", "byte 10", "[2]"], idx_owned(idx_bytes(8, &[2], &[1, 2, 3]))),
        case("idx: dimensions too large", InvalidData, &["idx", "too large", "4294967295"], idx_owned(idx_bytes(0x0E, &[u32::MAX; 4], &[]))),
        case("idx: gzip garbage", InvalidData, &["gzip", "corrupt"], idx_owned(b"\x1f\x8b\x00garbage garbage".to_vec())),
        case("idx::load: missing file", Io, &["/nonexistent/convinit.idx"], || idx::load("/nonexistent/convinit.idx")),
        // ------------------------------------------------------------------ mnist
        case("mnist: not a tuple", InvalidData, &["mnist", "3 splits", "int"], || Mnist::from_value(Value::Int(3))),
        case("mnist: 2 splits", InvalidData, &["mnist", "expected 3 splits, got 2"], || {
            Mnist::from_value(Value::Tuple(vec![good_split(), good_split()]))
        }),
        case("mnist: split not a pair", InvalidData, &["mnist", "train", "got 3 items"], || {
            Mnist::from_value(mnist_with(Value::Tuple(vec![f32_array(&[3, 4]), i64_array(&[3]), Value::None])))
        }),
        case("mnist: split not a tuple", InvalidData, &["mnist", "train", "got a str"], || {
            Mnist::from_value(mnist_with(Value::Str("x".into())))
        }),
        case("mnist: x float64", InvalidData, &["mnist", "train", "x must be float32", "[3, 4]"], || {
            Mnist::from_value(mnist_with(split(Value::Array(ArrayD::<f64>::zeros(IxDyn(&[3, 4])).into()), i64_array(&[3]))))
        }),
        case("mnist: x 3-D", InvalidData, &["mnist", "train", "x must be 2-D"], || {
            Mnist::from_value(mnist_with(split(f32_array(&[3, 2, 2]), i64_array(&[3]))))
        }),
        case("mnist: x not an array", InvalidData, &["mnist", "train", "x must be an array", "None"], || {
            Mnist::from_value(mnist_with(split(Value::None, i64_array(&[3]))))
        }),
        case("mnist: y float", InvalidData, &["mnist", "train", "y must hold integers", "float32"], || {
            Mnist::from_value(mnist_with(split(f32_array(&[3, 4]), f32_array(&[3]))))
        }),
        case("mnist: y 2-D", InvalidData, &["mnist", "train", "y must be 1-D"], || {
            Mnist::from_value(mnist_with(split(f32_array(&[3, 4]), i64_array(&[3, 1]))))
        }),
        case("mnist: counts differ", InvalidData, &["mnist", "train", "3 images but 2 labels"], || {
            Mnist::from_value(mnist_with(split(f32_array(&[3, 4]), i64_array(&[2]))))
        }),
        case("mnist: bad pickle", InvalidData, &["pickle", "0xff"], || Mnist::from_pickle_reader(&b"\xff\xff"[..])),
        case("mnist: load missing file", Io, &["/nonexistent/mnist.pkl.gz"], || Mnist::load("/nonexistent/mnist.pkl.gz")),
        case("mnist: IDX dir without files", Io, &["train-images-idx3-ubyte"], || Mnist::from_idx_dir(std::env::temp_dir().join("convinit-hardening-empty-dir-does-not-exist"))),
        case("mnist: IDX too few train images", InvalidData, &["mnist", "5 training images", "10000"], || {
            load_idx_dir("few", 5, 0x08, 0x08, true)
        }),
        case("mnist: IDX images not u8", InvalidData, &["mnist", "images must be u8", "int8"], || {
            load_idx_dir("imgtype", 10_003, 0x09, 0x08, true)
        }),
        case("mnist: IDX images 2-D", InvalidData, &["mnist", "images must be 3-D", "[10003, 4]"], || {
            load_idx_dir("2d", 10_003, 0x08, 0x08, false)
        }),
        case("mnist: IDX labels not u8", InvalidData, &["mnist", "labels must be u8", "int8"], || {
            load_idx_dir("lab", 10_003, 0x08, 0x09, true)
        }),
    ]
}

fn bn(c: usize) -> BatchNorm2d {
    BatchNorm2d::new(BatchNorm2dConfig::new(c)).unwrap()
}

/// Layer, pooling, batch norm and dropout bad calls (once `tests/nn_errors.rs`, merged
/// here so one table and one runner hold every bad call): rows that repeated a row
/// above were folded into it, and the generic layer calls (backward before forward, a
/// gradient of the wrong shape, an input of the wrong rank) are checked for every layer
/// of the op-case table by [`every_op_case_layer_rejects_generic_bad_calls`].
#[allow(clippy::too_many_lines)]
fn nn_cases() -> Vec<Case> {
    use V::*;
    vec![
        // ---- ops, layers and Sequential
        case(
            "conv2d: huge dilation overflows",
            Shape,
            &["conv2d", "[1, 1, 5, 5]"],
            || {
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((1, 1, 3, 3)).view(),
                    None,
                    &opts().with_dilation((usize::MAX, 1)),
                )
                .map(drop)
            },
        ),
        case(
            "conv2d: zero groups, 3 channels",
            Config,
            &["conv2d", "groups"],
            || {
                conv2d(
                    ones4((1, 3, 5, 5)).view(),
                    ones4((2, 3, 3, 3)).view(),
                    None,
                    &opts().with_groups(0),
                )
                .map(drop)
            },
        ),
        case(
            "conv2d: bias of the wrong length",
            Shape,
            &["conv2d", "bias", "length 3", "[2, 1, 3, 3]"],
            || {
                let b = Array1::<f32>::zeros(3);
                conv2d(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((2, 1, 3, 3)).view(),
                    Some(b.view()),
                    &opts(),
                )
                .map(drop)
            },
        ),
        case(
            "conv2d_backward: grad_out of the wrong shape",
            Shape,
            &["conv2d", "[1, 2, 4, 3]", "(1, 2, 3, 3)"],
            || {
                conv2d_backward(
                    ones4((1, 1, 5, 5)).view(),
                    ones4((2, 1, 3, 3)).view(),
                    true,
                    ones4((1, 2, 4, 3)).view(),
                    &opts(),
                )
                .map(drop)
            },
        ),
        case(
            "Conv2d: channel mismatch",
            Shape,
            &["[2, 3, 5, 5]", "[2, 1, 3, 3]"],
            || {
                let mut c = conv(Conv2dConfig::new(1, 2, (3, 3)));
                c.forward(ones4((2, 3, 5, 5)).into_dyn().view()).map(drop)
            },
        ),
        case(
            "Conv2d: zero stride in the config",
            Config,
            &["Conv2d", "stride", "(1, 0)"],
            || {
                Conv2d::new(
                    Conv2dConfig::new(1, 1, (3, 3)).with_stride((1, 0)),
                    &mut rng(),
                )
                .map(drop)
            },
        ),
        case(
            "Conv2d::from_parts: weight of the wrong shape",
            Shape,
            &["Conv2d", "[3, 1, 3, 3]", "(3, 2, 3, 3)"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(2, 3, (3, 3)),
                    ones4((3, 1, 3, 3)),
                    Some(Array1::zeros(3)),
                )
                .map(drop)
            },
        ),
        case(
            "Conv2d::from_parts: bias of the wrong length",
            Shape,
            &["Conv2d", "length 2", "[3, 1, 3, 3]"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 3, (3, 3)),
                    ones4((3, 1, 3, 3)),
                    Some(Array1::zeros(2)),
                )
                .map(drop)
            },
        ),
        case(
            "Conv2d::from_parts: bias given to a bias-free config",
            Config,
            &["Conv2d", "bias"],
            || {
                Conv2d::from_parts(
                    Conv2dConfig::new(1, 3, (3, 3)).with_bias(false),
                    ones4((3, 1, 3, 3)),
                    Some(Array1::zeros(3)),
                )
                .map(drop)
            },
        ),
        case(
            "linear: feature mismatch",
            Shape,
            &["linear", "[2, 4]", "[3, 5]"],
            || {
                linear(
                    Array2::zeros((2, 4)).view(),
                    Array2::zeros((3, 5)).view(),
                    None,
                )
                .map(drop)
            },
        ),
        case(
            "linear_backward: grad_out of the wrong shape",
            Shape,
            &["linear", "[2, 2]", "(2, 3)"],
            || {
                linear_backward(
                    Array2::zeros((2, 4)).view(),
                    Array2::zeros((3, 4)).view(),
                    true,
                    Array2::zeros((2, 2)).view(),
                )
                .map(drop)
            },
        ),
        case(
            "Linear: bias of the wrong length",
            Shape,
            &["Linear", "length 4", "[3, 4]"],
            || {
                Linear::from_parts(
                    LinearConfig::new(4, 3),
                    Array2::zeros((3, 4)),
                    Some(Array1::zeros(4)),
                )
                .map(drop)
            },
        ),
        case(
            "relu_backward: grad_out of the wrong shape",
            Shape,
            &["relu", "[6]", "[2, 3]"],
            || {
                relu_backward(
                    ArrayD::zeros(IxDyn(&[2, 3])).view(),
                    ArrayD::zeros(IxDyn(&[6])).view(),
                )
                .map(drop)
            },
        ),
        case(
            "leaky_relu_backward: grad_out of the wrong shape",
            Shape,
            &["leaky_relu", "[2, 4]", "[2, 3]"],
            || {
                leaky_relu_backward(
                    ArrayD::zeros(IxDyn(&[2, 3])).view(),
                    ArrayD::zeros(IxDyn(&[2, 4])).view(),
                    0.1,
                )
                .map(drop)
            },
        ),
        case(
            "AdaptiveAvgPool2d: zero output size",
            Config,
            &["AdaptiveAvgPool2d", "(2, 0)"],
            || AdaptiveAvgPool2d::new((2, 0)).map(drop),
        ),
        case(
            "adaptive_avg_pool2d: empty input",
            Shape,
            &["adaptive_avg_pool2d", "[1, 1, 0, 4]"],
            || adaptive_avg_pool2d(ones4((1, 1, 0, 4)).view(), (1, 1)).map(drop),
        ),
        case(
            "adaptive_avg_pool2d_backward: grad_out channels differ",
            Shape,
            &["adaptive_avg_pool2d", "[1, 3, 1, 1]", "[1, 2, 4, 4]"],
            || adaptive_avg_pool2d_backward((1, 2, 4, 4), ones4((1, 3, 1, 1)).view()).map(drop),
        ),
        case(
            "max_pool2d: padding above half the kernel",
            Config,
            &["max_pool2d", "padding (2, 0)", "(3, 3)"],
            || {
                let o = MaxPool2dOptions::new((3, 3)).with_padding((2, 0));
                max_pool2d(ones4((1, 1, 8, 8)).view(), &o).map(drop)
            },
        ),
        case(
            "MaxPool2d: zero stride",
            Config,
            &["MaxPool2d", "stride", "(0, 1)"],
            || MaxPool2d::new(MaxPool2dOptions::new((2, 2)).with_stride((0, 1))).map(drop),
        ),
        case(
            "MaxPool2d: zero dilation",
            Config,
            &["MaxPool2d", "dilation", "(1, 0)"],
            || MaxPool2d::new(MaxPool2dOptions::new((2, 2)).with_dilation((1, 0))).map(drop),
        ),
        case(
            "max_pool2d: zero kernel",
            Config,
            &["max_pool2d", "kernel size", "(0, 2)"],
            || max_pool2d(ones4((1, 1, 4, 4)).view(), &MaxPool2dOptions::new((0, 2))).map(drop),
        ),
        case(
            "max_pool2d: input smaller than the dilated kernel",
            Shape,
            &["max_pool2d", "[1, 1, 4, 9]", "dilation (2, 2)"],
            || {
                let o = MaxPool2dOptions::new((3, 3)).with_dilation((2, 2));
                max_pool2d(ones4((1, 1, 4, 9)).view(), &o).map(drop)
            },
        ),
        case(
            "max_pool2d: zero channels",
            Shape,
            &["max_pool2d", "[1, 0, 4, 4]"],
            || max_pool2d(ones4((1, 0, 4, 4)).view(), &MaxPool2dOptions::new((2, 2))).map(drop),
        ),
        case(
            "max_pool2d_backward: an index outside the plane",
            Shape,
            &["max_pool2d", "index 16", "4 x 4"],
            || {
                let idx = Array4::from_elem((1, 1, 2, 2), 16i64);
                max_pool2d_backward((1, 1, 4, 4), idx.view(), ones4((1, 1, 2, 2)).view()).map(drop)
            },
        ),
        case(
            "max_pool2d_backward: indices and grad_out differ",
            Shape,
            &["max_pool2d", "[1, 1, 2, 3]", "[1, 1, 2, 2]"],
            || {
                let idx = Array4::from_elem((1, 1, 2, 3), 0i64);
                max_pool2d_backward((1, 1, 4, 4), idx.view(), ones4((1, 1, 2, 2)).view()).map(drop)
            },
        ),
        case(
            "AvgPool2d: zero divisor_override",
            Config,
            &["AvgPool2d", "divisor_override", "Some(0)"],
            || {
                AvgPool2d::new(AvgPool2dOptions::new((2, 2)).with_divisor_override(Some(0)))
                    .map(drop)
            },
        ),
        case(
            "avg_pool2d: padding above half the kernel",
            Config,
            &["avg_pool2d", "padding (0, 3)", "(2, 4)"],
            || {
                let o = AvgPool2dOptions::new((2, 4)).with_padding((0, 3));
                avg_pool2d(ones4((1, 1, 8, 8)).view(), &o).map(drop)
            },
        ),
        case(
            "avg_pool2d: input smaller than the kernel",
            Shape,
            &["avg_pool2d", "[1, 1, 1, 4]", "kernel (2, 2)"],
            || avg_pool2d(ones4((1, 1, 1, 4)).view(), &AvgPool2dOptions::new((2, 2))).map(drop),
        ),
        case(
            "avg_pool2d_backward: grad_out not the output's shape",
            Shape,
            &["avg_pool2d", "[1, 1, 3, 2]", "[1, 1, 2, 2]"],
            || {
                let o = AvgPool2dOptions::new((2, 2));
                avg_pool2d_backward((1, 1, 4, 4), ones4((1, 1, 3, 2)).view(), &o).map(drop)
            },
        ),
        case(
            "adaptive_max_pool2d: zero output size",
            Config,
            &["adaptive_max_pool2d", "(3, 0)", "[1, 1, 4, 4]"],
            || adaptive_max_pool2d(ones4((1, 1, 4, 4)).view(), (3, 0)).map(drop),
        ),
        case(
            "AdaptiveMaxPool2d: zero output size",
            Config,
            &["AdaptiveMaxPool2d", "(0, 1)"],
            || AdaptiveMaxPool2d::new((0, 1)).map(drop),
        ),
        case(
            "adaptive_max_pool2d: empty input",
            Shape,
            &["adaptive_max_pool2d", "[1, 1, 4, 0]"],
            || adaptive_max_pool2d(ones4((1, 1, 4, 0)).view(), (1, 1)).map(drop),
        ),
        case(
            "adaptive_max_pool2d_backward: a negative index",
            Shape,
            &["adaptive_max_pool2d", "index -2"],
            || {
                let idx = Array4::from_elem((1, 1, 1, 1), -2i64);
                adaptive_max_pool2d_backward((1, 1, 4, 4), idx.view(), ones4((1, 1, 1, 1)).view())
                    .map(drop)
            },
        ),
        case(
            "flatten: start_dim out of range, rank 2",
            Shape,
            &["flatten", "start_dim 2", "[2, 3]"],
            || flatten(ArrayD::zeros(IxDyn(&[2, 3])).view(), 2, -1).map(drop),
        ),
        case(
            "mse: mismatched lengths",
            Shape,
            &["mse", "[4]", "[5]"],
            || {
                mse(
                    Array1::<f32>::zeros(4).view(),
                    Array1::<f32>::zeros(5).view(),
                )
                .map(drop)
            },
        ),
        case("mse: (N, 2) predictions", Shape, &["mse", "[4, 2]"], || {
            mse(
                Array2::<f32>::zeros((4, 2)).view(),
                Array1::<f32>::zeros(4).view(),
            )
            .map(drop)
        }),
        case(
            "mse_backward: mismatched lengths",
            Shape,
            &["mse", "[3, 1]", "[4]"],
            || {
                mse_backward(
                    Array2::<f32>::zeros((3, 1)).view(),
                    Array1::<f32>::zeros(4).view(),
                )
                .map(drop)
            },
        ),
        case(
            "Sequential: bad input names the layer",
            Shape,
            &["conv2d", "[1, 2, 5, 5]", "layer 1", "Conv2d"],
            || {
                let mut net = Sequential::new()
                    .with(Relu::new())
                    .with(conv(Conv2dConfig::new(1, 2, (3, 3))));
                net.forward(ones4((1, 2, 5, 5)).into_dyn().view()).map(drop)
            },
        ),
        // ---- layers asked for buffers of terabytes: Alloc, never an abort
        case(
            "Conv2d.forward: a broadcast input of terabytes",
            Alloc,
            &["conv2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
            || {
                let mut c = conv(Conv2dConfig::new(1, 1, (1024, 1024)));
                c.forward(broadcast_d(&[TB_SIDE, 1, 1024, 1024])).map(drop)
            },
        ),
        case(
            "Linear.forward: a broadcast input of terabytes",
            Alloc,
            &["linear", "cannot allocate", "[1099511627776, 4]"],
            || {
                let mut l = Linear::new(LinearConfig::new(16, 4), &mut rng())?;
                l.forward(broadcast_d(&[1 << 40, 16])).map(drop)
            },
        ),
        case(
            "Flatten.forward: a broadcast input of terabytes",
            Alloc,
            &["flatten", "cannot allocate", "[1048576, 1048576, 4]"],
            || {
                Flatten::new(1, -1)
                    .forward(broadcast_d(&[TB_SIDE, TB_SIDE, 4]))
                    .map(drop)
            },
        ),
        case(
            "AdaptiveAvgPool2d.forward: an output of terabytes",
            Alloc,
            &[
                "adaptive_avg_pool2d",
                "cannot allocate",
                "[1, 1, 1048576, 1048576]",
            ],
            || {
                AdaptiveAvgPool2d::new((TB_SIDE, TB_SIDE))?
                    .forward(ArrayD::ones(IxDyn(&[1, 1, 4, 4])).view())
                    .map(drop)
            },
        ),
        case(
            "MaxPool2d.forward: a broadcast input of terabytes",
            Alloc,
            &["max_pool2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
            || {
                MaxPool2d::new(MaxPool2dOptions::new((2, 2)))?
                    .forward(broadcast_d(&[TB_SIDE, 1, 1024, 1024]))
                    .map(drop)
            },
        ),
        case(
            "AvgPool2d.forward: a broadcast input of terabytes",
            Alloc,
            &["avg_pool2d", "cannot allocate", "[1048576, 1, 1024, 1024]"],
            || {
                AvgPool2d::new(AvgPool2dOptions::new((2, 2)))?
                    .forward(broadcast_d(&[TB_SIDE, 1, 1024, 1024]))
                    .map(drop)
            },
        ),
        case(
            "AdaptiveMaxPool2d.forward: an output of terabytes",
            Alloc,
            &[
                "adaptive_max_pool2d",
                "cannot allocate",
                "[1, 1, 1048576, 1048576]",
            ],
            || {
                AdaptiveMaxPool2d::new((TB_SIDE, TB_SIDE))?
                    .forward(ArrayD::ones(IxDyn(&[1, 1, 4, 4])).view())
                    .map(drop)
            },
        ),
        case(
            "Sequential.forward: a layer's allocation failure names the layer",
            Alloc,
            &["adaptive_avg_pool2d", "cannot allocate", "layer 1"],
            || {
                let mut net = Sequential::new()
                    .with(Relu::new())
                    .with(AdaptiveAvgPool2d::new((TB_SIDE, TB_SIDE))?);
                net.forward(ArrayD::ones(IxDyn(&[1, 1, 4, 4])).view())
                    .map(drop)
            },
        ),
        case(
            "ReLU.forward: a broadcast input of terabytes",
            Alloc,
            &["ReLU", "cannot allocate", "[1048576, 1048576]"],
            || {
                Relu::new()
                    .forward(broadcast_d(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            },
        ),
        case(
            "LeakyReLU.forward: a broadcast input of terabytes",
            Alloc,
            &["LeakyReLU", "cannot allocate", "[1048576, 1048576]"],
            || {
                LeakyRelu::new(0.1)
                    .forward(broadcast_d(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            },
        ),
        case(
            "GeneralRelu.forward: a broadcast input of terabytes",
            Alloc,
            &["cannot allocate", "[1048576, 1048576]"],
            || {
                GeneralRelu::new(Some(0.1), Some(0.4), Some(6.0))?
                    .forward(broadcast_d(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            },
        ),
        case(
            "Sequential.forward: no layers, a broadcast input of terabytes",
            Alloc,
            &["Sequential", "cannot allocate", "[1048576, 1048576]"],
            || {
                Sequential::new()
                    .forward(broadcast_d(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            },
        ),
        case(
            "Sequential.backward: a broadcast grad_out of terabytes",
            Alloc,
            &[
                "Sequential",
                "cannot allocate",
                "grad_out [1048576, 1048576]",
            ],
            || {
                Sequential::new()
                    .backward(broadcast_d(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            },
        ),
        // ---- batch norm and dropout
        case(
            "BatchNorm2d: no channels",
            Config,
            &["BatchNorm2d", "num_features", "0"],
            || BatchNorm2d::new(BatchNorm2dConfig::new(0)).map(drop),
        ),
        case(
            "BatchNorm2d: negative eps",
            Config,
            &["BatchNorm2d", "eps", "-1"],
            || BatchNorm2d::new(BatchNorm2dConfig::new(2).with_eps(-1.0)).map(drop),
        ),
        case(
            "BatchNorm2d: momentum above 1",
            Config,
            &["BatchNorm2d", "momentum", "1.5"],
            || BatchNorm2d::new(BatchNorm2dConfig::new(2).with_momentum(Some(1.5))).map(drop),
        ),
        case(
            "BatchNorm2d: one value per channel in training mode",
            Config,
            &[
                "BatchNorm2d",
                "Expected more than 1 value per channel when training",
                "[1, 3, 1, 1]",
            ],
            || {
                bn(3)
                    .forward(ones4((1, 3, 1, 1)).into_dyn().view())
                    .map(drop)
            },
        ),
        case(
            "BatchNorm2d: one value per channel without running statistics, eval mode",
            Config,
            &[
                "BatchNorm2d",
                "more than 1 value per channel",
                "[1, 3, 1, 1]",
            ],
            || {
                let cfg = BatchNorm2dConfig::new(3).with_track_running_stats(false);
                let mut b = BatchNorm2d::new(cfg)?;
                b.set_training(false);
                b.forward(ones4((1, 3, 1, 1)).into_dyn().view()).map(drop)
            },
        ),
        case(
            "BatchNorm2d: channel mismatch",
            Shape,
            &["BatchNorm2d", "[2, 4, 3, 3]", "num_features = 3"],
            || {
                bn(3)
                    .forward(ones4((2, 4, 3, 3)).into_dyn().view())
                    .map(drop)
            },
        ),
        case(
            "BatchNorm2d: rank 3",
            Shape,
            &["BatchNorm2d", "(N, C, H, W)", "[2, 3, 4]"],
            || {
                bn(3)
                    .forward(ArrayD::ones(IxDyn(&[2, 3, 4])).view())
                    .map(drop)
            },
        ),
        case(
            "BatchNorm2d: a weight replaced by one of another length",
            Shape,
            &["BatchNorm2d", "weight has length 4", "num_features is 3"],
            || {
                let mut b = bn(3);
                *b.weight_mut().unwrap() = Array1::ones(4);
                b.forward(ones4((2, 3, 2, 2)).into_dyn().view()).map(drop)
            },
        ),
        case(
            "BatchNorm2d.forward: a broadcast input of terabytes",
            Alloc,
            &[
                "batch_norm2d",
                "cannot allocate",
                "[1048576, 2, 1024, 1024]",
            ],
            || {
                bn(2)
                    .forward(broadcast_d(&[TB_SIDE, 2, 1024, 1024]))
                    .map(drop)
            },
        ),
        case(
            "Dropout: p above 1",
            Config,
            &["Dropout", "between 0 and 1", "1.5"],
            || Dropout::new(1.5, 0).map(drop),
        ),
        case(
            "Dropout2d: negative p",
            Config,
            &["Dropout2d", "-0.5"],
            || Dropout2d::new(-0.5, 0).map(drop),
        ),
        case(
            "Dropout.forward: a broadcast input of terabytes",
            Alloc,
            &["dropout", "cannot allocate", "[1048576, 1048576]"],
            || {
                Dropout::new(0.5, 0)?
                    .forward(broadcast_d(&[TB_SIDE, TB_SIDE]))
                    .map(drop)
            },
        ),
        case(
            "batch_norm2d: eval mode without running statistics",
            Config,
            &["batch_norm2d", "running_mean"],
            || {
                let o = BatchNormOptions {
                    training: false,
                    ..BatchNormOptions::default()
                };
                batch_norm2d(ones4((2, 3, 2, 2)).view(), None, None, None, None, &o).map(drop)
            },
        ),
        case(
            "batch_norm2d: a bias of the wrong length",
            Shape,
            &["batch_norm2d", "bias has length 2", "3 channels"],
            || {
                let b = Array1::<f32>::zeros(2);
                let o = BatchNormOptions::default();
                batch_norm2d(
                    ones4((2, 3, 2, 2)).view(),
                    None,
                    None,
                    None,
                    Some(b.view()),
                    &o,
                )
                .map(drop)
            },
        ),
        case(
            "batch_norm2d: NaN eps",
            Config,
            &["batch_norm2d", "eps", "NaN"],
            || {
                let o = BatchNormOptions {
                    eps: f64::NAN,
                    ..BatchNormOptions::default()
                };
                batch_norm2d(ones4((2, 3, 2, 2)).view(), None, None, None, None, &o).map(drop)
            },
        ),
        case(
            "batch_norm2d_backward: dy of another shape",
            Shape,
            &["batch_norm2d", "[2, 3, 1, 2]", "[2, 3, 2, 2]"],
            || {
                let o = BatchNormOptions::default();
                let (_, stats) =
                    batch_norm2d(ones4((2, 3, 2, 2)).view(), None, None, None, None, &o)?;
                batch_norm2d_backward(
                    ones4((2, 3, 2, 2)).view(),
                    None,
                    true,
                    &stats,
                    ones4((2, 3, 1, 2)).view(),
                )
                .map(drop)
            },
        ),
    ]
}

#[test]
fn bad_calls_return_typed_errors_and_never_panic() {
    let table = table();
    let mut failures = Vec::new();
    for c in &table {
        let got = catch_unwind(AssertUnwindSafe(|| (c.call)()));
        let problem = match got {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(format!("panicked: {msg}"))
            }
            Ok(Ok(())) => Some("returned Ok".to_string()),
            Ok(Err(e)) => {
                let msg = e.to_string();
                let missing: Vec<_> = c.needles.iter().filter(|n| !msg.contains(**n)).collect();
                if variant(&e) != Some(c.want) {
                    Some(format!("expected {:?}, got {e:?} ({msg})", c.want))
                } else if !missing.is_empty() {
                    Some(format!("message {msg:?} lacks {missing:?}"))
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad calls failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    // Names are unique, every entry names at least an op and one value, and the table
    // covers every module.
    let mut names: Vec<_> = table.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), table.len(), "duplicate names");
    assert!(table.iter().all(|c| !c.needles.is_empty()));
    assert!(table.len() >= 80, "only {} bad calls", table.len());
    for v in [
        V::Io,
        V::Truncated,
        V::InvalidData,
        V::Unsupported,
        V::Shape,
        V::Config,
        V::State,
        V::Alloc,
    ] {
        assert!(table.iter().any(|c| c.want == v), "no case for {v:?}");
    }
}

/// The number of bad calls, printed for the report (`cargo test -- --nocapture`).
#[test]
fn panic_table_size() {
    let table = table();
    let n = table.len();
    let module = |name: &str| -> &'static str {
        let head = name.split([':', '.']).next().unwrap_or_default();
        match head {
            "pickle" => "data::pickle",
            "idx" => "data::idx",
            "mnist" => "data::Mnist",
            "sgemm" => "gemm",
            "to_images" => "stats",
            "Conv2d" | "Linear" | "AdaptiveAvgPool2d" | "AdaptiveMaxPool2d" | "MaxPool2d"
            | "AvgPool2d" | "BatchNorm2d" | "Dropout" | "Dropout2d" | "Relu" | "ReLU"
            | "LeakyRelu" | "LeakyReLU" | "GeneralRelu" | "Flatten" | "Sequential" => "nn",
            h if h.starts_with(char::is_uppercase) || h.contains("_std") || h == "fans" => {
                if h.starts_with("Conv2d") {
                    "ops"
                } else {
                    "init"
                }
            }
            "uniform"
            | "normal"
            | "trunc_normal"
            | "constant"
            | "kaiming_uniform"
            | "kaiming_normal"
            | "xavier_uniform"
            | "xavier_normal"
            | "orthogonal"
            | "pytorch_default_reset"
            | "default_bounds" => "init",
            _ => "ops",
        }
    };
    let mut counts = std::collections::BTreeMap::new();
    for c in &table {
        *counts.entry(module(c.name)).or_insert(0) += 1;
    }
    println!("panic table: {n} bad calls: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), n);
    assert!(n >= 80);
}

/// The table's calls with the fault removed succeed: each entry fails for the reason it
/// names, not for an unrelated one in the surrounding setup.
#[test]
fn corrected_calls_succeed() {
    let mut c = Array2::<f32>::zeros((2, 4));
    sgemm(
        1.0,
        Array2::zeros((2, 3)).view(),
        Array2::zeros((3, 4)).view(),
        0.0,
        c.view_mut(),
    )
    .unwrap();
    conv2d(
        ones4((1, 3, 5, 5)).view(),
        ones4((2, 3, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    conv2d(
        ones4((1, 4, 5, 5)).view(),
        ones4((2, 2, 3, 3)).view(),
        Some(Array1::zeros(2).view()),
        &opts().with_groups(2),
    )
    .unwrap();
    conv2d(
        ones4((1, 1, 7, 6)).view(),
        ones4((1, 1, 3, 3)).view(),
        None,
        &opts().with_dilation((3, 1)),
    )
    .unwrap();
    conv2d(
        ones4((1, 1, 1, 1)).view(),
        ones4((1, 1, 1, 1)).view(),
        None,
        &opts().with_padding((100, 100)),
    )
    .unwrap();
    conv2d_backward(
        ones4((1, 1, 5, 5)).view(),
        ones4((2, 1, 3, 3)).view(),
        true,
        ones4((1, 2, 3, 3)).view(),
        &opts(),
    )
    .unwrap();
    linear_backward(
        Array2::zeros((2, 3)).view(),
        Array2::zeros((4, 3)).view(),
        true,
        Array2::zeros((2, 4)).view(),
    )
    .unwrap();
    adaptive_avg_pool2d_backward((1, 1, 4, 4), ones4((1, 1, 1, 1)).view()).unwrap();
    adaptive_avg_pool2d(ones4((1, 1, 4, 4)).view(), (5, 1)).unwrap();
    mse_backward(
        Array2::<f32>::zeros((3, 1)).view(),
        Array1::<f32>::zeros(3).view(),
    )
    .unwrap();
    flatten_backward(&[2, 2, 3], ones_d(&[2, 6]).view(), 1, -1).unwrap();
    // Layers: forward then backward with the right shapes, and a weight replaced by one
    // of the same shape.
    let mut cv = conv(Conv2dConfig::new(1, 2, (3, 3)).with_bias(false));
    *cv.weight_mut() = Array4::ones((2, 1, 3, 3));
    cv.forward(ones_d(&[1, 1, 5, 5]).view()).unwrap();
    cv.backward(ones_d(&[1, 2, 3, 3]).view()).unwrap();
    let mut l = Linear::new(LinearConfig::new(3, 2), &mut rng()).unwrap();
    *l.weight_mut() = Array2::ones((2, 3));
    l.forward(ones_d(&[2, 3]).view()).unwrap();
    l.backward(ones_d(&[2, 2]).view()).unwrap();
    let mut s = Sequential::new()
        .with(Relu::new())
        .with(conv(Conv2dConfig::new(2, 1, (3, 3))));
    s.forward(ones_d(&[1, 2, 5, 5]).view()).unwrap();
    s.backward(ones_d(&[1, 1, 3, 3]).view()).unwrap();
    Conv2d::from_parts(
        Conv2dConfig::new(1, 2, (3, 3)),
        Array4::zeros((2, 1, 3, 3)),
        Some(Array1::zeros(2)),
    )
    .unwrap();
    Linear::from_parts(
        LinearConfig::new(3, 2),
        Array2::zeros((2, 3)),
        Some(Array1::zeros(2)),
    )
    .unwrap();
    // Init with the parameters fixed.
    init::trunc_normal(
        Array1::<f32>::zeros(3).view_mut(),
        0.0,
        1.0,
        -2.0,
        2.0,
        &mut rng(),
    )
    .unwrap();
    init::uniform(Array1::<f32>::zeros(3).view_mut(), -1e30, 1e30, &mut rng()).unwrap();
    kaiming_std(&[3, 3], FanMode::FanIn, Nonlinearity::LeakyRelu(1e6)).unwrap();
    fans(&[2, 2, usize::MAX / 8, 2]).unwrap();
    // Data: the structures with the fault removed.
    pickle::from_reader(&np_array(b"K\x02\x85", b"f4", &[0; 8])[..]).unwrap();
    pickle::from_reader(&gz(b"\x80\x02K\x01.")[..]).unwrap();
    idx::from_reader(&idx_bytes(8, &[2], &[1, 2])[..]).unwrap();
    Mnist::from_value(mnist_with(good_split())).unwrap();
    let m = load_idx_dir("ok", 10_003, 0x08, 0x08, true).unwrap();
    assert_eq!(m.train.0.dim(), (3, 4));
}

/// Every `Error` renders a message naming its op or format, and exposes its source.
#[test]
fn every_error_displays_its_origin() {
    for c in table() {
        let e = (c.call)().unwrap_err();
        let s = e.to_string();
        assert!(s.contains(c.needles[0]), "{}: {s}", c.name);
        if matches!(e, Error::Io { .. }) {
            assert!(std::error::Error::source(&e).is_some(), "{}", c.name);
        }
    }
}

/// Random small shapes and configurations, zeros included (empty batches, zero
/// channels, zero-sized kernels, stride / dilation / groups 0): every op returns `Ok` or
/// a typed error, never panics, and an `Ok` has the shape the geometry promises. Which
/// of the two each call must give is predicted independently from PyTorch's rules
/// (`conv_valid` and friends below), so a valid call that starts failing, or an invalid
/// one that starts passing, fails the test.
#[test]
fn random_small_shapes_never_panic() {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(42);
    let (mut ok, mut err) = (0, 0);
    for i in 0..4000 {
        let mut d = |hi: usize| rng.random_range(0..=hi);
        let (n, c, h, w) = (d(3), d(4), d(6), d(6));
        let (o, cg, kh, kw) = (d(4), d(4), d(4), d(4));
        let opts = Conv2dOptions::new()
            .with_stride((d(3), d(3)))
            .with_padding((d(3), d(3)))
            .with_dilation((d(2), d(2)))
            .with_groups(d(3));
        let bias_len = if d(1) == 0 { None } else { Some(d(5)) };
        let (oh, ow) = (d(4), d(4));
        let (m, k, nn) = (d(3), d(3), d(3));
        let (sd, ed) = (d(6) as isize - 3, d(6) as isize - 3);
        let x = Array4::<f32>::ones((n, c, h, w));
        let wt = Array4::<f32>::ones((o, cg, kh, kw));
        let b = bias_len.map(Array1::<f32>::ones);
        let r = catch_unwind(AssertUnwindSafe(|| -> Vec<(&str, bool)> {
            let mut outcomes = Vec::new();
            let y = conv2d(x.view(), wt.view(), b.as_ref().map(|b| b.view()), &opts);
            if let Ok(y) = &y {
                let geo =
                    Conv2dGeometry::new("conv2d", [n, c, h, w], [o, cg, kh, kw], &opts).unwrap();
                assert_eq!(y.dim(), geo.y_shape());
                let dy = Array4::<f32>::ones(y.raw_dim());
                let g =
                    conv2d_backward(x.view(), wt.view(), b.is_some(), dy.view(), &opts).unwrap();
                assert_eq!(g.dx.dim(), x.dim());
                assert_eq!(g.dw.dim(), wt.dim());
            }
            outcomes.push(("conv2d", y.is_ok()));
            let p = adaptive_avg_pool2d(x.view(), (oh, ow));
            if let Ok(p) = &p {
                assert_eq!(p.dim(), (n, c, oh, ow));
                adaptive_avg_pool2d_backward(x.dim(), Array4::ones(p.raw_dim()).view()).unwrap();
            }
            outcomes.push(("adaptive_avg_pool2d", p.is_ok()));
            let xl = Array2::<f32>::ones((m, k));
            let wl = Array2::<f32>::ones((nn, k + usize::from(i % 5 == 0)));
            let l = linear(xl.view(), wl.view(), b.as_ref().map(|b| b.view()));
            if l.is_ok() {
                linear_backward(
                    xl.view(),
                    wl.view(),
                    b.is_some(),
                    Array2::ones((m, nn)).view(),
                )
                .unwrap();
            }
            outcomes.push(("linear", l.is_ok()));
            let f = flatten(x.view().into_dyn(), sd, ed);
            if let Ok(f) = &f {
                assert_eq!(f.len(), x.len());
                flatten_backward(x.shape(), f.view(), sd, ed).unwrap();
            }
            outcomes.push(("flatten", f.is_ok()));
            outcomes.push((
                "mse",
                mse(Array1::<f32>::ones(m).view(), Array1::<f32>::ones(k).view()).is_ok(),
            ));
            outcomes.push(("to_images", to_images(&xl).is_ok()));
            let mut c = Array2::<f32>::zeros((m, nn));
            outcomes.push((
                "sgemm",
                sgemm(
                    1.0,
                    xl.view(),
                    Array2::ones((k, nn)).view(),
                    0.0,
                    c.view_mut(),
                )
                .is_ok(),
            ));
            outcomes
        }));
        let outcomes = r.unwrap_or_else(|_| {
            panic!(
                "case {i} panicked: x {:?} w {:?} {opts:?} bias {bias_len:?} pool {:?} \
                 linear ({m}, {k}) x ({nn}, ..) flatten {sd} {ed}",
                (n, c, h, w),
                (o, cg, kh, kw),
                (oh, ow)
            )
        });
        let wk = k + usize::from(i % 5 == 0);
        let want = [
            (
                "conv2d",
                conv_valid((n, c, h, w), (o, cg, kh, kw), &opts, bias_len),
            ),
            ("adaptive_avg_pool2d", oh > 0 && ow > 0 && h > 0 && w > 0),
            ("linear", wk == k && bias_len.is_none_or(|b| b == nn)),
            ("flatten", flatten_valid(4, sd, ed)),
            ("mse", m == k && m > 0),
            ("to_images", k > 0 && k.isqrt() * k.isqrt() == k),
            ("sgemm", true),
        ];
        for ((name, got), (wname, want)) in outcomes.iter().zip(want) {
            assert_eq!(*name, wname);
            assert_eq!(
                *got,
                want,
                "case {i}: {name} gave {} but should give {}: x {:?} w {:?} {opts:?} bias \
                 {bias_len:?} pool {:?} linear ({m}, {k}) x ({nn}, {wk}) flatten {sd} {ed}",
                if *got { "Ok" } else { "Err" },
                if want { "Ok" } else { "Err" },
                (n, c, h, w),
                (o, cg, kh, kw),
                (oh, ow)
            );
        }
        ok += outcomes.iter().filter(|(_, b)| *b).count();
        err += outcomes.iter().filter(|(_, b)| !*b).count();
    }
    println!("random shapes: {ok} ok, {err} errors");
    // Both outcomes are exercised often.
    assert!(ok > 5000 && err > 5000, "ok {ok}, err {err}");
}

/// PyTorch's rules for a valid conv2d, written out independently of the crate's
/// geometry: positive stride, dilation, groups and kernel; groups dividing both channel
/// counts; the weight's channels `C / groups`; the dilated kernel within the padded
/// input; a bias of `O`.
fn conv_valid(
    (_n, c, h, w): (usize, usize, usize, usize),
    (o, cg, kh, kw): (usize, usize, usize, usize),
    opts: &Conv2dOptions,
    bias_len: Option<usize>,
) -> bool {
    let (g, (sh, sw), (ph, pw), (dh, dw)) = (opts.groups, opts.stride, opts.padding, opts.dilation);
    let fits = |input: usize, k: usize, p: usize, d: usize| input + 2 * p > d * (k - 1);
    g > 0
        && sh > 0
        && sw > 0
        && dh > 0
        && dw > 0
        && kh > 0
        && kw > 0
        && c % g == 0
        && o % g == 0
        && cg == c / g
        && fits(h, kh, ph, dh)
        && fits(w, kw, pw, dw)
        && bias_len.is_none_or(|b| b == o)
}

/// `torch.flatten`'s rule: both dimensions in `-rank..rank` and in order.
fn flatten_valid(rank: isize, start: isize, end: isize) -> bool {
    let norm = |d: isize| if d < 0 { d + rank } else { d };
    let (s, e) = (norm(start), norm(end));
    (0..rank).contains(&s) && (0..rank).contains(&e) && s <= e
}

/// Op families whose table entry is a test-side wrapper (`common::ops::MseLoss`,
/// `CrossEntropyLoss`), not a crate layer: their misuse is the free functions' (the
/// `mse*` rows above), and the wrappers `expect` a forward first.
const TEST_SIDE_LAYERS: &[&str] = &["mse", "cross_entropy"];

/// Op families whose layer takes one input rank only.
const FIXED_RANK: &[&str] = &[
    "conv2d",
    "linear",
    "adaptive_avg_pool2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_max_pool2d",
    "batch_norm2d",
];

/// The op families of a case: its own, or a `Sequential`'s parts in order (from its
/// name, `"sequential <what> [conv2d, relu, ...]"`).
fn families(oc: &common::ops::OpCase) -> Vec<&str> {
    match oc.name.split_once('[') {
        Some((_, parts)) if oc.op == "sequential" => {
            parts.trim_end_matches(']').split(", ").collect()
        }
        _ => vec![oc.op],
    }
}

/// Every layer of the op-case table (`tests/common/ops.rs`) rejects the generic bad
/// calls with a typed error naming the layer and the offending shape, never a panic:
/// `backward` before `forward` (`State`), a gradient of the wrong shape (`Shape`), and,
/// for layers of a fixed rank (not element-wise, not flatten), an input with one
/// dimension fewer (`Shape`); then the good forward and backward succeed on the same
/// layer, so the rejections were for the reason named. A new op-case entry is covered
/// here without a row of its own.
#[test]
fn every_op_case_layer_rejects_generic_bad_calls() {
    use common::ops::op_cases;
    let mut failures = Vec::new();
    let mut checked = 0;
    for oc in op_cases() {
        let fams = families(&oc);
        if fams.iter().any(|f| TEST_SIDE_LAYERS.contains(f)) {
            continue;
        }
        checked += 1;
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            let (mut layer, mut rng) = oc.build(0);
            // A layer's errors name the layer (`Conv2d`) or its op (`flatten`); a
            // `Sequential`'s name the failing layer's index.
            let who: Vec<&str> = if oc.op == "sequential" {
                vec!["layer "]
            } else {
                vec![layer.name(), oc.op]
            };
            let expect = |what: &str,
                          r: Result<ArrayD<f32>, Error>,
                          want: V,
                          shape: Option<&[usize]>| match r {
                Ok(_) => Err(format!("{what}: returned Ok")),
                Err(e) => {
                    let msg = e.to_string();
                    let shape = shape.map_or_else(String::new, |s| format!("{s:?}"));
                    if variant(&e) != Some(want) {
                        Err(format!("{what}: expected {want:?}, got {e:?}"))
                    } else if !who.iter().any(|w| msg.contains(w)) || !msg.contains(&shape) {
                        Err(format!("{what}: message {msg:?} lacks {who:?} or {shape}"))
                    } else {
                        Ok(())
                    }
                }
            };
            let x = oc.draw_x(&mut rng);
            // The output shape, from a throwaway layer.
            let y_shape = oc.build(0).0.forward(x.view()).map_err(|e| e.to_string())?;
            let y_shape = y_shape.shape().to_vec();
            let dy = ArrayD::<f32>::ones(IxDyn(&y_shape));
            expect(
                "backward before forward",
                layer.backward(dy.view()),
                V::State,
                None,
            )?;
            if FIXED_RANK.contains(&fams[0]) {
                let fewer = &oc.x_shape[1..];
                let r = layer.forward(ArrayD::ones(IxDyn(fewer)).view());
                expect("forward of one rank fewer", r, V::Shape, Some(fewer))?;
            }
            layer.forward(x.view()).map_err(|e| e.to_string())?;
            let mut bad = y_shape.clone();
            *bad.last_mut().unwrap() += 1;
            let r = layer.backward(ArrayD::ones(IxDyn(&bad)).view());
            expect(
                "backward of a wrong-shape gradient",
                r,
                V::Shape,
                Some(&bad[..]),
            )?;
            layer.forward(x.view()).map_err(|e| e.to_string())?;
            layer
                .backward(dy.view())
                .map_err(|e| format!("good call: {e}"))?;
            Ok(())
        }));
        match r {
            Err(p) => failures.push(format!(
                "{oc:?}: panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(Err(e)) => failures.push(format!("{oc:?}: {e}")),
            Ok(Ok(())) => {}
        }
    }
    assert!(checked >= 70, "only {checked} op cases");
    assert!(
        failures.is_empty(),
        "{} of {checked} op cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The pooling, batch norm and `Sequential` rows (merged from `tests/nn_errors.rs`)
/// cannot pass by returning errors for everything: the same calls with the mistake fixed
/// succeed.
#[test]
fn corrected_layer_calls_succeed() {
    conv2d(
        ones4((1, 3, 5, 5)).view(),
        ones4((2, 3, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    conv2d(
        ones4((1, 1, 3, 3)).view(),
        ones4((1, 1, 5, 5)).view(),
        None,
        &opts().with_padding((1, 1)),
    )
    .unwrap();
    conv2d(
        ones4((1, 4, 5, 5)).view(),
        ones4((2, 2, 3, 3)).view(),
        None,
        &opts().with_groups(2),
    )
    .unwrap();
    mse(
        Array2::<f32>::zeros((4, 1)).view(),
        Array1::<f32>::zeros(4).view(),
    )
    .unwrap();
    adaptive_avg_pool2d(ones4((1, 1, 2, 2)).view(), (5, 3)).unwrap();
    max_pool2d(
        ones4((1, 1, 8, 8)).view(),
        &MaxPool2dOptions::new((3, 3)).with_padding((1, 0)),
    )
    .unwrap();
    max_pool2d(
        ones4((1, 1, 5, 9)).view(),
        &MaxPool2dOptions::new((3, 3)).with_dilation((2, 2)),
    )
    .unwrap();
    avg_pool2d(
        ones4((1, 1, 2, 4)).view(),
        &AvgPool2dOptions::new((2, 2)).with_divisor_override(Some(3)),
    )
    .unwrap();
    adaptive_max_pool2d(ones4((1, 1, 4, 1)).view(), (3, 2)).unwrap();
    let idx = Array4::from_elem((1, 1, 2, 2), 15i64);
    max_pool2d_backward((1, 1, 4, 4), idx.view(), ones4((1, 1, 2, 2)).view()).unwrap();
    let mut net = Sequential::new()
        .with(Relu::new())
        .with(conv(Conv2dConfig::new(2, 2, (3, 3))));
    let y = net.forward(ones4((1, 2, 5, 5)).into_dyn().view()).unwrap();
    net.backward(y.view()).unwrap();
    // Batch norm: two values per channel train; one value per channel in eval mode.
    let mut b = bn(3);
    b.forward(ones4((2, 3, 1, 1)).into_dyn().view()).unwrap();
    b.forward(ones4((1, 3, 2, 1)).into_dyn().view()).unwrap();
    b.set_training(false);
    b.forward(ones4((1, 3, 1, 1)).into_dyn().view()).unwrap();
    assert!(BatchNorm2d::new(BatchNorm2dConfig::new(2).with_eps(0.0).with_momentum(None)).is_ok());
}

/// Degenerate but valid shapes (empty batch, no input or output channels) work.
#[test]
fn degenerate_shapes_do_not_panic() {
    let y = conv2d(
        ones4((0, 2, 5, 5)).view(),
        ones4((3, 2, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    assert_eq!(y.dim(), (0, 3, 3, 3));
    let g = conv2d_backward(
        ones4((0, 2, 5, 5)).view(),
        ones4((3, 2, 3, 3)).view(),
        true,
        y.view(),
        &opts(),
    )
    .unwrap();
    assert_eq!(g.dw, Array4::<f32>::zeros((3, 2, 3, 3)));
    let b = Array1::from_elem(3, 0.5f32);
    let y = conv2d(
        ones4((1, 0, 5, 5)).view(),
        ones4((3, 0, 3, 3)).view(),
        Some(b.view()),
        &opts(),
    )
    .unwrap();
    assert!(y.iter().all(|&v| v == 0.5));
    let y = conv2d(
        ones4((1, 2, 5, 5)).view(),
        ones4((0, 2, 3, 3)).view(),
        None,
        &opts(),
    )
    .unwrap();
    assert_eq!(y.dim(), (1, 0, 3, 3));
    let r = catch_unwind(|| {
        adaptive_avg_pool2d(ones4((1, 1, 1, 1)).view(), (1 << 62, 1 << 62)).is_err()
    });
    assert!(matches!(r, Ok(true)));
}
