"""Side-by-side figures of convinit's benchmarks and PyTorch's, as ratios.

usage: python tools/bench_compare.py OURS.json TORCH.json [--all-paths]
  OURS.json:  cargo run --release --example bench -- --json --threads T > OURS.json
              or cargo run --release --example convbench -- ... --json --threads T
  TORCH.json: python tools/torch_bench.py --from OURS.json > TORCH.json
              (or ../shared/tools/torch_anchor.py T; same session, same T)
  --all-paths with convbench JSON: a row for every path it timed, not only the one in
              its "conv2d" section (auto's)

Prints a Markdown table: time ratios (ours / PyTorch; < 1 means convinit is faster) and
sgemm throughput ratios (ours / OpenBLAS when the reference has numpy's OpenBLAS
figures, else ours / PyTorch; > 1 means convinit is faster). Whatever one side lacks
(a section, a shape, a figure) is left out and listed at the end; a shape whose fields
differ between the two files is not compared.
"""
import json
import sys


def long_form(fields):
    """The 14 fields (N,C,H,W,O,kh,kw,sh,sw,ph,pw,dh,dw,groups) of an 8- or 14-field shape."""
    fields = list(fields)
    if len(fields) == 8:
        n, c, h, w, o, k, s, p = fields
        return [n, c, h, w, o, k, k, s, s, p, p, 1, 1, 1]
    return fields


def section(d, key):
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    if len(args) != 2 or flags - {"--all-paths"}:
        sys.exit(__doc__)
    with open(args[0]) as f:
        ours = json.load(f)
    with open(args[1]) as f:
        ref = json.load(f)
    skipped = []
    t = ours.get("threads", "?")
    rt = ref.get("threads", "?")
    if t != rt:
        print(f"warning: {args[0]} ran on {t} threads, {args[1]} on {rt}\n")
    print(f"| {t} thread{'s' if t != 1 else ''} | convinit | PyTorch | ratio |")
    print("|---|---:|---:|---:|")

    blas = ref.get("openblas_sgemm_gflops")
    blas = blas if isinstance(blas, dict) else {}
    torch_sgemm = section(ref, "sgemm_gflops")
    for n, g in section(ours, "sgemm_gflops").items():
        other = blas.get(n) or torch_sgemm.get(n)
        if not other:
            skipped.append(f"sgemm {n}")
            continue
        who = "OpenBLAS" if blas.get(n) else "torch"
        print(f"| sgemm {n}³ GFLOP/s (vs {who}) | {g} | {other} | {g / other:.2f}x {who} |")

    def conv_rows(name, ours_entry, label):
        tc = section(ref, "conv2d").get(name)
        if not isinstance(tc, dict):
            skipped.append(f"conv2d {name}")
            return
        if "shape" in ours_entry and "shape" in tc and \
                long_form(ours_entry["shape"]) != long_form(tc["shape"]):
            skipped.append(f"conv2d {name} (shapes differ: {ours_entry['shape']} vs {tc['shape']})")
            return
        for k in ("fwd_ms", "fwd_bwd_ms"):
            if k in ours_entry and k in tc:
                a, b = ours_entry[k], tc[k]
                print(f"| conv2d {name} {k.replace('_ms', '')} ms{label} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
            elif k in ours_entry or k in tc:
                skipped.append(f"conv2d {name} {k}")

    if "--all-paths" in flags and isinstance(ours.get("shapes"), list):
        # convbench: every path that ran, per shape.
        for s in ours["shapes"]:
            for row in s.get("paths", []):
                if row.get("status") != "ok" or row.get("path") == "naive":
                    continue
                entry = {"shape": s.get("shape")}
                for pass_key, k in (("fwd", "fwd_ms"), ("fwd_bwd", "fwd_bwd_ms")):
                    if isinstance(row.get(pass_key), dict):
                        entry[k] = row[pass_key]["median_ms"]
                conv_rows(s["name"], entry, f" ({row['path']})")
    else:
        for name, c in section(ours, "conv2d").items():
            label = f" ({c['path']})" if "path" in c else ""
            conv_rows(name, c, label)

    torch_net = section(ref, "seed_net_fwd_bwd_ms")
    for n, v in section(ours, "seed_net_fwd_bwd_ms").items():
        if n in torch_net:
            tv = torch_net[n]
            print(f"| seed net N={n} fwd+bwd ms | {v:.2f} | {tv:.2f} | {v / tv:.2f} |")
        else:
            skipped.append(f"seed net N={n}")
    torch_layers = section(ref, "layers")
    for name, c in section(ours, "layers").items():
        tc = torch_layers.get(name)
        if not isinstance(tc, dict):
            skipped.append(name)
            continue
        for k in ("fwd_ms", "fwd_bwd_ms"):
            if k in c and k in tc:
                print(f"| {name} {k.replace('_ms', '')} ms | {c[k]:.3f} | {tc[k]:.3f} | {c[k] / tc[k]:.2f} |")
    torch_lenet = section(ref, "lenet_fwd_bwd_ms")
    for n, v in section(ours, "lenet_fwd_bwd_ms").items():
        if n in torch_lenet:
            tv = torch_lenet[n]
            print(f"| LeNet N={n} fwd+CE+bwd ms | {v:.2f} | {tv:.2f} | {v / tv:.2f} |")
        else:
            skipped.append(f"LeNet N={n}")
    if "fma_peak_gflops" in ours:
        print(f"| FMA peak GFLOP/s (same threads) | {ours['fma_peak_gflops']} | | |")
    if skipped:
        print(f"\nnot compared (missing or different in {args[1]}): " + ", ".join(skipped))


if __name__ == "__main__":
    main(sys.argv[1:])
