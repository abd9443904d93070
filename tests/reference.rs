//! Conformance against PyTorch: runs every `*.safetensors` case in `tests/fixtures` (or
//! `$CONVINIT_REFERENCE_DIR`, any mix of ops), dispatching on the metadata `"op"`, and
//! checks every forward output and gradient to `common::tolerance(terms, max |ref|)`:
//! relative to the tensor's scale, `8 * eps * sqrt(terms)` where `terms` is the length
//! of the sums behind each element (given per op and tensor below). It reports and
//! checks how many cases of each op ran; an unknown op fails.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{
    Case, Score, case_paths, compare, compare_at_scale, fixtures_dir, load_case, reference_dir,
};
use convinit::init::{Nonlinearity, calculate_gain, default_bounds, fans};
use convinit::nn::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, BatchNorm2dConfig, BufferViewMut,
    Conv2d, Conv2dConfig, Flatten, Layer, LeakyRelu, Linear, LinearConfig, MaxPool2d, Relu,
    Sequential,
};
use convinit::ops::{AvgPool2dOptions, MaxPool2dOptions, mse, mse_backward};
use convinit::train::{
    Adam, AdamConfig, AdamW, CrossEntropyOptions, Optimizer, Reduction, cross_entropy_with,
    cross_entropy_with_grad_with,
};
use ndarray::{Array1, Array2, Array4, ArrayD, Ix1, Ix2, Ix4};
use rand::SeedableRng;

type Outcome = Result<Score, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn as4(case: &Case, key: &str) -> Result<Array4<f32>, String> {
    case.tensor(key)?
        .clone()
        .into_dimensionality::<Ix4>()
        .map_err(|e| format!("tensor {key:?}: {e}"))
}

fn as1(case: &Case, key: &str) -> Result<Array1<f32>, String> {
    case.tensor(key)?
        .clone()
        .into_dimensionality::<Ix1>()
        .map_err(|e| format!("tensor {key:?}: {e}"))
}

/// A Conv2d layer holding the case's (or the net's) weight and bias.
fn conv_layer(
    w: Array4<f32>,
    b: Option<Array1<f32>>,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
) -> Result<Conv2d, String> {
    let (o, cg, kh, kw) = w.dim();
    let config = Conv2dConfig::new(cg * groups, o, (kh, kw))
        .with_stride(stride)
        .with_padding(padding)
        .with_dilation(dilation)
        .with_groups(groups)
        .with_bias(b.is_some());
    Conv2d::from_parts(config, w, b).map_err(err)
}

fn run_conv2d(case: &Case) -> Outcome {
    let b = case
        .tensors
        .contains_key("b")
        .then(|| as1(case, "b"))
        .transpose()?;
    let mut conv = conv_layer(
        as4(case, "w")?,
        b,
        case.meta_pair("stride")?,
        case.meta_pair("padding")?,
        case.meta_pair("dilation")?,
        case.meta_num("groups")?,
    )?;
    let y = conv.forward(case.tensor("x")?.view()).map_err(err)?;
    let dx = conv.backward(case.tensor("dy")?.view()).map_err(err)?;
    // Terms per element: y sums C/g * kh * kw products (and the bias), dx sums
    // O/g * kh * kw, dw and db sum over N * oh * ow positions.
    let (o, cg, kh, kw) = conv.weight().dim();
    let og = o / conv.config().groups;
    let per_image: usize = y.shape()[2..].iter().product::<usize>() * y.shape()[0];
    let mut e = compare("y", y.view(), case.tensor("y")?.view(), cg * kh * kw + 1)?;
    e = e.max(compare(
        "dx",
        dx.view(),
        case.tensor("dx")?.view(),
        og * kh * kw,
    )?);
    let dw = conv.weight_grad().view().into_dyn();
    e = e.max(compare("dw", dw, case.tensor("dw")?.view(), per_image)?);
    match (conv.bias_grad(), case.tensors.contains_key("db")) {
        (Some(db), true) => {
            e = e.max(compare(
                "db",
                db.view().into_dyn(),
                case.tensor("db")?.view(),
                per_image,
            )?)
        }
        (None, false) => {}
        _ => return Err("b and db must both be present or both absent".into()),
    }
    Ok(e)
}

fn run_pool(case: &Case) -> Outcome {
    let (oh, ow) = case.meta_pair("output_size")?;
    let mut pool = AdaptiveAvgPool2d::new((oh, ow)).map_err(err)?;
    let x = case.tensor("x")?;
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let y = pool.forward(x.view()).map_err(err)?;
    let dx = pool.backward(case.tensor("dy")?.view()).map_err(err)?;
    // y: the largest window; dx: the most windows that overlap on one input element.
    let window = (h.div_ceil(oh) + 1) * (w.div_ceil(ow) + 1);
    let overlap = (oh.div_ceil(h) + 1) * (ow.div_ceil(w) + 1);
    let e = compare("y", y.view(), case.tensor("y")?.view(), window)?;
    Ok(e.max(compare(
        "dx",
        dx.view(),
        case.tensor("dx")?.view(),
        overlap,
    )?))
}

/// Parses a boolean metadata value, `"true"` / `"false"` (any case).
fn meta_bool(case: &Case, key: &str) -> Result<bool, String> {
    match case.meta_str(key)?.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "metadata {key:?}: expected true or false, got {other:?}"
        )),
    }
}

/// The argmax indices must be PyTorch's exactly (an off-by-one tie or NaN rule moves
/// them, and with them every gradient).
fn same_indices(ours: Option<&Array4<i64>>, case: &Case) -> Result<(), String> {
    let ours = ours.ok_or("no indices kept")?.view().into_dyn();
    let want = case.tensor_i64("indices")?;
    if ours != want.view() {
        let first = ours
            .indexed_iter()
            .zip(want.iter())
            .find(|((_, a), b)| a != b)
            .map(|((at, a), b)| format!("at {at:?}: ours {a}, reference {b}"));
        return Err(format!(
            "indices differ (shapes {:?} / {:?}) {}",
            ours.shape(),
            want.shape(),
            first.unwrap_or_default()
        ));
    }
    Ok(())
}

/// How many windows of `kernel` taps spaced `dilation` apart, `stride` apart, can share
/// one input element (the most gradients that add up in it).
fn overlap(kernel: usize, stride: usize, dilation: usize) -> usize {
    (dilation * (kernel - 1) + 1).div_ceil(stride)
}

fn run_max_pool(case: &Case) -> Outcome {
    let (k, s, p, d) = (
        case.meta_pair("kernel")?,
        case.meta_pair("stride")?,
        case.meta_pair("padding")?,
        case.meta_pair("dilation")?,
    );
    let options = MaxPool2dOptions::new(k)
        .with_stride(s)
        .with_padding(p)
        .with_dilation(d)
        .with_ceil_mode(meta_bool(case, "ceil_mode")?);
    let mut pool = MaxPool2d::new(options).map_err(err)?;
    let y = pool.forward(case.tensor("x")?.view()).map_err(err)?;
    same_indices(pool.indices(), case)?;
    let dx = pool.backward(case.tensor("dy")?.view()).map_err(err)?;
    // y: a copy of one input (1 term: exact); dx: the sum of the gradients of every
    // window whose maximum an element is.
    let e = compare("y", y.view(), case.tensor("y")?.view(), 1)?;
    let terms = overlap(k.0, s.0, d.0) * overlap(k.1, s.1, d.1);
    Ok(e.max(compare("dx", dx.view(), case.tensor("dx")?.view(), terms)?))
}

fn run_avg_pool(case: &Case) -> Outcome {
    let (k, s, p) = (
        case.meta_pair("kernel")?,
        case.meta_pair("stride")?,
        case.meta_pair("padding")?,
    );
    let divisor = match case.meta_str("divisor_override")? {
        "none" => None,
        v => Some(
            v.parse::<i64>()
                .map_err(|_| format!("divisor_override: cannot parse {v:?}"))?,
        ),
    };
    let options = AvgPool2dOptions::new(k)
        .with_stride(s)
        .with_padding(p)
        .with_ceil_mode(meta_bool(case, "ceil_mode")?)
        .with_count_include_pad(meta_bool(case, "count_include_pad")?)
        .with_divisor_override(divisor);
    let mut pool = AvgPool2d::new(options).map_err(err)?;
    let y = pool.forward(case.tensor("x")?.view()).map_err(err)?;
    let dx = pool.backward(case.tensor("dy")?.view()).map_err(err)?;
    // y sums kh * kw values and divides (one more rounding); each dx element sums one
    // divided gradient per window covering it.
    let e = compare("y", y.view(), case.tensor("y")?.view(), k.0 * k.1 + 1)?;
    let terms = overlap(k.0, s.0, 1) * overlap(k.1, s.1, 1) + 1;
    Ok(e.max(compare("dx", dx.view(), case.tensor("dx")?.view(), terms)?))
}

fn run_adaptive_max_pool(case: &Case) -> Outcome {
    let (oh, ow) = case.meta_pair("output_size")?;
    let mut pool = AdaptiveMaxPool2d::new((oh, ow)).map_err(err)?;
    let x = case.tensor("x")?;
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let y = pool.forward(x.view()).map_err(err)?;
    same_indices(pool.indices(), case)?;
    let dx = pool.backward(case.tensor("dy")?.view()).map_err(err)?;
    // y: a copy (exact); dx: the most windows that overlap on one input element.
    let e = compare("y", y.view(), case.tensor("y")?.view(), 1)?;
    let overlap = (oh.div_ceil(h) + 1) * (ow.div_ceil(w) + 1);
    Ok(e.max(compare(
        "dx",
        dx.view(),
        case.tensor("dx")?.view(),
        overlap,
    )?))
}

fn run_batch_norm2d(case: &Case) -> Outcome {
    let x = case.tensor("x")?;
    let c = x.shape()[1];
    let momentum = match case.meta_str("momentum")?.to_ascii_lowercase().as_str() {
        "none" => None,
        _ => Some(case.meta_num::<f64>("momentum")?),
    };
    let affine = meta_bool(case, "affine")?;
    let config = BatchNorm2dConfig::new(c)
        .with_eps(case.meta_num("eps")?)
        .with_momentum(momentum)
        .with_affine(affine);
    let mut bn = BatchNorm2d::new(config).map_err(err)?;
    if affine {
        bn.weight_mut()
            .ok_or("no weight")?
            .assign(&as1(case, "weight")?);
        bn.bias_mut().ok_or("no bias")?.assign(&as1(case, "bias")?);
    }
    bn.running_mean_mut()
        .ok_or("no running_mean")?
        .assign(&as1(case, "running_mean")?);
    bn.running_var_mut()
        .ok_or("no running_var")?
        .assign(&as1(case, "running_var")?);
    if let Ok(t) = case.tensor_i64("num_batches_tracked") {
        for b in bn.buffers_mut() {
            if let BufferViewMut::I64(mut v) = b.value {
                v.assign(t);
            }
        }
    }
    bn.set_training(meta_bool(case, "training")?);
    let y = bn.forward(x.view()).map_err(err)?;
    let dx = bn.backward(case.tensor("dy")?.view()).map_err(err)?;
    // Every output depends on a channel's statistics, sums over M = N * H * W values
    // (the running ones too, and the weight and bias gradients sum over the same M);
    // in training mode dx also on the channel sums of dy and dy * xhat. All M terms.
    let m = x.len() / c;
    let mut e = compare("y", y.view(), case.tensor("y")?.view(), m)?;
    e = e.max(compare("dx", dx.view(), case.tensor("dx")?.view(), m)?);
    let rm = bn
        .running_mean()
        .ok_or("no running_mean")?
        .view()
        .into_dyn();
    let rv = bn.running_var().ok_or("no running_var")?.view().into_dyn();
    e = e.max(compare(
        "running_mean_after",
        rm,
        case.tensor("running_mean_after")?.view(),
        m,
    )?);
    e = e.max(compare(
        "running_var_after",
        rv,
        case.tensor("running_var_after")?.view(),
        m,
    )?);
    if affine {
        let dw = bn.weight_grad().ok_or("no weight grad")?.view().into_dyn();
        let db = bn.bias_grad().ok_or("no bias grad")?.view().into_dyn();
        e = e.max(compare("dweight", dw, case.tensor("dweight")?.view(), m)?);
        e = e.max(compare("dbias", db, case.tensor("dbias")?.view(), m)?);
    }
    Ok(e)
}

fn run_leaky(case: &Case) -> Outcome {
    let mut act = LeakyRelu::new(case.meta_num("negative_slope")?);
    let y = act.forward(case.tensor("x")?.view()).map_err(err)?;
    let dx = act.backward(case.tensor("dy")?.view()).map_err(err)?;
    // One product per element.
    let e = compare("y", y.view(), case.tensor("y")?.view(), 1)?;
    Ok(e.max(compare("dx", dx.view(), case.tensor("dx")?.view(), 1)?))
}

fn run_mse(case: &Case) -> Outcome {
    let (pred, target) = (case.tensor("pred")?, case.tensor("target")?);
    let loss = mse(pred.view(), target.view()).map_err(err)?;
    let dpred = mse_backward(pred.view(), target.view()).map_err(err)?;
    let loss = ArrayD::from_elem(ndarray::IxDyn(&[1]), loss);
    // The loss sums N squares; each dpred element is 2 * (p - t) / N, two roundings.
    let e = compare("loss", loss.view(), case.tensor("loss")?.view(), pred.len())?;
    Ok(e.max(compare(
        "dpred",
        dpred.view(),
        case.tensor("dpred")?.view(),
        2,
    )?))
}

/// The notebook's network: Conv2d(1,8,5,s2,p2) ReLU Conv2d(8,16,3,s2,p1) ReLU
/// Conv2d(16,32,3,s2,p1) ReLU Conv2d(32,1,3,s2,p1) AdaptiveAvgPool2d(1) flatten.
pub fn seed_net(case: &Case) -> Result<Sequential, String> {
    let conv = |i: usize, stride, padding| -> Result<Conv2d, String> {
        conv_layer(
            as4(case, &format!("{i}.weight"))?,
            Some(as1(case, &format!("{i}.bias"))?),
            stride,
            padding,
            (1, 1),
            1,
        )
    };
    Ok(Sequential::new()
        .with(conv(0, (2, 2), (2, 2))?)
        .with(Relu::new())
        .with(conv(2, (2, 2), (1, 1))?)
        .with(Relu::new())
        .with(conv(4, (2, 2), (1, 1))?)
        .with(Relu::new())
        .with(conv(6, (2, 2), (1, 1))?)
        .with(AdaptiveAvgPool2d::new((1, 1)).map_err(err)?)
        // (N, 1, 1, 1) -> (N): the fixture's `out` is one value per image.
        .with(Flatten::new(0, -1)))
}

fn run_seed_net(case: &Case) -> Outcome {
    let mut net = seed_net(case)?;
    let target = case.tensor("target")?;
    let out = net.forward(case.tensor("x")?.view()).map_err(err)?;
    let loss = mse(out.view(), target.view()).map_err(err)?;
    let dout = mse_backward(out.view(), target.view()).map_err(err)?;
    net.backward(dout.view()).map_err(err)?;

    // Errors compound through the layers; every tensor gets the longest reduction of
    // the chain, the first conv's weight gradient over N * (H/2) * (W/2) positions.
    let x = case.tensor("x")?;
    let terms = x.shape()[0] * x.shape()[2].div_ceil(2) * x.shape()[3].div_ceil(2);
    let mut e = compare("out", out.view(), case.tensor("out")?.view(), terms)?;
    let loss = ArrayD::from_elem(ndarray::IxDyn(&[1]), loss);
    e = e.max(compare(
        "loss",
        loss.view(),
        case.tensor("loss")?.view(),
        terms,
    )?);
    let params = net.named_parameters();
    if params.len() != 8 {
        return Err(format!("expected 8 parameters, got {}", params.len()));
    }
    for p in params {
        let key = format!("grad.{}", p.name);
        e = e.max(compare(&key, p.grad, case.tensor(&key)?.view(), terms)?);
    }
    Ok(e)
}

/// The four steps of `torch.optim.Adam` / `AdamW` recorded in the case, on one
/// parameter (a bias-free `Linear(1, n)`'s weight, n x 1).
fn run_adam(case: &Case) -> Outcome {
    let beta = |key| case.meta_num::<f64>(key);
    let config = AdamConfig {
        lr: case.meta_num("lr")?,
        betas: (beta("beta1")?, beta("beta2")?),
        eps: case.meta_num("eps")?,
        weight_decay: case.meta_num("weight_decay")?,
        amsgrad: case.meta_num("amsgrad")?,
    };
    let mut opt: Box<dyn Optimizer> = match case.meta_str("variant")? {
        "adam" => Box::new(Adam::new(config).map_err(err)?),
        "adamw" => Box::new(AdamW::new(config).map_err(err)?),
        other => return Err(format!("unknown variant {other:?}")),
    };
    let p0 = case.tensor("p0")?;
    let n = p0.len();
    let as_column = |a: &ArrayD<f32>| {
        a.to_shape((n, 1))
            .map(|v| v.to_owned())
            .map_err(|e| format!("{e}"))
    };
    let layer = Linear::from_parts(
        LinearConfig::new(1, n).with_bias(false),
        as_column(p0)?,
        None,
    )
    .map_err(err)?;
    let mut net = Sequential::new().with(layer);
    let mut e = Score::default();
    for k in 1..=4 {
        let g = as_column(case.tensor(&format!("g{k}"))?)?;
        net.named_parameters_mut()[0].grad.assign(&g);
        opt.step(&mut net).map_err(err)?;
        let ours = net.named_parameters()[0].value.to_owned();
        let want = case.tensor(&format!("p{k}"))?;
        let ours = ours.to_shape(want.shape()).map_err(|e| format!("{e}"))?;
        // Step k: each step rounds the parameter once (p + update, at p's scale) and
        // computes an lr-sized update in a handful of f32 operations, whose rounding is
        // far below p's ulp: k steps accumulate like k terms.
        e = e.max(compare(&format!("p{k}"), ours.view(), want.view(), k)?);
    }
    Ok(e)
}

/// `Linear`: forward and backward against `F.linear`.
fn run_linear(case: &Case) -> Outcome {
    let as2 = |key| -> Result<Array2<f32>, String> {
        case.tensor(key)?
            .clone()
            .into_dimensionality::<Ix2>()
            .map_err(|e| format!("tensor {key:?}: {e}"))
    };
    let w = as2("w")?;
    let (out, inp) = w.dim();
    let mut layer =
        Linear::from_parts(LinearConfig::new(inp, out), w, Some(as1(case, "b")?)).map_err(err)?;
    let x = case.tensor("x")?;
    let n = x.shape()[0];
    let y = layer.forward(x.view()).map_err(err)?;
    let dx = layer.backward(case.tensor("dy")?.view()).map_err(err)?;
    // Terms per element: y sums `in` products and the bias, dx sums `out`, dw and db sum
    // over the N rows.
    let mut e = compare("y", y.view(), case.tensor("y")?.view(), inp + 1)?;
    e = e.max(compare("dx", dx.view(), case.tensor("dx")?.view(), out)?);
    e = e.max(compare(
        "dw",
        layer.weight_grad().view().into_dyn(),
        case.tensor("dw")?.view(),
        n,
    )?);
    let db = layer.bias_grad().ok_or("no bias gradient")?;
    Ok(e.max(compare(
        "db",
        db.view().into_dyn(),
        case.tensor("db")?.view(),
        n,
    )?))
}

/// `F.cross_entropy` with `label_smoothing` and `reduction`: the loss and its gradient.
fn run_cross_entropy(case: &Case) -> Outcome {
    let logits = case
        .tensor("logits")?
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(err)?;
    let target = case
        .tensor_i64("target")?
        .view()
        .into_dimensionality::<Ix1>()
        .map_err(err)?;
    let reduction = match case.meta_str("reduction")? {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        other => return Err(format!("unknown reduction {other:?}")),
    };
    let options = CrossEntropyOptions::new()
        .with_label_smoothing(case.meta_num("label_smoothing")?)
        .with_reduction(reduction);
    let (loss, grad) = cross_entropy_with_grad_with(logits, target, &options).map_err(err)?;
    // The loss alone must agree with the fused pass, bit for bit.
    if cross_entropy_with(logits, target, &options).map_err(err)? != loss {
        return Err("cross_entropy_with and cross_entropy_with_grad_with differ".into());
    }
    let (n, k) = logits.dim();
    let loss = ArrayD::from_elem(ndarray::IxDyn(&[1]), loss);
    // Ours is f64 throughout, PyTorch's f32: the loss sums N rows of K-term log-sum-exps
    // (N * K terms); each gradient element is a softmax over K terms.
    let e = compare("loss", loss.view(), case.tensor("loss")?.view(), n * k)?;
    Ok(e.max(compare(
        "dlogits",
        grad.view().into_dyn(),
        case.tensor("dlogits")?.view(),
        k,
    )?))
}

fn run_init_stats(case: &Case) -> Outcome {
    let shape: Vec<usize> = case.meta_list("shape")?;
    let (fan_in, fan_out) = fans(&shape).map_err(err)?;
    if fan_in != case.meta_num::<usize>("fan_in")?
        || fan_out != case.meta_num::<usize>("fan_out")?
    {
        return Err(format!(
            "fans of {shape:?}: ours ({fan_in}, {fan_out}), reference ({}, {})",
            case.meta_str("fan_in")?,
            case.meta_str("fan_out")?
        ));
    }
    let mut worst = 0.0f64;
    let mut check = |what: &str, ours: f64, reference: f64| -> Result<(), String> {
        let d = (ours - reference).abs();
        if d.is_nan() || d > 1e-12 {
            return Err(format!("{what}: ours {ours}, reference {reference}"));
        }
        worst = worst.max(d);
        Ok(())
    };
    let mut gains = 0;
    for (key, value) in &case.meta {
        let Some(name) = key.strip_prefix("gain.") else {
            continue;
        };
        let nl = match name
            .strip_prefix("leaky_relu(")
            .and_then(|s| s.strip_suffix(')'))
        {
            Some(slope) => Nonlinearity::LeakyRelu(
                slope
                    .parse()
                    .map_err(|_| format!("{key}: cannot parse the slope"))?,
            ),
            None => Nonlinearity::from_name(name).map_err(err)?,
        };
        let reference: f64 = value
            .parse()
            .map_err(|_| format!("{key}: cannot parse {value:?}"))?;
        check(key, calculate_gain(nl), reference)?;
        gains += 1;
    }
    if gains == 0 {
        return Err("no gain.* metadata".into());
    }
    let (wb, bb) = default_bounds(&shape).map_err(err)?;
    check(
        "default_weight_bound",
        wb,
        case.meta_num("default_weight_bound")?,
    )?;
    check(
        "default_bias_bound",
        bb,
        case.meta_num("default_bias_bound")?,
    )?;
    Ok(Score {
        abs: worst,
        rel: worst,
        of_tol: worst / 1e-12,
    })
}

/// The LeNet-5 with batch norm of `../shared/README.md` (`lenet`), its `state_dict`
/// loaded from the case file itself through `io::load_safetensors_bytes` (lenient: the
/// file also holds the inputs and the expected results).
fn lenet(bytes: &[u8]) -> Result<Sequential, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let conv = |i, o, p| Conv2dConfig::new(i, o, (5, 5)).with_padding((p, p));
    let pool = || MaxPool2d::new(MaxPool2dOptions::new((2, 2))).map_err(err);
    let bn = |c| BatchNorm2d::new(BatchNorm2dConfig::new(c)).map_err(err);
    let linear =
        |rng: &mut rand::rngs::StdRng, i, o| Linear::new(LinearConfig::new(i, o), rng).map_err(err);
    let mut net = Sequential::new()
        .with(Conv2d::new(conv(1, 6, 2), &mut rng).map_err(err)?)
        .with(bn(6)?)
        .with(Relu::new())
        .with(pool()?)
        .with(Conv2d::new(conv(6, 16, 0), &mut rng).map_err(err)?)
        .with(bn(16)?)
        .with(Relu::new())
        .with(pool()?)
        .with(Flatten::new(1, -1))
        .with(linear(&mut rng, 400, 120)?)
        .with(Relu::new())
        .with(linear(&mut rng, 120, 84)?)
        .with(Relu::new())
        .with(linear(&mut rng, 84, 10)?);
    let report =
        convinit::io::load_safetensors_bytes(&mut net, bytes, convinit::io::LoadOptions::lenient())
            .map_err(err)?;
    if report.loaded.len() != 20 {
        return Err(format!(
            "expected 14 parameters and 6 buffers, loaded {:?}",
            report.loaded
        ));
    }
    Ok(net)
}

/// One training step of the LeNet: forward in training mode (batch statistics, running
/// statistics updated), cross-entropy, backward; every output, gradient and running
/// statistic against PyTorch's.
fn run_lenet(case: &Case, bytes: &[u8]) -> Outcome {
    let mut net = lenet(bytes)?;
    net.train();
    let x = case.tensor("x")?;
    let target = case
        .tensor_i64("target")?
        .clone()
        .into_dimensionality::<Ix1>()
        .map_err(err)?;
    let out = net.forward(x.view()).map_err(err)?;
    let out2 = out.clone().into_dimensionality::<Ix2>().map_err(err)?;
    let (loss, dout) =
        convinit::train::cross_entropy_with_grad(out2.view(), target.view()).map_err(err)?;
    net.backward(dout.into_dyn().view()).map_err(err)?;
    // Errors compound through the chain; every tensor gets the longest reduction in it,
    // the first conv's weight gradient over N * H * W positions.
    let terms = x.shape()[0] * x.shape()[2] * x.shape()[3];
    let mut e = compare("out", out.view(), case.tensor("out")?.view(), terms)?;
    let loss = ArrayD::from_elem(ndarray::IxDyn(&[1]), loss);
    e = e.max(compare(
        "loss",
        loss.view(),
        case.tensor("loss")?.view(),
        terms,
    )?);
    let params = net.named_parameters();
    if params.len() != 14 {
        return Err(format!("expected 14 parameters, got {}", params.len()));
    }
    let max_abs = |key: &str| -> Result<f32, String> {
        Ok(case
            .tensor(key)?
            .iter()
            .fold(0.0f32, |m, &v| m.max(v.abs())))
    };
    for p in params {
        let key = format!("grad.{}", p.name);
        let reference = case.tensor(&key)?.view();
        e = e.max(match p.name.as_str() {
            // A conv bias feeding a batch norm has a zero gradient in exact arithmetic
            // (the norm subtracts the channel mean): both sides are rounding noise of a
            // sum of terms |dx_bn| <= 3 |gamma| / sigma |dy| with sigma >= sqrt(eps), dy
            // bounded by the batch norm's own gradient sums.
            "0.bias" | "4.bias" => {
                let bn = if p.name == "0.bias" { 1 } else { 5 };
                let dy = max_abs(&format!("grad.{bn}.bias"))?
                    .max(max_abs(&format!("grad.{bn}.weight"))?);
                let gamma = max_abs(&format!("{bn}.weight"))?;
                let scale = 3.0 * dy * gamma / 1e-5f32.sqrt();
                compare_at_scale(&key, p.grad.view(), reference, terms, scale)?
            }
            _ => compare(&key, p.grad.view(), reference, terms)?,
        });
    }
    let buffers = net.named_buffers();
    if buffers.len() != 6 {
        return Err(format!("expected 6 buffers, got {}", buffers.len()));
    }
    for b in buffers {
        let key = format!("after.{}", b.name);
        match b.value {
            convinit::nn::BufferView::F32(v) => {
                e = e.max(compare(&key, v, case.tensor(&key)?.view(), terms)?);
            }
            convinit::nn::BufferView::I64(v) => {
                let want = case.tensor_i64(&key)?;
                if v != want.view() {
                    return Err(format!("{key}: {v} != {want}"));
                }
            }
        }
    }
    Ok(e)
}

/// Every op kind the harness knows; the crate's `tests/fixtures` has cases of each.
const OPS: &[&str] = &[
    "conv2d",
    "adaptive_avg_pool2d",
    "leaky_relu",
    "mse",
    "seed_net",
    "init_stats",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_max_pool2d",
    "adam",
    "linear",
    "cross_entropy",
    "batch_norm2d",
    "lenet",
];

/// Runs one case (read from `path`: the LeNet case loads its `state_dict` from the file).
fn run_case(case: &Case, path: &Path) -> Outcome {
    match case.op()? {
        "conv2d" => run_conv2d(case),
        "adaptive_avg_pool2d" => run_pool(case),
        "leaky_relu" => run_leaky(case),
        "mse" => run_mse(case),
        "seed_net" => run_seed_net(case),
        "init_stats" => run_init_stats(case),
        "max_pool2d" => run_max_pool(case),
        "avg_pool2d" => run_avg_pool(case),
        "adaptive_max_pool2d" => run_adaptive_max_pool(case),
        "adam" => run_adam(case),
        "linear" => run_linear(case),
        "cross_entropy" => run_cross_entropy(case),
        "batch_norm2d" => run_batch_norm2d(case),
        "lenet" => run_lenet(case, &std::fs::read(path).map_err(err)?),
        other => Err(format!("unknown op {other:?}")),
    }
}

/// What ran of one op kind: how many cases, and the worst of their scores.
#[derive(Debug, Default, Clone, Copy)]
struct PerOp {
    cases: usize,
    worst: Score,
}

/// Runs every case in `dir`; returns the cases run and the worst score per op kind, or
/// every failure (and fails when there is no case at all).
fn run_dir(dir: &Path) -> Result<BTreeMap<String, PerOp>, String> {
    let paths = case_paths(dir)?;
    if paths.is_empty() {
        return Err(format!("no *.safetensors cases in {}", dir.display()));
    }
    println!("reference cases from {}", dir.display());
    let mut passed: BTreeMap<String, PerOp> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let outcome = load_case(path).and_then(|case| {
            let op = case.op()?.to_owned();
            run_case(&case, path).map(|e| (op, e))
        });
        match outcome {
            Ok((op, e)) => {
                println!(
                    "ok   {name} ({op}): largest error {:.3e} ({:.2e} of its tensor's scale, {:.2}% of its tolerance)",
                    e.abs,
                    e.rel,
                    100.0 * e.of_tol
                );
                let entry = passed.entry(op).or_default();
                entry.cases += 1;
                entry.worst = entry.worst.max(e);
            }
            Err(msg) => {
                println!("FAIL {name}: {msg}");
                failures.push(format!("{name}: {msg}"));
            }
        }
    }
    for (op, r) in &passed {
        println!(
            "{op}: {} passed, largest error {:.3e} ({:.2e} relative, {:.2}% of a tolerance)",
            r.cases,
            r.worst.abs,
            r.worst.rel,
            100.0 * r.worst.of_tol
        );
    }
    println!(
        "{} of {} cases passed",
        paths.len() - failures.len(),
        paths.len()
    );
    if !failures.is_empty() {
        return Err(format!("failed cases:\n{}", failures.join("\n")));
    }
    let ran: usize = passed.values().map(|r| r.cases).sum();
    if ran != paths.len() {
        return Err(format!("{ran} cases ran, {} files", paths.len()));
    }
    Ok(passed)
}

#[test]
fn reference_cases() {
    let dir = reference_dir();
    let ran = run_dir(&dir).unwrap_or_else(|msg| panic!("{msg}"));
    // Any mix of ops in another directory; the crate's own has every kind.
    if dir == fixtures_dir() {
        for op in OPS {
            assert!(
                ran.get(*op).is_some_and(|r| r.cases > 0),
                "no {op} case ran from {}: {ran:?}",
                dir.display()
            );
        }
    }
}

/// The per-op counts match the files: on the crate's fixtures, each op kind ran as many
/// times as it has files (read independently of the harness, from the file headers).
#[test]
fn per_op_counts_match_the_fixture_files() {
    let dir = fixtures_dir();
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for path in case_paths(&dir).unwrap() {
        let case = load_case(&path).unwrap();
        *want.entry(case.op().unwrap().to_owned()).or_default() += 1;
    }
    let got: BTreeMap<String, usize> = run_dir(&dir)
        .unwrap()
        .into_iter()
        .map(|(op, r)| (op, r.cases))
        .collect();
    assert_eq!(got, want);
    let kinds: Vec<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(kinds.len(), OPS.len(), "{kinds:?}");
}

/// The harness itself: an empty directory, an unreadable file and an unknown op fail.
#[test]
fn harness_rejects_empty_dir_garbage_and_unknown_op() {
    let dir = std::env::temp_dir().join(format!("convinit-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let result = run_dir(&dir);
    assert!(result.unwrap_err().contains("no *.safetensors"));

    std::fs::write(dir.join("garbage.safetensors"), b"not a safetensors file").unwrap();
    assert!(run_dir(&dir).is_err());
    std::fs::remove_file(dir.join("garbage.safetensors")).unwrap();

    // A well-formed file whose op nobody knows.
    let data = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    let meta = std::collections::HashMap::from([("op".to_string(), "bogus".to_string())]);
    let bytes = safetensors::serialize([("placeholder", view)], Some(meta)).unwrap();
    std::fs::write(dir.join("unknown.safetensors"), bytes).unwrap();
    let msg = run_dir(&dir).unwrap_err();
    assert!(msg.contains("unknown op \"bogus\""), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The seed net's parameters are named like PyTorch's `state_dict`, and its layers can be
/// reached by index and type.
#[test]
fn seed_net_names_and_indexing() {
    // Always the crate's own case: CONVINIT_REFERENCE_DIR may hold any mix of ops.
    let path = fixtures_dir().join("seed_net_8.safetensors");
    let case = load_case(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let net = seed_net(&case).unwrap();
    let names: Vec<String> = net.named_parameters().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "6.weight", "6.bias"
        ]
    );
    let conv: &Conv2d = net.get(2).unwrap();
    assert_eq!(conv.weight().dim(), (16, 8, 3, 3));
    assert!(net.get::<Conv2d>(1).is_none());
    assert_eq!(net.layer(1).unwrap().name(), "ReLU");
}
