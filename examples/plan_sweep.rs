//! Compares conv plans (each algorithm per pass, tile sizes, index map, parallel split,
//! GEMM kernel) on one shape, back to back in one process: the measurements behind
//! `ConvPlan::choose`.
//!
//! ```sh
//! cargo run --release --example plan_sweep -- N C H W O k s p [threads]
//! ```

use std::hint::black_box;
use std::time::Instant;

use convinit::gemm::Kernel;
use convinit::ops::{
    Conv2dGeometry, Conv2dOptions, ConvPlan, ForwardAlgo, InputGradAlgo, WeightGradAlgo,
    conv2d_backward_with_plan, conv2d_with_plan,
};
use ndarray::Array4;

fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[reps / 2]
}

/// Prints `msg` and the usage, and exits with status 2.
fn usage(msg: &str) -> ! {
    eprintln!("plan_sweep: {msg}\nusage: plan_sweep N C H W O k s p [threads]");
    std::process::exit(2)
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| usage(&format!("{s:?} is not a whole number")))
        })
        .collect();
    let [n, c, h, w, o, k, s, p] = *a.get(..8).unwrap_or(&[]) else {
        usage(&format!("8 or 9 numbers wanted, got {}", a.len()))
    };
    if a.len() > 9 {
        usage(&format!("8 or 9 numbers wanted, got {}", a.len()));
    }
    let threads = a.get(8).copied().unwrap_or(2).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let x = Array4::from_shape_fn((n, c, h, w), |(a, b, c, d)| {
            ((a + 3 * b + 5 * c + 7 * d) % 13) as f32 - 6.0
        });
        let wt = Array4::from_shape_fn((o, c, k, k), |(a, b, c, d)| {
            ((a + b + c + d) % 5) as f32 - 2.0
        });
        let opts = Conv2dOptions::new()
            .with_stride((s, s))
            .with_padding((p, p));
        let geo = Conv2dGeometry::new("sweep", [n, c, h, w], [o, c, k, k], &opts)
            .unwrap_or_else(|e| usage(&e.to_string()));
        let base = ConvPlan::choose(&geo, threads);
        let y = conv2d_with_plan(x.view(), wt.view(), None, &opts, base).expect("conv");
        let dy = y.mapv(|v| v * 1e-3);
        let reps = if n * o * h * w * c * k * k > 100_000_000 {
            5
        } else {
            21
        };
        let kk = c * k * k;
        let mut plans = vec![("chosen".to_string(), base)];
        let _ = kk;
        for tile_cols in [96usize, 192, 384, 576, 960, 1 << 20] {
            plans.push((format!("tile {tile_cols}"), ConvPlan { tile_cols, ..base }));
        }
        plans.push((
            "map on".into(),
            ConvPlan {
                use_map: true,
                ..base
            },
        ));
        plans.push((
            "map off".into(),
            ConvPlan {
                use_map: false,
                ..base
            },
        ));
        let direct = (
            ForwardAlgo::Direct,
            InputGradAlgo::Direct,
            WeightGradAlgo::Direct,
        );
        let im2col = (
            ForwardAlgo::Columns,
            InputGradAlgo::Columns,
            WeightGradAlgo::Columns,
        );
        let phase = (
            ForwardAlgo::Phase,
            InputGradAlgo::Phase,
            WeightGradAlgo::Phase,
        );
        for (name, (forward, input_grad, weight_grad)) in
            [("direct", direct), ("im2col", im2col), ("phase", phase)]
        {
            plans.push((
                name.into(),
                ConvPlan {
                    forward,
                    input_grad,
                    weight_grad,
                    ..base
                },
            ));
        }
        plans.push((
            "clipped fwd".into(),
            ConvPlan {
                forward: ForwardAlgo::Clipped,
                ..base
            },
        ));
        plans.push((
            "phase fwd".into(),
            ConvPlan {
                forward: ForwardAlgo::Phase,
                ..base
            },
        ));
        plans.push((
            "im2col dW".into(),
            ConvPlan {
                weight_grad: WeightGradAlgo::Columns,
                ..base
            },
        ));
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            plans.push((kernel.name().into(), ConvPlan { kernel, ..base }));
        }
        plans.push((
            "serial".into(),
            ConvPlan {
                parallel: false,
                ..base
            },
        ));
        plans.push((
            "parallel".into(),
            ConvPlan {
                parallel: true,
                ..base
            },
        ));
        // Plans some shapes cannot run (the direct path on a grouped conv) are skipped.
        let runs =
            |plan: &ConvPlan| conv2d_with_plan(x.view(), wt.view(), None, &opts, *plan).is_ok();
        plans.retain(|(_, plan)| runs(plan));
        for round in 0..2 {
            for (name, plan) in &plans {
                let f = median(reps, || {
                    black_box(
                        conv2d_with_plan(x.view(), wt.view(), None, &opts, *plan).expect("conv"),
                    );
                });
                let b = median(reps, || {
                    black_box(
                        conv2d_backward_with_plan(
                            x.view(),
                            wt.view(),
                            true,
                            dy.view(),
                            &opts,
                            *plan,
                        )
                        .expect("conv"),
                    );
                });
                println!("round {round} {name:>14}: fwd {f:8.4} ms  bwd {b:8.4} ms  ({plan:?})");
            }
        }
    });
}
