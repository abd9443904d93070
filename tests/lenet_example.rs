//! `examples/lenet` as a user runs it: one epoch on the embedded sample learns, a saved
//! model loads back strictly and scores what the example reported, bad flags are
//! errors.

#[allow(dead_code)]
#[path = "../examples/lenet.rs"]
mod lenet_example;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Needs the embedded sample (the default `embedded-sample` feature).
#[cfg(feature = "embedded-sample")]
#[test]
fn one_epoch_on_the_sample_learns_and_saves_a_loadable_model() {
    use convinit::data::Mnist;
    use convinit::io::{LoadOptions, load_safetensors};
    use convinit::stats::{normalize, stats};
    use convinit::train::{Split, evaluate};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    let dir = std::env::temp_dir().join(format!("convinit-lenet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lenet.safetensors");
    let history = lenet_example::run(&args(&[
        "--epochs",
        "1",
        "--seed",
        "5",
        "--save",
        path.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(history.len(), 1);
    // Chance is 10%; one epoch over the 2 000-image sample reaches far above it.
    let acc = history[0].valid_accuracy.unwrap();
    assert!(acc > 0.8, "validation accuracy {acc}");
    assert!(history[0].train_loss < 1.5, "{:?}", history[0]);

    // The saved model, strictly loaded into a freshly drawn net, scores what the
    // example reported on the same validation images (eval mode: running statistics).
    let mut net = lenet_example::lenet(&mut StdRng::seed_from_u64(99)).unwrap();
    load_safetensors(&mut net, &path, LoadOptions::default()).unwrap();
    net.eval();
    let mnist = Mnist::embedded().unwrap();
    let (mean, std) = stats(&mnist.train.0);
    let xv = normalize(&mnist.valid.0, mean, std);
    let valid = Split::new(xv.view(), mnist.valid.1.view());
    let (loss, acc2) = evaluate(&mut net, valid, (1, 28, 28), 64).unwrap();
    assert_eq!(acc2, acc);
    let want = history[0].valid_loss.unwrap();
    assert!(
        (loss - want).abs() <= 1e-5 * want.max(1.0),
        "{loss} vs {want}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_flags_are_errors() {
    for bad in [
        &["--epochs", "0"][..],
        &["--batch-size", "x"],
        &["--nope"],
        &["--data"],
        &["--data", "/nonexistent/mnist.pkl.gz"],
    ] {
        let e = lenet_example::run(&args(bad)).err();
        assert!(e.is_some(), "{bad:?} was accepted");
    }
}
