//! Conformance against PyTorch: runs every `*.safetensors` case in `tests/fixtures` (or
//! `$CONVINIT_REFERENCE_DIR`), dispatching on the metadata `"op"`, and checks every
//! forward output and gradient to `1e-4 * max(1, max |ref|)`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Case, Score, case_paths, compare, load_case, reference_dir};
use convinit::init::{Nonlinearity, calculate_gain, default_bounds, fans};
use convinit::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Layer, LeakyRelu, Relu, Sequential,
};
use convinit::ops::{mse, mse_backward};
use ndarray::{Array1, Array4, ArrayD, Ix1, Ix4};

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
    let mut e = compare("y", y.view(), case.tensor("y")?.view())?;
    e = e.max(compare("dx", dx.view(), case.tensor("dx")?.view())?);
    let dw = conv.weight_grad().view().into_dyn();
    e = e.max(compare("dw", dw, case.tensor("dw")?.view())?);
    match (conv.bias_grad(), case.tensors.contains_key("db")) {
        (Some(db), true) => {
            e = e.max(compare(
                "db",
                db.view().into_dyn(),
                case.tensor("db")?.view(),
            )?)
        }
        (None, false) => {}
        _ => return Err("b and db must both be present or both absent".into()),
    }
    Ok(e)
}

fn run_pool(case: &Case) -> Outcome {
    let mut pool = AdaptiveAvgPool2d::new(case.meta_pair("output_size")?).map_err(err)?;
    let y = pool.forward(case.tensor("x")?.view()).map_err(err)?;
    let dx = pool.backward(case.tensor("dy")?.view()).map_err(err)?;
    let e = compare("y", y.view(), case.tensor("y")?.view())?;
    Ok(e.max(compare("dx", dx.view(), case.tensor("dx")?.view())?))
}

fn run_leaky(case: &Case) -> Outcome {
    let mut act = LeakyRelu::new(case.meta_num("negative_slope")?);
    let y = act.forward(case.tensor("x")?.view()).map_err(err)?;
    let dx = act.backward(case.tensor("dy")?.view()).map_err(err)?;
    let e = compare("y", y.view(), case.tensor("y")?.view())?;
    Ok(e.max(compare("dx", dx.view(), case.tensor("dx")?.view())?))
}

fn run_mse(case: &Case) -> Outcome {
    let (pred, target) = (case.tensor("pred")?, case.tensor("target")?);
    let loss = mse(pred.view(), target.view()).map_err(err)?;
    let dpred = mse_backward(pred.view(), target.view()).map_err(err)?;
    let loss = ArrayD::from_elem(ndarray::IxDyn(&[1]), loss);
    let e = compare("loss", loss.view(), case.tensor("loss")?.view())?;
    Ok(e.max(compare(
        "dpred",
        dpred.view(),
        case.tensor("dpred")?.view(),
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

    let mut e = compare("out", out.view(), case.tensor("out")?.view())?;
    let loss = ArrayD::from_elem(ndarray::IxDyn(&[1]), loss);
    e = e.max(compare("loss", loss.view(), case.tensor("loss")?.view())?);
    let params = net.named_parameters();
    if params.len() != 8 {
        return Err(format!("expected 8 parameters, got {}", params.len()));
    }
    for p in params {
        let key = format!("grad.{}", p.name);
        e = e.max(compare(&key, p.grad, case.tensor(&key)?.view())?);
    }
    Ok(e)
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
        of_tol: worst / 1e-12,
    })
}

fn run_case(case: &Case) -> Outcome {
    match case.op()? {
        "conv2d" => run_conv2d(case),
        "adaptive_avg_pool2d" => run_pool(case),
        "leaky_relu" => run_leaky(case),
        "mse" => run_mse(case),
        "seed_net" => run_seed_net(case),
        "init_stats" => run_init_stats(case),
        other => Err(format!("unknown op {other:?}")),
    }
}

/// Runs every case in `dir`; returns the number of passes per op, or every failure
/// (and fails when there is no case at all).
fn run_dir(dir: &Path) -> Result<BTreeMap<String, usize>, String> {
    let paths = case_paths(dir)?;
    if paths.is_empty() {
        return Err(format!("no *.safetensors cases in {}", dir.display()));
    }
    println!("reference cases from {}", dir.display());
    let mut passed: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut largest = Score::default();
    for path in &paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let outcome = load_case(path).and_then(|case| {
            let op = case.op()?.to_owned();
            run_case(&case).map(|e| (op, e))
        });
        match outcome {
            Ok((op, e)) => {
                println!(
                    "ok   {name} ({op}): largest error {:.3e} ({:.2}% of its tolerance)",
                    e.abs,
                    100.0 * e.of_tol
                );
                largest = largest.max(e);
                *passed.entry(op).or_default() += 1;
            }
            Err(msg) => {
                println!("FAIL {name}: {msg}");
                failures.push(format!("{name}: {msg}"));
            }
        }
    }
    for (op, n) in &passed {
        println!("{op}: {n} passed");
    }
    println!(
        "{} of {} cases passed, largest error {:.3e}, at most {:.2}% of a tolerance",
        paths.len() - failures.len(),
        paths.len(),
        largest.abs,
        100.0 * largest.of_tol
    );
    if failures.is_empty() {
        Ok(passed)
    } else {
        Err(format!("failed cases:\n{}", failures.join("\n")))
    }
}

#[test]
fn reference_cases() {
    if let Err(msg) = run_dir(&reference_dir()) {
        panic!("{msg}");
    }
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
    let path = reference_dir().join("seed_net_8.safetensors");
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
