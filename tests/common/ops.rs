//! The op-case table: every op and layer the tests exercise, with its shapes and
//! options, in ONE list ([`op_cases`]). The gradient checks (`gradcheck.rs`), the
//! determinism test, the thread-safety test, `backward_params.rs` and the layout test
//! (`gradcheck.rs`) all loop over it, so a new op or layer is one entry here.
//!
//! An entry ([`OpCase`]) says how to build the layer (`layer`), how to compute the same
//! thing through the free functions of `convinit::ops` (`functional`, when there are
//! any), and an independent f64 forward (`reference`) for finite differences. Every
//! entry runs through the `Layer` trait: a loss is wrapped in [`MseLoss`] (a test-side
//! layer) so it fits the same mould. Add a case with one of the constructors below
//! ([`conv`], [`linear`], [`relu`], ...), or write a new constructor for a new op (a
//! layer maker, a reference forward and optionally the functional form) and one line in
//! [`op_cases`].
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use convinit::nn::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, BatchNorm2dConfig, Conv2d,
    Conv2dConfig, Dropout, Dropout2d, Flatten, GeneralRelu, Layer, LeakyRelu, Linear, LinearConfig,
    MaxPool2d, Relu, Sequential, Sigmoid, Tanh,
};
use convinit::ops::{
    AvgPool2dOptions, BatchNormOptions, MaxPool2dOptions, MemoryFormat, adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward, adaptive_max_pool2d_backward, adaptive_max_pool2d_with_indices,
    avg_pool2d, avg_pool2d_backward, batch_norm2d, batch_norm2d_backward, conv2d, conv2d_backward,
    dropout, dropout2d, flatten, flatten_backward, leaky_relu, leaky_relu_backward, linear,
    linear_backward, max_pool2d_backward, max_pool2d_with_indices, mse, mse_backward, relu,
    relu_backward, sigmoid, sigmoid_backward, tanh, tanh_backward,
};
use convinit::train::{
    CrossEntropyOptions, Reduction, cross_entropy_backward_with, cross_entropy_with,
    cross_entropy_with_grad_with,
};
use ndarray::{
    ArcArrayD, Array, Array1, Array2, ArrayD, ArrayView1, ArrayViewD, Ix1, Ix2, Ix4, IxDyn,
    ShapeBuilder,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::naive::{self, Params};

/// Arrays of more than this many elements take the rayon path of the element-wise ops
/// and of pooling (`len > 2 * PAR_CHUNK`, `PAR_CHUNK = 1 << 15` in
/// `src/ops/activation.rs`; `pool.rs` uses the same constant per batch).
pub const PARALLEL_ABOVE: usize = 2 * (1 << 15);

/// Cases with at most this many input and parameter elements are small enough for
/// finite differences (one f64 forward per element, twice).
pub const FINITE_DIFFERENCE_MAX: usize = 1500;

pub type MakeLayer = Arc<dyn Fn(&mut StdRng) -> Box<dyn Layer> + Send + Sync>;
/// The f64 forward: input and parameters (in `Layer::params` order) to output.
pub type Reference = Arc<dyn Fn(&ArrayD<f64>, &[ArrayD<f64>]) -> ArrayD<f64> + Send + Sync>;
/// The same op through `convinit::ops`: (x, params, dy) to `[y, dx, dparams...]`.
pub type Functional =
    Arc<dyn Fn(&ArrayD<f32>, &[ArrayD<f32>], &ArrayD<f32>) -> Vec<ArrayD<f32>> + Send + Sync>;

/// How an input is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// Uniform in [-1, 1).
    Uniform,
    /// In [-1, -0.05] or [0.05, 1]: far enough from an activation's kink that a finite
    /// difference of step 1e-3 never crosses it.
    AwayFromZero,
    /// A shuffle of evenly spaced values in [-2, 2), at least 4 / len apart: no two within
    /// a finite-difference step (1e-3) of each other up to 1500 elements, so a max pool's
    /// argmax never moves under the step.
    Distinct,
}

/// One op or layer on one input shape.
#[derive(Clone)]
pub struct OpCase {
    /// Unique, e.g. `"conv2d groups=2 dilation=(2,1)"`.
    pub name: String,
    /// The op family (`"conv2d"`, `"relu"` ...), for coverage checks.
    pub op: &'static str,
    pub x_shape: Vec<usize>,
    /// Seeds the layer's initialisation, the input and the upstream gradient.
    pub seed: u64,
    pub input: Input,
    pub layer: MakeLayer,
    pub functional: Option<Functional>,
    pub reference: Reference,
    /// Finite-difference step (1e-3; smaller for chains whose hidden values cannot be
    /// kept away from kinks).
    pub step: f64,
    /// Forward tolerance against `reference`, relative to max(1, max |reference|).
    pub forward_tol: f64,
    /// Element-wise in `x` and `dy` (the backward pairs them element by element).
    pub elementwise: bool,
}

impl std::fmt::Debug for OpCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.name, self.x_shape)
    }
}

fn uniform<Sh: ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

fn away_from_zero<Sh: ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f32, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || {
        let m = rng.random_range(0.05f32..1.0);
        if rng.random_bool(0.5) { m } else { -m }
    })
}

fn distinct(rng: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    use rand::seq::SliceRandom;
    let len: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..len)
        .map(|k| (4.0 * k as f64 / len as f64 - 2.0) as f32)
        .collect();
    v.shuffle(rng);
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// What one forward and backward through a case's layer gave.
#[derive(Debug, Clone)]
pub struct Run {
    pub x: ArrayD<f32>,
    pub y: ArrayD<f32>,
    pub dy: ArrayD<f32>,
    pub dx: ArrayD<f32>,
    pub params: Vec<ArrayD<f32>>,
    pub grads: Vec<ArrayD<f32>>,
}

impl OpCase {
    pub fn x_len(&self) -> usize {
        self.x_shape.iter().product()
    }

    /// More elements than the element-wise ops and pooling run serially.
    pub fn above_parallel_threshold(&self) -> bool {
        self.x_len() > PARALLEL_ABOVE
    }

    /// The layer, built from the case's seed shifted by `offset` (0: the case itself).
    pub fn build(&self, offset: u64) -> (Box<dyn Layer>, StdRng) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(offset.wrapping_mul(7919)));
        let layer = (self.layer)(&mut rng);
        (layer, rng)
    }

    pub fn draw_x(&self, rng: &mut StdRng) -> ArrayD<f32> {
        match self.input {
            Input::Uniform => uniform(rng, IxDyn(&self.x_shape)),
            Input::AwayFromZero => away_from_zero(rng, IxDyn(&self.x_shape)),
            Input::Distinct => distinct(rng, &self.x_shape),
        }
    }

    pub fn has_params(&self) -> bool {
        !self.build(0).0.params().is_empty()
    }

    pub fn finite_differences(&self) -> bool {
        let (layer, _) = self.build(0);
        let p: usize = layer.params().iter().map(|p| p.value.len()).sum();
        self.x_len() + p <= FINITE_DIFFERENCE_MAX
    }

    /// Forward then backward (the `&` view path) on the case's input, with a uniform
    /// upstream gradient; `offset` shifts the seed (other data, same shapes).
    pub fn run(&self, offset: u64) -> Run {
        let (mut layer, mut rng) = self.build(offset);
        let x = self.draw_x(&mut rng);
        let y = layer
            .forward(x.view())
            .unwrap_or_else(|e| panic!("{self:?}: {e}"));
        let dy: ArrayD<f32> = uniform(&mut rng, y.raw_dim());
        layer.zero_grad();
        let dx = layer
            .backward(dy.view())
            .unwrap_or_else(|e| panic!("{self:?}: {e}"));
        let params = layer.params().iter().map(|p| p.value.to_owned()).collect();
        let grads = layer.params().iter().map(|p| p.grad.to_owned()).collect();
        Run {
            x,
            y,
            dy,
            dx,
            params,
            grads,
        }
    }

    /// Every output of the case as bits, in a fixed order: the view path (forward,
    /// backward), then a second step on the owned path (`forward_shared`,
    /// `backward_owned`, gradients accumulated on the first), then the functional form.
    /// What the determinism and thread-safety tests compare.
    pub fn outputs(&self, offset: u64) -> Vec<Vec<u32>> {
        let (mut layer, mut rng) = self.build(offset);
        let x = self.draw_x(&mut rng);
        let y = layer.forward(x.view()).unwrap();
        let dy: ArrayD<f32> = uniform(&mut rng, y.raw_dim());
        let dx = layer.backward(dy.view()).unwrap();
        let mut out = vec![bits(&y), bits(&dx)];
        let y2 = layer.forward_shared(x.clone().into_shared()).unwrap();
        let dx2 = layer.backward_owned(dy.clone()).unwrap();
        out.extend([bits(&y2), bits(&dx2)]);
        out.extend(layer.params().iter().map(|p| bits(p.grad.iter())));
        if let Some(f) = &self.functional {
            let (layer, _) = self.build(offset);
            let params: Vec<ArrayD<f32>> =
                layer.params().iter().map(|p| p.value.to_owned()).collect();
            out.extend(f(&x, &params, &dy).iter().map(bits));
        }
        out
    }
}

pub fn bits<'a>(a: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    a.into_iter().map(|v| v.to_bits()).collect()
}

fn d4(a: &ArrayD<f64>) -> ndarray::Array4<f64> {
    a.clone().into_dimensionality::<Ix4>().unwrap()
}

fn d2<T: Clone>(a: &ArrayD<T>) -> Array2<T> {
    a.clone().into_dimensionality::<Ix2>().unwrap()
}

fn d1<T: Clone>(a: &ArrayD<T>) -> Array1<T> {
    a.clone().into_dimensionality::<Ix1>().unwrap()
}

fn f4(a: &ArrayD<f32>) -> ndarray::ArrayView4<'_, f32> {
    a.view().into_dimensionality::<Ix4>().unwrap()
}

fn f2(a: &ArrayD<f32>) -> ndarray::ArrayView2<'_, f32> {
    a.view().into_dimensionality::<Ix2>().unwrap()
}

fn base(name: String, op: &'static str, x_shape: &[usize], seed: u64) -> OpCase {
    OpCase {
        name,
        op,
        x_shape: x_shape.to_vec(),
        seed,
        input: Input::Uniform,
        layer: Arc::new(|_| Box::new(Relu::new())),
        functional: None,
        reference: Arc::new(|x, _| x.clone()),
        step: 1e-3,
        forward_tol: 1e-5,
        elementwise: false,
    }
}

// ---------------------------------------------------------------------------------------
// Constructors, one per op or layer.

/// `Conv2d` (its parameters from `Conv2d::new`) on an (N, C, H, W) input.
pub fn conv(cfg: Conv2dConfig, x_shape: [usize; 4], seed: u64) -> OpCase {
    let p = Params {
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        groups: cfg.groups,
    };
    let opts = cfg.options();
    OpCase {
        layer: Arc::new(move |rng| Box::new(Conv2d::new(cfg, rng).unwrap())),
        functional: Some(Arc::new(move |x, ps, dy| {
            let w = ps[0].view().into_dimensionality::<Ix4>().unwrap();
            let b = ps
                .get(1)
                .map(|b| b.view().into_dimensionality::<Ix1>().unwrap());
            let y = conv2d(f4(x), w, b, &opts).unwrap();
            let g = conv2d_backward(f4(x), w, b.is_some(), f4(dy), &opts).unwrap();
            let mut out = vec![y.into_dyn(), g.dx.into_dyn(), g.dw.into_dyn()];
            out.extend(g.db.map(|d| d.into_dyn()));
            out
        })),
        reference: Arc::new(move |x, ps| {
            let b = ps.get(1).map(d1);
            naive::conv2d(&d4(x), &d4(&ps[0]), b.as_ref(), p).into_dyn()
        }),
        ..base(format!("conv2d {cfg:?}"), "conv2d", &x_shape, seed)
    }
}

fn linear_ref(x: &Array2<f64>, w: &Array2<f64>, b: Option<&Array1<f64>>) -> Array2<f64> {
    let mut y = Array2::zeros((x.nrows(), w.nrows()));
    for ((i, j), v) in y.indexed_iter_mut() {
        *v = (0..x.ncols()).map(|k| x[[i, k]] * w[[j, k]]).sum::<f64>() + b.map_or(0.0, |b| b[j]);
    }
    y
}

/// `Linear` on an (N, in_features) input.
pub fn linear_layer(cfg: LinearConfig, n: usize, seed: u64) -> OpCase {
    OpCase {
        layer: Arc::new(move |rng| Box::new(Linear::new(cfg, rng).unwrap())),
        functional: Some(Arc::new(|x, ps, dy| {
            let w = f2(&ps[0]);
            let b = ps
                .get(1)
                .map(|b| b.view().into_dimensionality::<Ix1>().unwrap());
            let y = linear(f2(x), w, b).unwrap();
            let g = linear_backward(f2(x), w, b.is_some(), f2(dy)).unwrap();
            let mut out = vec![y.into_dyn(), g.dx.into_dyn(), g.dw.into_dyn()];
            out.extend(g.db.map(|d| d.into_dyn()));
            out
        })),
        reference: Arc::new(|x, ps| {
            let b = ps.get(1).map(d1);
            linear_ref(&d2(x), &d2(&ps[0]), b.as_ref()).into_dyn()
        }),
        ..base(
            format!("linear {cfg:?}"),
            "linear",
            &[n, cfg.in_features],
            seed,
        )
    }
}

/// `ReLU` on any shape.
pub fn relu_layer(x_shape: &[usize], seed: u64) -> OpCase {
    OpCase {
        input: Input::AwayFromZero,
        elementwise: true,
        layer: Arc::new(|_| Box::new(Relu::new())),
        functional: Some(Arc::new(|x, _, dy| {
            vec![
                relu(x.view()).unwrap(),
                relu_backward(x.view(), dy.view()).unwrap(),
            ]
        })),
        reference: Arc::new(|x, _| x.mapv(|v| v.max(0.0))),
        forward_tol: 0.0,
        ..base("relu".into(), "relu", x_shape, seed)
    }
}

/// `LeakyReLU(slope)` on any shape.
pub fn leaky_relu_layer(slope: f32, x_shape: &[usize], seed: u64) -> OpCase {
    let s = f64::from(slope);
    OpCase {
        input: Input::AwayFromZero,
        elementwise: true,
        layer: Arc::new(move |_| Box::new(LeakyRelu::new(slope))),
        functional: Some(Arc::new(move |x, _, dy| {
            vec![
                leaky_relu(x.view(), slope).unwrap(),
                leaky_relu_backward(x.view(), dy.view(), slope).unwrap(),
            ]
        })),
        reference: Arc::new(move |x, _| x.mapv(|v| if v > 0.0 { v } else { s * v })),
        forward_tol: 1e-7,
        ..base(format!("leaky_relu({slope})"), "leaky_relu", x_shape, seed)
    }
}

/// `Tanh` on any shape; the functional backward takes the forward's output.
pub fn tanh_layer(x_shape: &[usize], seed: u64) -> OpCase {
    OpCase {
        elementwise: true,
        layer: Arc::new(|_| Box::new(Tanh::new())),
        functional: Some(Arc::new(|x, _, dy| {
            let y = tanh(x.view()).unwrap();
            let dx = tanh_backward(y.view(), dy.view()).unwrap();
            vec![y, dx]
        })),
        reference: Arc::new(|x, _| x.mapv(f64::tanh)),
        // f32's tanh is within a few ulp.
        forward_tol: 1e-6,
        ..base("tanh".into(), "tanh", x_shape, seed)
    }
}

/// `Sigmoid` on any shape; the
/// functional backward takes the forward's output.
pub fn sigmoid_layer(x_shape: &[usize], seed: u64) -> OpCase {
    OpCase {
        elementwise: true,
        layer: Arc::new(|_| Box::new(Sigmoid::new())),
        functional: Some(Arc::new(|x, _, dy| {
            let y = sigmoid(x.view()).unwrap();
            let dx = sigmoid_backward(y.view(), dy.view()).unwrap();
            vec![y, dx]
        })),
        reference: Arc::new(|x, _| x.mapv(|v| 1.0 / (1.0 + (-v).exp()))),
        forward_tol: 1e-6,
        ..base("sigmoid".into(), "sigmoid", x_shape, seed)
    }
}

/// fast.ai's `GeneralRelu(leak, sub, maxv)` on any shape (no functional form).
pub fn general_relu_layer(
    leak: Option<f32>,
    sub: Option<f32>,
    maxv: Option<f32>,
    x_shape: &[usize],
    seed: u64,
) -> OpCase {
    let (l, s, m) = (leak.map(f64::from), sub.map(f64::from), maxv.map(f64::from));
    OpCase {
        input: Input::AwayFromZero,
        elementwise: true,
        layer: Arc::new(move |_| Box::new(GeneralRelu::new(leak, sub, maxv).unwrap())),
        reference: Arc::new(move |x, _| {
            x.mapv(|v| {
                let y = if v > 0.0 { v } else { l.map_or(0.0, |l| l * v) };
                let y = y - s.unwrap_or(0.0);
                m.map_or(y, |m| y.min(m))
            })
        }),
        forward_tol: 1e-6,
        ..base(
            format!("general_relu({leak:?}, {sub:?}, {maxv:?})"),
            "general_relu",
            x_shape,
            seed,
        )
    }
}

/// Adaptive average pooling by its definition, with the window bounds computed in
/// floating point: start = floor(i * H / out), end = ceil((i + 1) * H / out).
pub fn pool_ref(x: &ndarray::Array4<f64>, (oh, ow): (usize, usize)) -> ndarray::Array4<f64> {
    let (n, c, h, w) = x.dim();
    let bounds = |i: usize, size: usize, out: usize| {
        let start = (i as f64 * size as f64 / out as f64).floor() as usize;
        let end = ((i + 1) as f64 * size as f64 / out as f64).ceil() as usize;
        start..end
    };
    let mut y = ndarray::Array4::zeros((n, c, oh, ow));
    for ((ni, ci, i, j), v) in y.indexed_iter_mut() {
        let (rows, cols) = (bounds(i, h, oh), bounds(j, w, ow));
        let count = (rows.len() * cols.len()) as f64;
        let mut sum = 0.0;
        for r in rows {
            for q in cols.clone() {
                sum += x[[ni, ci, r, q]];
            }
        }
        *v = sum / count;
    }
    y
}

/// `AdaptiveAvgPool2d(out)` on an (N, C, H, W) input.
pub fn adaptive_avg_pool(out: (usize, usize), x_shape: [usize; 4], seed: u64) -> OpCase {
    OpCase {
        layer: Arc::new(move |_| Box::new(AdaptiveAvgPool2d::new(out).unwrap())),
        functional: Some(Arc::new(move |x, _, dy| {
            let x = f4(x);
            let y = adaptive_avg_pool2d(x, out).unwrap();
            let dx = adaptive_avg_pool2d_backward(x.dim(), f4(dy)).unwrap();
            vec![y.into_dyn(), dx.into_dyn()]
        })),
        reference: Arc::new(move |x, _| pool_ref(&d4(x), out).into_dyn()),
        forward_tol: 1e-6,
        ..base(
            format!("adaptive_avg_pool2d {out:?}"),
            "adaptive_avg_pool2d",
            &x_shape,
            seed,
        )
    }
}

/// PyTorch's pooling output size, computed independently in floating point:
/// `floor` (or `ceil`) of `(size + 2p - d(k - 1) - 1) / s`, plus 1, and with `ceil_mode`
/// one less when the last window starts at or past `size + p`.
fn pool_out(size: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let q = (size as f64 + 2.0 * p as f64 - (d * (k - 1)) as f64 - 1.0) / s as f64;
    let mut out = if ceil { q.ceil() } else { q.floor() } as i64 + 1;
    if ceil && (out - 1) * s as i64 >= (size + p) as i64 {
        out -= 1;
    }
    out as usize
}

/// The in-bounds taps of output `i`'s window along one axis: `i s - p + j d`.
fn taps(i: usize, size: usize, k: usize, s: usize, p: usize, d: usize) -> Vec<usize> {
    (0..k)
        .map(|j| (i * s + j * d) as i64 - p as i64)
        .filter(|&t| t >= 0 && t < size as i64)
        .map(|t| t as usize)
        .collect()
}

/// Max pooling by its definition (the maximum of the in-bounds taps, `-inf` if none).
pub fn max_pool_ref(x: &ndarray::Array4<f64>, o: MaxPool2dOptions) -> ndarray::Array4<f64> {
    let (n, c, h, w) = x.dim();
    let (k, s, p, d) = (o.kernel, o.stride, o.padding, o.dilation);
    let oh = pool_out(h, k.0, s.0, p.0, d.0, o.ceil_mode);
    let ow = pool_out(w, k.1, s.1, p.1, d.1, o.ceil_mode);
    ndarray::Array4::from_shape_fn((n, c, oh, ow), |(ni, ci, i, j)| {
        let mut m = f64::NEG_INFINITY;
        for r in taps(i, h, k.0, s.0, p.0, d.0) {
            for q in taps(j, w, k.1, s.1, p.1, d.1) {
                m = m.max(x[[ni, ci, r, q]]);
            }
        }
        m
    })
}

/// Average pooling by its definition: the in-bounds sum over PyTorch's divisor (the
/// override; or the window clipped to the padded input, `count_include_pad`; or the
/// in-bounds count).
pub fn avg_pool_ref(x: &ndarray::Array4<f64>, o: AvgPool2dOptions) -> ndarray::Array4<f64> {
    let (n, c, h, w) = x.dim();
    let (k, s, p) = (o.kernel, o.stride, o.padding);
    let oh = pool_out(h, k.0, s.0, p.0, 1, o.ceil_mode);
    let ow = pool_out(w, k.1, s.1, p.1, 1, o.ceil_mode);
    // Window length counting padding, clipped at the padded input's end.
    let padded = |i: usize, size: usize, k: usize, s: usize, p: usize| {
        let start = (i * s) as i64 - p as i64;
        ((start + k as i64).min((size + p) as i64) - start) as f64
    };
    ndarray::Array4::from_shape_fn((n, c, oh, ow), |(ni, ci, i, j)| {
        let (rows, cols) = (taps(i, h, k.0, s.0, p.0, 1), taps(j, w, k.1, s.1, p.1, 1));
        let mut sum = 0.0;
        for &r in &rows {
            for &q in &cols {
                sum += x[[ni, ci, r, q]];
            }
        }
        let div = match o.divisor_override {
            Some(dv) => dv as f64,
            None if o.count_include_pad => {
                padded(i, h, k.0, s.0, p.0) * padded(j, w, k.1, s.1, p.1)
            }
            None => (rows.len() * cols.len()) as f64,
        };
        sum / div
    })
}

/// Adaptive max pooling by its definition, the windows in floating point as
/// [`pool_ref`].
pub fn adaptive_max_pool_ref(
    x: &ndarray::Array4<f64>,
    (oh, ow): (usize, usize),
) -> ndarray::Array4<f64> {
    let (n, c, h, w) = x.dim();
    let bounds = |i: usize, size: usize, out: usize| {
        let start = (i as f64 * size as f64 / out as f64).floor() as usize;
        let end = ((i + 1) as f64 * size as f64 / out as f64).ceil() as usize;
        start..end
    };
    ndarray::Array4::from_shape_fn((n, c, oh, ow), |(ni, ci, i, j)| {
        let mut m = f64::NEG_INFINITY;
        for r in bounds(i, h, oh) {
            for q in bounds(j, w, ow) {
                m = m.max(x[[ni, ci, r, q]]);
            }
        }
        m
    })
}

/// `MaxPool2d(options)` on an (N, C, H, W) input of distinct values.
pub fn max_pool(o: MaxPool2dOptions, x_shape: [usize; 4], seed: u64) -> OpCase {
    OpCase {
        input: Input::Distinct,
        layer: Arc::new(move |_| Box::new(MaxPool2d::new(o).unwrap())),
        functional: Some(Arc::new(move |x, _, dy| {
            let x = f4(x);
            let (y, idx) = max_pool2d_with_indices(x, &o).unwrap();
            let dx = max_pool2d_backward(x.dim(), idx.view(), f4(dy)).unwrap();
            vec![y.into_dyn(), dx.into_dyn()]
        })),
        reference: Arc::new(move |x, _| max_pool_ref(&d4(x), o).into_dyn()),
        forward_tol: 0.0,
        ..base(format!("max_pool2d {o:?}"), "max_pool2d", &x_shape, seed)
    }
}

/// `AvgPool2d(options)` on an (N, C, H, W) input.
pub fn avg_pool(o: AvgPool2dOptions, x_shape: [usize; 4], seed: u64) -> OpCase {
    OpCase {
        layer: Arc::new(move |_| Box::new(AvgPool2d::new(o).unwrap())),
        functional: Some(Arc::new(move |x, _, dy| {
            let x = f4(x);
            let y = avg_pool2d(x, &o).unwrap();
            let dx = avg_pool2d_backward(x.dim(), f4(dy), &o).unwrap();
            vec![y.into_dyn(), dx.into_dyn()]
        })),
        reference: Arc::new(move |x, _| avg_pool_ref(&d4(x), o).into_dyn()),
        forward_tol: 1e-6,
        ..base(format!("avg_pool2d {o:?}"), "avg_pool2d", &x_shape, seed)
    }
}

/// `AdaptiveMaxPool2d(out)` on an (N, C, H, W) input of distinct values.
pub fn adaptive_max_pool(out: (usize, usize), x_shape: [usize; 4], seed: u64) -> OpCase {
    OpCase {
        input: Input::Distinct,
        layer: Arc::new(move |_| Box::new(AdaptiveMaxPool2d::new(out).unwrap())),
        functional: Some(Arc::new(move |x, _, dy| {
            let x = f4(x);
            let (y, idx) = adaptive_max_pool2d_with_indices(x, out).unwrap();
            let dx = adaptive_max_pool2d_backward(x.dim(), idx.view(), f4(dy)).unwrap();
            vec![y.into_dyn(), dx.into_dyn()]
        })),
        reference: Arc::new(move |x, _| adaptive_max_pool_ref(&d4(x), out).into_dyn()),
        forward_tol: 0.0,
        ..base(
            format!("adaptive_max_pool2d {out:?}"),
            "adaptive_max_pool2d",
            &x_shape,
            seed,
        )
    }
}

/// `Flatten(start, end)`; `want` is the output shape, which the reference asserts.
pub fn flatten_layer(start: isize, end: isize, x_shape: &[usize], want: &[usize]) -> OpCase {
    let want = want.to_vec();
    let seed = 50 + x_shape.len() as u64 * 3 + start.unsigned_abs() as u64;
    OpCase {
        layer: Arc::new(move |_| Box::new(Flatten::new(start, end))),
        functional: Some(Arc::new(move |x, _, dy| {
            let y = flatten(x.view(), start, end).unwrap();
            vec![
                y,
                flatten_backward(x.shape(), dy.view(), start, end).unwrap(),
            ]
        })),
        reference: Arc::new(move |x, _| {
            x.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&want))
                .unwrap()
        }),
        forward_tol: 0.0,
        ..base(format!("flatten({start}, {end})"), "flatten", x_shape, seed)
    }
}

/// The running statistics the eval-mode batch norm cases start from (channel `c`).
fn bn_running(c: usize) -> (f32, f32) {
    (0.3 - 0.2 * c as f32, 0.5 + 0.25 * c as f32)
}

/// `BatchNorm2d` on an (N, C, H, W) input: training mode (batch statistics, the gradient
/// through them) or evaluation mode (the running statistics of [`bn_running`]), with a
/// random weight in [0.5, 1.5) and bias in [-0.5, 0.5) when affine. Batch norm is not
/// piecewise linear: the central differences of step 1e-3 carry an O(h^2) = 1e-6
/// relative error, far below the gradient check's 1e-4.
pub fn batch_norm(training: bool, affine: bool, x_shape: [usize; 4], seed: u64) -> OpCase {
    let c = x_shape[1];
    let eps = 1e-5;
    let options = BatchNormOptions {
        training,
        momentum: 0.1,
        eps,
    };
    let running = move || {
        let (m, v): (Vec<f32>, Vec<f32>) = (0..c).map(bn_running).unzip();
        (Array1::from(m), Array1::from(v))
    };
    OpCase {
        layer: Arc::new(move |rng| {
            let cfg = BatchNorm2dConfig::new(c).with_affine(affine);
            let mut bn = BatchNorm2d::new(cfg).unwrap();
            if affine {
                bn.weight_mut()
                    .unwrap()
                    .mapv_inplace(|_| rng.random_range(0.5f32..1.5));
                bn.bias_mut()
                    .unwrap()
                    .mapv_inplace(|_| rng.random_range(-0.5f32..0.5));
            }
            let (m, v) = running();
            bn.running_mean_mut().unwrap().assign(&m);
            bn.running_var_mut().unwrap().assign(&v);
            bn.set_training(training);
            Box::new(bn)
        }),
        functional: Some(Arc::new(move |x, ps, dy| {
            let w = ps
                .first()
                .map(|w| w.view().into_dimensionality::<Ix1>().unwrap());
            let b = ps
                .get(1)
                .map(|b| b.view().into_dimensionality::<Ix1>().unwrap());
            let (mut m, mut v) = running();
            let (rm, rv) = if training {
                (None, None)
            } else {
                (Some(m.view_mut()), Some(v.view_mut()))
            };
            let (y, stats) = batch_norm2d(f4(x), rm, rv, w, b, &options).unwrap();
            let g = batch_norm2d_backward(f4(x), w, b.is_some(), &stats, f4(dy)).unwrap();
            let mut out = vec![y.into_dyn(), g.dx.into_dyn()];
            out.extend(g.dweight.map(|d| d.into_dyn()));
            out.extend(g.dbias.map(|d| d.into_dyn()));
            out
        })),
        reference: Arc::new(move |x, ps| {
            let x = d4(x);
            let mut y = x.clone();
            for ci in 0..c {
                let xc = x.index_axis(ndarray::Axis(1), ci);
                let (mean, var) = if training {
                    let m = xc.len() as f64;
                    let mean = xc.sum() / m;
                    (mean, xc.mapv(|v| (v - mean).powi(2)).sum() / m)
                } else {
                    let (m, v) = bn_running(ci);
                    (f64::from(m), f64::from(v))
                };
                let g = ps.first().map_or(1.0, |w| w[[ci]]);
                let b = ps.get(1).map_or(0.0, |b| b[[ci]]);
                y.index_axis_mut(ndarray::Axis(1), ci)
                    .mapv_inplace(|v| (v - mean) / (var + eps).sqrt() * g + b);
            }
            y.into_dyn()
        }),
        forward_tol: 1e-5,
        ..base(
            format!("batch_norm2d training={training} affine={affine}"),
            "batch_norm2d",
            &x_shape,
            seed,
        )
    }
}

/// `Dropout(p)` (or `Dropout2d(p)` when `channels`) in training mode, seed 17: the
/// reference multiplies by the mask of the layer's first call, read from the functional
/// op on ones (`tests/dropout.rs` checks the functional ops against the layers).
pub fn dropout_layer(p: f32, channels: bool, x_shape: &[usize], seed: u64) -> OpCase {
    type Op = fn(ArrayViewD<'_, f32>, f32, u64, u64) -> convinit::Result<ArrayD<f32>>;
    let (fwd, op): (Op, &'static str) = if channels {
        (dropout2d, "dropout2d")
    } else {
        (dropout, "dropout")
    };
    OpCase {
        elementwise: true,
        layer: Arc::new(move |_| {
            if channels {
                Box::new(Dropout2d::new(p, 17).unwrap())
            } else {
                Box::new(Dropout::new(p, 17).unwrap())
            }
        }),
        // No functional form: the layer is a thin wrapper over it, and the mask indexes
        // the whole tensor, so the determinism test's slices-along-the-batch comparison
        // (made for position-free ops) does not apply.
        reference: Arc::new(move |x, _| {
            let mask = fwd(ArrayD::ones(x.raw_dim()).view(), p, 17, 0).unwrap();
            x * &mask.mapv(f64::from)
        }),
        forward_tol: 1e-7,
        ..base(format!("{op}(p={p})"), op, x_shape, seed)
    }
}

/// `mse` against a fixed target, as a layer: forward gives the loss as a `[1]` tensor,
/// backward `dy[0] * mse_backward(pred, target)`.
#[derive(Debug, Clone)]
pub struct MseLoss {
    target: Array1<f32>,
    pred: Option<ArrayD<f32>>,
}

impl MseLoss {
    pub fn new(target: Array1<f32>) -> Self {
        MseLoss { target, pred: None }
    }
}

impl Layer for MseLoss {
    fn name(&self) -> &'static str {
        "MseLoss"
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> convinit::Result<ArrayD<f32>> {
        let loss = mse(x.view(), self.target.view())?;
        self.pred = Some(x.to_owned());
        Ok(ArrayD::from_elem(IxDyn(&[1]), loss))
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> convinit::Result<ArrayD<f32>> {
        let pred = self.pred.as_ref().expect("MseLoss: forward first");
        Ok(mse_backward(pred.view(), self.target.view())? * grad_out[[0]])
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// `cross_entropy_with` against fixed class targets, as a layer: forward gives the loss
/// as a `[1]` tensor, backward `dy[0] * cross_entropy_backward_with(logits, target)`.
#[derive(Debug, Clone)]
pub struct CrossEntropyLoss {
    target: Array1<i64>,
    options: CrossEntropyOptions,
    logits: Option<Array2<f32>>,
}

impl CrossEntropyLoss {
    pub fn new(target: Array1<i64>, options: CrossEntropyOptions) -> Self {
        CrossEntropyLoss {
            target,
            options,
            logits: None,
        }
    }
}

impl Layer for CrossEntropyLoss {
    fn name(&self) -> &'static str {
        "CrossEntropyLoss"
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> convinit::Result<ArrayD<f32>> {
        let x = x.into_dimensionality::<Ix2>().expect("logits (N, K)");
        let loss = cross_entropy_with(x.view(), self.target.view(), &self.options)?;
        self.logits = Some(x.to_owned());
        Ok(ArrayD::from_elem(IxDyn(&[1]), loss))
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> convinit::Result<ArrayD<f32>> {
        let logits = self
            .logits
            .as_ref()
            .expect("CrossEntropyLoss: forward first");
        let g = cross_entropy_backward_with(logits.view(), self.target.view(), &self.options)?;
        Ok((g * grad_out[[0]]).into_dyn())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn ce_target(n: usize, k: usize, seed: u64) -> Array1<i64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xce);
    Array1::from_shape_simple_fn(n, || rng.random_range(0..k as i64))
}

/// `F.cross_entropy(logits, target, label_smoothing, reduction)` on (N, K) logits against
/// N class targets (from the seed); the reference is the definition in f64.
pub fn cross_entropy_loss(
    n: usize,
    k: usize,
    label_smoothing: f32,
    reduction: Reduction,
    seed: u64,
) -> OpCase {
    let options = CrossEntropyOptions::new()
        .with_label_smoothing(label_smoothing)
        .with_reduction(reduction);
    let target = ce_target(n, k, seed);
    let (t1, t2) = (target.clone(), target.clone());
    let ls = f64::from(label_smoothing);
    OpCase {
        layer: Arc::new(move |_| Box::new(CrossEntropyLoss::new(t1.clone(), options))),
        functional: Some(Arc::new(move |x, _, dy| {
            let (loss, g) = cross_entropy_with_grad_with(f2(x), t2.view(), &options).unwrap();
            vec![
                ArrayD::from_elem(IxDyn(&[1]), loss),
                (g * dy[[0]]).into_dyn(),
            ]
        })),
        reference: Arc::new(move |x, _| {
            let mut total = 0.0;
            for (row, &t) in d2(x).outer_iter().zip(&target) {
                let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                let smooth = row.iter().map(|v| lse - v).sum::<f64>() / row.len() as f64;
                total += (1.0 - ls) * (lse - row[t as usize]) + ls * smooth;
            }
            if reduction == Reduction::Mean {
                total /= n as f64;
            }
            ArrayD::from_elem(IxDyn(&[1]), total)
        }),
        forward_tol: 1e-6,
        ..base(
            format!("cross_entropy(ls={label_smoothing}, {reduction:?})"),
            "cross_entropy",
            &[n, k],
            seed,
        )
    }
}

/// A `Sequential` as a `Layer` (each method the `Sequential` one of the same name), so
/// networks are table cases too.
#[derive(Debug)]
pub struct Net(pub Sequential);

impl Layer for Net {
    fn name(&self) -> &'static str {
        "Sequential"
    }

    fn forward(&mut self, x: ArrayViewD<'_, f32>) -> convinit::Result<ArrayD<f32>> {
        self.0.forward(x)
    }

    fn forward_shared(&mut self, x: ArcArrayD<f32>) -> convinit::Result<ArcArrayD<f32>> {
        self.0.forward_shared(x).map(ArrayD::into_shared)
    }

    fn backward(&mut self, grad_out: ArrayViewD<'_, f32>) -> convinit::Result<ArrayD<f32>> {
        self.0.backward(grad_out)
    }

    fn backward_owned(&mut self, grad_out: ArrayD<f32>) -> convinit::Result<ArrayD<f32>> {
        self.0.backward_owned(grad_out)
    }

    fn backward_params(&mut self, grad_out: ArrayD<f32>) -> convinit::Result<()> {
        self.0.backward_params(grad_out)
    }

    fn params(&self) -> Vec<convinit::nn::Param<'_>> {
        self.0.named_parameters()
    }

    fn params_mut(&mut self) -> Vec<convinit::nn::ParamMut<'_>> {
        self.0.named_parameters_mut()
    }

    fn zero_grad(&mut self) {
        self.0.zero_grad();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn mse_target(n: usize, seed: u64) -> Array1<f32> {
    uniform(&mut StdRng::seed_from_u64(seed ^ 0x5eed), n)
}

fn mse_ref(p: ArrayViewD<'_, f64>, t: ArrayView1<'_, f64>) -> f64 {
    p.iter()
        .zip(t.iter())
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / t.len() as f64
}

/// `mse` on a pred of shape (N) or (N, 1) against a target of N values (from the seed).
pub fn mse_loss(pred_shape: &[usize], seed: u64) -> OpCase {
    let n = pred_shape[0];
    let t64 = mse_target(n, seed).mapv(f64::from);
    OpCase {
        layer: Arc::new(move |_| Box::new(MseLoss::new(mse_target(n, seed)))),
        functional: Some(Arc::new(move |x, _, _| {
            let t = mse_target(n, seed);
            vec![
                ArrayD::from_elem(IxDyn(&[1]), mse(x.view(), t.view()).unwrap()),
                mse_backward(x.view(), t.view()).unwrap(),
            ]
        })),
        reference: Arc::new(move |x, _| {
            ArrayD::from_elem(IxDyn(&[1]), mse_ref(x.view(), t64.view()))
        }),
        forward_tol: 1e-6,
        ..base("mse".into(), "mse", pred_shape, seed)
    }
}

/// A `Sequential` of `parts`' layers (built in order from one rng), its reference the
/// composition of theirs. `step` is the finite-difference step (hidden values cannot be
/// kept off the kinks, so a chain with activations takes 1e-6).
pub fn sequential(
    name: &str,
    parts: Vec<OpCase>,
    x_shape: &[usize],
    seed: u64,
    step: f64,
) -> OpCase {
    // How many parameters each part's layer has (a throwaway build).
    let counts: Vec<usize> = parts.iter().map(|p| p.build(0).0.params().len()).collect();
    let makers: Vec<MakeLayer> = parts.iter().map(|p| p.layer.clone()).collect();
    let refs: Vec<Reference> = parts.iter().map(|p| p.reference.clone()).collect();
    let input = parts[0].input;
    let elementwise = parts.iter().all(|p| p.elementwise);
    let names: Vec<&str> = parts.iter().map(|p| p.op).collect();
    OpCase {
        input,
        elementwise,
        layer: Arc::new(move |rng| {
            let mut net = Sequential::new();
            for m in &makers {
                net.push(m(rng));
            }
            Box::new(Net(net))
        }),
        reference: Arc::new(move |x, ps| {
            let mut h = x.clone();
            let mut at = 0;
            for (r, &k) in refs.iter().zip(&counts) {
                h = r(&h, &ps[at..at + k]);
                at += k;
            }
            h
        }),
        step,
        ..base(
            format!("sequential {name} [{}]", names.join(", ")),
            "sequential",
            x_shape,
            seed,
        )
    }
}

/// The notebook's seed network (random weights).
pub fn seed_net(n: usize, seed: u64) -> OpCase {
    let c = |i, o, k, p| {
        conv(
            Conv2dConfig::new(i, o, (k, k))
                .with_stride((2, 2))
                .with_padding((p, p)),
            [1, i, 1, 1],
            0,
        )
    };
    sequential(
        "seed net",
        vec![
            c(1, 8, 5, 2),
            relu_layer(&[1], 0),
            c(8, 16, 3, 1),
            relu_layer(&[1], 0),
            c(16, 32, 3, 1),
            relu_layer(&[1], 0),
            c(32, 1, 3, 1),
            adaptive_avg_pool((1, 1), [1, 1, 1, 1], 0),
            flatten_layer(0, -1, &[n, 1, 1, 1], &[n]),
        ],
        &[n, 1, 28, 28],
        seed,
        1e-6,
    )
}

// ---------------------------------------------------------------------------------------
// The table.

/// Every case. Small ones (see [`OpCase::finite_differences`]) are checked against
/// finite differences; cases above [`PARALLEL_ABOVE`] elements reach the rayon paths.
pub fn op_cases() -> Vec<OpCase> {
    let c = Conv2dConfig::new;
    vec![
        // conv2d: groups 1 and more, stride, dilation, rectangular kernels, N = 1,
        // padding larger than the kernel, with and without bias.
        conv(c(2, 3, (3, 3)), [2, 2, 5, 6], 1),
        conv(
            c(3, 2, (2, 3)).with_stride((2, 1)).with_padding((1, 2)),
            [2, 3, 6, 5],
            2,
        ),
        conv(
            c(4, 4, (3, 2))
                .with_dilation((2, 1))
                .with_groups(2)
                .with_padding((2, 0)),
            [1, 4, 7, 4],
            3,
        ),
        conv(
            c(2, 3, (1, 1)).with_bias(false).with_padding((2, 1)),
            [2, 2, 3, 4],
            4,
        ),
        // Larger ones (the determinism test's): batches not a multiple of the reduction
        // chunk (8), groups, dilation, 1x1 with stride, the seed net's first layer.
        conv(
            c(4, 6, (3, 3))
                .with_padding((1, 2))
                .with_stride((2, 1))
                .with_groups(2),
            [37, 4, 13, 11],
            5,
        ),
        conv(c(3, 5, (3, 3)), [1, 3, 9, 9], 6),
        conv(
            c(4, 8, (3, 2))
                .with_groups(4)
                .with_dilation((2, 3))
                .with_padding((2, 0)),
            [9, 4, 12, 10],
            7,
        ),
        conv(c(6, 3, (1, 1)).with_stride((2, 2)), [17, 6, 5, 5], 8),
        conv(
            c(1, 8, (5, 5)).with_stride((2, 2)).with_padding((2, 2)),
            [23, 1, 28, 28],
            9,
        ),
        // Channels-last outputs (the direct path writes them, dy arrives channel-major):
        // one input channel, and a vector of them.
        conv(
            c(1, 8, (5, 5))
                .with_stride((2, 2))
                .with_padding((2, 2))
                .with_memory_format(MemoryFormat::ChannelsLast),
            [11, 1, 14, 14],
            41,
        ),
        conv(
            c(16, 24, (3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_memory_format(MemoryFormat::ChannelsLast),
            [19, 16, 9, 9],
            42,
        ),
        // Depthwise (groups = C, multiplier 2, strided): the depthwise path.
        conv(
            c(8, 16, (3, 3))
                .with_groups(8)
                .with_stride((2, 2))
                .with_padding((1, 1)),
            [13, 8, 15, 14],
            13,
        ),
        // linear, with and without bias.
        linear_layer(LinearConfig::new(5, 3), 4, 10),
        linear_layer(LinearConfig::new(5, 3).with_bias(false), 4, 11),
        linear_layer(LinearConfig::new(300, 50), 67, 12),
        // Element-wise activations, small and above the parallel threshold.
        relu_layer(&[2, 3, 4, 5], 20),
        relu_layer(&[19, 5, 29, 31], 21),
        leaky_relu_layer(0.0, &[3, 2, 5], 30),
        leaky_relu_layer(0.1, &[3, 2, 5], 31),
        leaky_relu_layer(5f32.sqrt(), &[3, 2, 5], 32),
        leaky_relu_layer(-0.5, &[3, 2, 5], 33),
        leaky_relu_layer(0.1, &[19, 5, 29, 31], 34),
        leaky_relu_layer(5f32.sqrt(), &[70_001], 35),
        general_relu_layer(Some(0.1), Some(0.4), Some(6.0), &[2, 3, 4, 5], 36),
        general_relu_layer(None, Some(0.4), None, &[3, 7], 37),
        general_relu_layer(Some(0.1), Some(0.4), Some(6.0), &[19, 5, 29, 31], 38),
        // tanh and sigmoid (backward from the saved output), small and above the
        // parallel threshold.
        tanh_layer(&[2, 3, 4, 5], 25),
        tanh_layer(&[19, 5, 29, 31], 26),
        sigmoid_layer(&[3, 2, 5], 27),
        sigmoid_layer(&[70_001], 28),
        // Adaptive average pooling: global, uneven and overlapping windows, outputs
        // larger than the input; and batches above the parallel threshold.
        adaptive_avg_pool((1, 1), [2, 2, 4, 4], 40),
        adaptive_avg_pool((3, 2), [2, 2, 7, 5], 41),
        adaptive_avg_pool((3, 4), [2, 2, 5, 7], 42),
        adaptive_avg_pool((5, 7), [2, 2, 3, 2], 43),
        adaptive_avg_pool((4, 6), [2, 2, 6, 6], 44),
        adaptive_avg_pool((1, 1), [19, 5, 7, 9], 45),
        adaptive_avg_pool((3, 4), [40, 4, 29, 31], 46),
        adaptive_avg_pool((31, 33), [40, 4, 29, 31], 47),
        // Max pooling: default stride, overlapping windows with padding, dilation,
        // ceil mode (a clipped last window), rectangular; and above the parallel
        // threshold (N * C * H * W > 2^16).
        max_pool(MaxPool2dOptions::new((2, 2)), [2, 3, 6, 6], 80),
        max_pool(
            MaxPool2dOptions::new((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1)),
            [2, 2, 9, 7],
            81,
        ),
        max_pool(
            MaxPool2dOptions::new((3, 2))
                .with_stride((1, 2))
                .with_dilation((2, 1))
                .with_padding((1, 1)),
            [2, 2, 8, 7],
            82,
        ),
        max_pool(
            MaxPool2dOptions::new((2, 3)).with_ceil_mode(true),
            [1, 3, 7, 8],
            83,
        ),
        max_pool(
            MaxPool2dOptions::new((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_ceil_mode(true),
            [2, 2, 6, 8],
            84,
        ),
        max_pool(
            MaxPool2dOptions::new((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1)),
            [40, 4, 29, 31],
            85,
        ),
        // Average pooling: count_include_pad both ways, ceil mode with a window past
        // the padded end, divisor_override (also negative), and a large one.
        avg_pool(AvgPool2dOptions::new((2, 2)), [2, 3, 6, 6], 90),
        avg_pool(
            AvgPool2dOptions::new((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1)),
            [2, 2, 9, 7],
            91,
        ),
        avg_pool(
            AvgPool2dOptions::new((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_count_include_pad(false),
            [2, 2, 9, 7],
            92,
        ),
        avg_pool(
            AvgPool2dOptions::new((3, 2))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_ceil_mode(true),
            [2, 2, 6, 7],
            93,
        ),
        avg_pool(
            AvgPool2dOptions::new((3, 2))
                .with_stride((2, 2))
                .with_padding((1, 1))
                .with_ceil_mode(true)
                .with_count_include_pad(false),
            [2, 2, 6, 7],
            94,
        ),
        avg_pool(
            AvgPool2dOptions::new((2, 3))
                .with_stride((1, 2))
                .with_divisor_override(Some(5)),
            [2, 2, 5, 7],
            95,
        ),
        avg_pool(
            AvgPool2dOptions::new((2, 2)).with_divisor_override(Some(-3)),
            [1, 2, 4, 4],
            96,
        ),
        avg_pool(
            AvgPool2dOptions::new((3, 3))
                .with_stride((2, 2))
                .with_padding((1, 1)),
            [40, 4, 29, 31],
            97,
        ),
        // Adaptive max pooling: global, uneven and overlapping, larger than the input,
        // and large.
        adaptive_max_pool((1, 1), [2, 3, 5, 5], 100),
        adaptive_max_pool((3, 2), [2, 3, 7, 5], 101),
        adaptive_max_pool((5, 7), [2, 2, 3, 2], 102),
        adaptive_max_pool((4, 3), [2, 2, 6, 6], 103),
        adaptive_max_pool((3, 4), [40, 4, 29, 31], 104),
        // batch norm: training and eval mode, affine or not, N = 1 (spatial values
        // only), and a large one.
        batch_norm(true, true, [4, 3, 5, 5], 90),
        batch_norm(true, false, [3, 2, 4, 3], 91),
        batch_norm(false, true, [4, 3, 5, 5], 92),
        batch_norm(false, false, [2, 2, 3, 3], 93),
        batch_norm(true, true, [1, 2, 3, 1], 94),
        batch_norm(true, true, [19, 5, 29, 31], 95),
        batch_norm(false, true, [19, 5, 29, 31], 96),
        // dropout and channel dropout: small, and above the parallel threshold.
        dropout_layer(0.3, false, &[2, 3, 4, 5], 100),
        dropout_layer(0.5, false, &[19, 5, 29, 31], 101),
        dropout_layer(0.4, true, &[3, 4, 2, 3], 102),
        dropout_layer(0.2, true, &[19, 5, 29, 31], 103),
        // flatten
        flatten_layer(1, -1, &[2, 3, 4, 5], &[2, 60]),
        flatten_layer(0, -1, &[4, 1, 1, 1], &[4]),
        flatten_layer(1, 2, &[2, 3, 4, 5], &[2, 12, 5]),
        flatten_layer(-2, -1, &[3, 2, 2], &[3, 4]),
        flatten_layer(1, -1, &[19, 5, 29, 31], &[19, 5 * 29 * 31]),
        // mse
        mse_loss(&[7], 60),
        mse_loss(&[7, 1], 61),
        mse_loss(&[1001], 62),
        // cross_entropy: smoothing 0, between and 1, mean and sum.
        cross_entropy_loss(5, 7, 0.0, Reduction::Mean, 63),
        cross_entropy_loss(6, 4, 0.1, Reduction::Sum, 64),
        cross_entropy_loss(3, 9, 1.0, Reduction::Mean, 65),
        cross_entropy_loss(1, 2, 0.3, Reduction::Sum, 66),
        // Sequential: the whole chain with a loss (every parameter gradient against
        // finite differences), element-wise chains (the layout test's), the seed net.
        sequential(
            "chain",
            vec![
                conv(
                    c(1, 3, (3, 3)).with_stride((2, 2)).with_padding((1, 1)),
                    [3, 1, 7, 7],
                    0,
                ),
                relu_layer(&[1], 0),
                conv(c(3, 4, (3, 3)).with_padding((1, 1)), [3, 3, 4, 4], 0),
                leaky_relu_layer(0.1, &[1], 0),
                adaptive_avg_pool((2, 2), [3, 4, 4, 4], 0),
                flatten_layer(1, -1, &[3, 4, 2, 2], &[3, 16]),
                linear_layer(LinearConfig::new(16, 1), 3, 0),
                mse_loss(&[3, 1], 70),
            ],
            &[3, 1, 7, 7],
            70,
            1e-6,
        ),
        sequential(
            "grouped",
            vec![
                conv(
                    c(2, 6, (3, 3)).with_groups(2).with_padding((1, 1)),
                    [21, 2, 10, 10],
                    0,
                ),
                leaky_relu_layer(0.2, &[1], 0),
                adaptive_avg_pool((2, 2), [21, 6, 10, 10], 0),
                flatten_layer(1, -1, &[21, 6, 2, 2], &[21, 24]),
                linear_layer(LinearConfig::new(24, 3), 21, 0),
            ],
            &[21, 2, 10, 10],
            71,
            1e-6,
        ),
        sequential(
            "element-wise",
            vec![
                leaky_relu_layer(0.2, &[1], 0),
                relu_layer(&[1], 0),
                general_relu_layer(Some(0.1), Some(0.4), None, &[1], 0),
                leaky_relu_layer(-0.5, &[1], 0),
            ],
            &[2, 3, 4, 5],
            72,
            1e-3,
        ),
        sequential(
            "element-wise, large",
            vec![
                relu_layer(&[1], 0),
                leaky_relu_layer(0.1, &[1], 0),
                flatten_layer(1, -1, &[19, 5, 29, 31], &[19, 5 * 29 * 31]),
            ],
            &[19, 5, 29, 31],
            73,
            1e-3,
        ),
        sequential(
            "relu first",
            vec![
                relu_layer(&[1], 0),
                linear_layer(LinearConfig::new(12, 1), 9, 0),
            ],
            &[9, 12],
            74,
            1e-6,
        ),
        sequential(
            "tanh and sigmoid",
            vec![
                linear_layer(LinearConfig::new(6, 5), 4, 0),
                tanh_layer(&[1], 0),
                linear_layer(LinearConfig::new(5, 3), 4, 0),
                sigmoid_layer(&[1], 0),
            ],
            &[4, 6],
            78,
            1e-6,
        ),
        sequential(
            "linear first",
            vec![
                linear_layer(LinearConfig::new(12, 7), 9, 0),
                relu_layer(&[1], 0),
                linear_layer(LinearConfig::new(7, 1).with_bias(false), 9, 0),
            ],
            &[9, 12],
            75,
            1e-6,
        ),
        sequential(
            "grouped first conv without bias",
            vec![
                conv(
                    c(4, 6, (3, 3))
                        .with_stride((2, 2))
                        .with_padding((1, 1))
                        .with_groups(2)
                        .with_bias(false),
                    [5, 4, 9, 11],
                    0,
                ),
                leaky_relu_layer(0.1, &[1], 0),
                conv(
                    c(6, 1, (3, 3)).with_stride((2, 2)).with_padding((1, 1)),
                    [5, 6, 5, 6],
                    0,
                ),
                adaptive_avg_pool((1, 1), [5, 1, 3, 3], 0),
                flatten_layer(0, -1, &[5, 1, 1, 1], &[5]),
            ],
            &[5, 4, 9, 11],
            77,
            1e-6,
        ),
        sequential(
            "conv, batch norm",
            vec![
                // No conv bias: batch norm removes it (its gradient is exactly zero).
                conv(
                    c(2, 3, (3, 3)).with_padding((1, 1)).with_bias(false),
                    [3, 2, 5, 5],
                    0,
                ),
                batch_norm(true, true, [3, 3, 5, 5], 0),
                leaky_relu_layer(0.1, &[1], 0),
                adaptive_avg_pool((2, 2), [3, 3, 5, 5], 0),
                flatten_layer(1, -1, &[3, 3, 2, 2], &[3, 12]),
                linear_layer(LinearConfig::new(12, 1), 3, 0),
                mse_loss(&[3, 1], 78),
            ],
            &[3, 2, 5, 5],
            78,
            1e-6,
        ),
        seed_net(37, 76),
    ]
}

/// The op families the table must cover (a test fails when one has no case).
pub const OPS: &[&str] = &[
    "conv2d",
    "linear",
    "relu",
    "leaky_relu",
    "general_relu",
    "tanh",
    "sigmoid",
    "adaptive_avg_pool2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_max_pool2d",
    "batch_norm2d",
    "dropout",
    "dropout2d",
    "flatten",
    "mse",
    "cross_entropy",
    "sequential",
];

/// The same values as `a` in another memory layout: `"standard"`, `"fortran"` (all
/// strides reversed) or `"permuted"` (axis 1 innermost in memory, as channels-last; for
/// rank 2, the transpose). Both others are contiguous but not standard, so code that
/// pairs two arrays by memory order instead of by index gets them wrong.
pub const LAYOUTS: &[&str] = &["standard", "fortran", "permuted"];

pub fn in_layout(a: &ArrayD<f32>, layout: &str) -> ArrayD<f32> {
    let out = match layout {
        "standard" => a.as_standard_layout().into_owned(),
        "fortran" => {
            let mut f = ArrayD::zeros(a.raw_dim().f());
            f.assign(a);
            f
        }
        "permuted" => {
            // Memory order: axis 0, then 2.., then 1 (for rank 2: transposed).
            let n = a.ndim();
            let mut order: Vec<usize> = (0..n).collect();
            if n >= 2 {
                order.remove(1);
                order.push(1);
            }
            let shape: Vec<usize> = order.iter().map(|&i| a.shape()[i]).collect();
            let mut p = ArrayD::zeros(IxDyn(&shape));
            // `p` permuted back to `a`'s axis order is a view of `a`'s shape.
            let mut inverse = vec![0; n];
            for (k, &i) in order.iter().enumerate() {
                inverse[i] = k;
            }
            p.view_mut().permuted_axes(IxDyn(&inverse)).assign(a);
            p.permuted_axes(IxDyn(&inverse))
        }
        other => panic!("unknown layout {other:?}"),
    };
    assert_eq!(&out, a);
    out
}
