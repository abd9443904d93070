//! Loads MNIST and prints a one-line JSON summary.
//!
//! ```text
//! cargo run --release --example load_mnist -- [PATH]
//! ```
//! PATH is a `.pkl` / `.pkl.gz` file or a directory of IDX files; without it the
//! sample embedded in the crate is used. Prints
//! `{"train":[n,784],"valid":[n,784],"test":[n,784],"train_mean":..,"train_std":..,
//! "y_train_head":[first 10 labels]}`; on bad input prints the error to stderr and
//! exits with status 1.

use convinit::data::Mnist;
use convinit::stats::stats;

/// The JSON line for a loaded data set.
pub fn summary(m: &Mnist) -> String {
    let shape = |x: &ndarray::Array2<f32>| format!("[{},{}]", x.nrows(), x.ncols());
    let (mean, std) = stats(&m.train.0);
    let head: Vec<String> = m.train.1.iter().take(10).map(|y| y.to_string()).collect();
    format!(
        "{{\"train\":{},\"valid\":{},\"test\":{},\"train_mean\":{},\"train_std\":{},\"y_train_head\":[{}]}}",
        shape(&m.train.0),
        shape(&m.valid.0),
        shape(&m.test.0),
        json_number(mean),
        json_number(std),
        head.join(",")
    )
}

/// JSON has no NaN or infinity: those become `null`.
fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// Loads PATH, or the embedded sample when there is no PATH (an error naming the
/// missing feature in a build without it).
pub fn load(path: Option<&str>) -> convinit::Result<Mnist> {
    match path {
        Some(p) => Mnist::load(p),
        None => Mnist::embedded(),
    }
}

#[allow(dead_code)]
fn main() {
    let path = std::env::args().nth(1);
    match load(path.as_deref()) {
        Ok(m) => println!("{}", summary(&m)),
        Err(e) => {
            eprintln!("load_mnist: {e}");
            std::process::exit(1);
        }
    }
}
