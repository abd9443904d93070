"""Side-by-side figures of convinit's bench example and PyTorch's anchor, as ratios.

usage: python bench_compare.py OURS.json TORCH.json
  OURS.json:  cargo run --release --example bench -- --json --threads T > OURS.json
  TORCH.json: python ../shared/tools/torch_anchor.py T > TORCH.json  (same session, same T)
Prints a Markdown table: time ratios (ours / PyTorch; < 1 means convinit is faster) and
sgemm throughput ratios against numpy's OpenBLAS (ours / OpenBLAS; > 1 means faster).
"""
import json, sys

ours, torch = (json.load(open(p)) for p in sys.argv[1:3])
t = ours["threads"]
print(f"| {t} thread{'s' if t > 1 else ''} | convinit | PyTorch | ratio |")
print("|---|---:|---:|---:|")
blas = torch.get("openblas_sgemm_gflops", {})
for n, g in ours["sgemm_gflops"].items():
    ref = blas.get(n) if isinstance(blas, dict) else None
    r = f"{g / ref:.2f}x OpenBLAS" if ref else "n/a"
    print(f"| sgemm {n}³ GFLOP/s (OpenBLAS {ref}, torch {torch['sgemm_gflops'][n]}) | {g} | {ref} | {r} |")
for name, c in ours["conv2d"].items():
    tc = torch["conv2d"][name]
    for k in ("fwd_ms", "fwd_bwd_ms"):
        print(f"| conv2d {name} {k.replace('_ms', '')} ms | {c[k]:.3f} | {tc[k]:.3f} | {c[k] / tc[k]:.2f} |")
for n, v in ours["seed_net_fwd_bwd_ms"].items():
    tv = torch["seed_net_fwd_bwd_ms"][n]
    print(f"| seed net N={n} fwd+bwd ms | {v:.2f} | {tv:.2f} | {v / tv:.2f} |")
for name, c in ours.get("layers", {}).items():
    tc = torch["layers"][name]
    for k in ("fwd_ms", "fwd_bwd_ms"):
        print(f"| {name} {k.replace('_ms', '')} ms | {c[k]:.3f} | {tc[k]:.3f} | {c[k] / tc[k]:.2f} |")
for n, v in ours.get("lenet_fwd_bwd_ms", {}).items():
    tv = torch["lenet_fwd_bwd_ms"][n]
    print(f"| LeNet N={n} fwd+CE+bwd ms | {v:.2f} | {tv:.2f} | {v / tv:.2f} |")
print(f"| FMA peak GFLOP/s (same threads) | {ours['fma_peak_gflops']} | | |")
