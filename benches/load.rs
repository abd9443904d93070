//! Loading speed: the embedded MNIST sample, and the full `mnist.pkl.gz` and IDX
//! directory when `../shared/data` is there.
//!
//! `cargo bench --bench load`. For the comparison with Python's
//! `pickle.load(gzip.open(path), encoding='latin-1')` and peak memory, time the
//! `load_mnist` example under `/usr/bin/time -v` instead (see the data module docs).

use std::hint::black_box;
use std::path::Path;

use convinit::data::{Mnist, pickle};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    #[cfg(feature = "embedded-sample")]
    g.bench_function("embedded_sample", |b| {
        b.iter(|| black_box(Mnist::embedded().expect("embedded sample loads")))
    });
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let pkl = data.join("mnist.pkl.gz");
    if pkl.exists() {
        g.bench_function("mnist_pkl_gz", |b| {
            b.iter(|| black_box(pickle::load(&pkl).expect("mnist.pkl.gz loads")))
        });
    } else {
        println!("skipping mnist_pkl_gz: {} not found", pkl.display());
    }
    let idx = data.join("mnist-idx");
    if idx.exists() {
        g.bench_function("mnist_idx_dir", |b| {
            b.iter(|| black_box(Mnist::load(&idx).expect("IDX directory loads")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
