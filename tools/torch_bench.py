"""PyTorch's CPU figures for the shapes convinit benchmarks, as JSON in the format of
`cargo run --release --example bench -- --json` (and of convbench's "conv2d" section), so
`tools/bench_compare.py` compares the two side by side.

usage: python tools/torch_bench.py [--threads T] [--from OURS.json] [--shape [NAME=]SPEC ...]
                                   [--only conv,sgemm,net] [--reps R]

  --from OURS.json  time what a bench or convbench JSON timed, under the same names:
                    every "conv2d" shape (its "shape" field), the sgemm sizes, the seed
                    net's batch sizes; and its thread count unless --threads is given
  --shape SPEC      a conv2d shape, repeatable: N,C,H,W,O,k,stride,pad or
                    N,C,H,W,O,kh,kw,sh,sw,ph,pw,dh,dw,groups, with an optional NAME=
                    prefix (without one, the shape is named by its SPEC, as convbench
                    names it)
  --only PARTS      conv, sgemm and / or net (default: all that --from has)
  --threads T       torch.set_num_threads (default: --from's, else 2)
  --reps R          timed runs per figure, median reported (default 7)

Timing as examples/bench: calls until at least three and 50 ms have passed, then the
median of R timed runs. conv2d: "fwd_ms" is the forward under no_grad, "fwd_bwd_ms" the
forward and the backward of x, weight and bias (nn.Conv2d with bias, x requiring grad);
GFLOP/s count 2 flops per multiply-add forward, 6 forward and backward. Needs torch
(tools/ has no other dependency); run it in the same session, on the same threads, as
the crate's benchmark and compare ratios.
"""
import argparse
import json
import sys
import time

SHORT = ["N", "C", "H", "W", "O", "k", "stride", "pad"]
LONG = ["N", "C", "H", "W", "O", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "groups"]
PADS = {"pad", "ph", "pw"}


def long_form(fields):
    """The 14 fields of an 8- or 14-field shape."""
    if len(fields) == 8:
        n, c, h, w, o, k, s, p = fields
        return [n, c, h, w, o, k, k, s, s, p, p, 1, 1, 1]
    return list(fields)


def out_size(size, k, s, p, d):
    span = size + 2 * p - d * (k - 1) - 1
    return None if span < 0 else span // s + 1


def check_fields(label, fields):
    """The long form of `fields`, or ValueError naming the problem (as convbench)."""
    names = {8: SHORT, 14: LONG}.get(len(fields))
    if names is None:
        raise ValueError(f"shape '{label}': {len(fields)} fields, want 8 ({','.join(SHORT)}) "
                         f"or 14 ({','.join(LONG)})")
    for i, (v, name) in enumerate(zip(fields, names)):
        if v == 0 and name not in PADS:
            raise ValueError(f"shape '{label}': field {i + 1} ({name}) is 0, must be positive")
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, g = long_form(fields)
    if c % g or o % g:
        raise ValueError(f"shape '{label}': groups {g} must divide C = {c} and O = {o}")
    if out_size(h, kh, sh, ph, dh) is None or out_size(w, kw, sw, pw, dw) is None:
        raise ValueError(f"shape '{label}': kernel ({kh}, {kw}) with dilation ({dh}, {dw}) "
                         f"does not fit the {h}x{w} input padded by ({ph}, {pw})")
    return long_form(fields)


def parse_shape(arg):
    """`[NAME=]SPEC` -> (name, fields as given), or ValueError naming the field."""
    arg = arg.strip()
    name, sep, spec = arg.partition("=")
    name, spec = (name.strip(), spec.strip()) if sep else (arg, arg)
    if not name:
        raise ValueError(f"shape '{arg}': the name before '=' is empty")
    if not spec:
        raise ValueError(f"shape '{arg}': no fields after the name")
    parts = [p.strip() for p in spec.split(",")]
    names = {8: SHORT, 14: LONG}.get(len(parts))
    if names is None:
        raise ValueError(f"shape '{arg}': {len(parts)} fields, want 8 ({','.join(SHORT)}) "
                         f"or 14 ({','.join(LONG)})")
    fields = []
    for i, (p, field) in enumerate(zip(parts, names)):
        if not p.isdigit():
            want = "a non-negative integer" if field in PADS else "a positive integer"
            raise ValueError(f"shape '{arg}': field {i + 1} ({field}) is '{p}', not {want}")
        fields.append(int(p))
    check_fields(arg, fields)
    return name, fields


def median_secs(f, reps):
    """Median seconds of `reps` calls of `f`, after at least three calls and 50 ms."""
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < 0.05:
        f()
        calls += 1
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def bench_conv(torch, fields, reps):
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, g = long_form(fields)
    x = torch.randn(n, c, h, w, requires_grad=True)
    m = torch.nn.Conv2d(c, o, (kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                        groups=g)
    y = m(x)
    dy = torch.randn_like(y)
    flops = 2 * n * o * y.shape[2] * y.shape[3] * (c // g) * kh * kw
    with torch.no_grad():
        tf = median_secs(lambda: m(x), reps)

    def fwd_bwd():
        x.grad = None
        m.zero_grad()
        m(x).backward(dy)

    tfb = median_secs(fwd_bwd, reps)
    return {"shape": list(fields), "fwd_ms": round(tf * 1e3, 4), "fwd_bwd_ms": round(tfb * 1e3, 4),
            "fwd_gflops": round(flops / tf / 1e9, 1), "fwd_bwd_gflops": round(3 * flops / tfb / 1e9, 1)}


def bench_sgemm(torch, n, reps):
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_secs(lambda: torch.mm(a, b), reps)
    return round(2 * n ** 3 / t / 1e9, 1)


def bench_seed_net(torch, n, reps):
    nn = torch.nn
    m = nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 1, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(0))
    x, y = torch.randn(n, 1, 28, 28), torch.randn(n)

    def step():
        m.zero_grad()
        ((m(x) - y) ** 2).mean().backward()

    return round(median_secs(step, min(reps, 5)) * 1e3, 3)


def plan(args):
    """What to time: ({name: fields}, sgemm sizes, seed-net batch sizes, threads)."""
    convs, sgemm, net, threads = {}, [], [], args.threads
    if args.source:
        with open(args.source) as f:
            ours = json.load(f)
        for name, entry in (ours.get("conv2d") or {}).items():
            if not isinstance(entry, dict) or "shape" not in entry:
                raise ValueError(f"{args.source}: conv2d '{name}' has no \"shape\"")
            check_fields(name, entry["shape"])
            convs[name] = list(entry["shape"])
        sgemm = [int(n) for n in (ours.get("sgemm_gflops") or {})]
        net = [int(n) for n in (ours.get("seed_net_fwd_bwd_ms") or {})]
        if threads is None:
            threads = ours.get("threads")
    for arg in args.shape:
        name, fields = parse_shape(arg)
        if name in convs and long_form(convs[name]) != long_form(fields):
            raise ValueError(f"shape name '{name}' is given twice, with different shapes")
        convs[name] = fields
    if args.only is not None:
        parts = set(args.only.split(","))
        unknown = parts - {"conv", "sgemm", "net"}
        if unknown:
            raise ValueError(f"--only: unknown part(s) {sorted(unknown)}; conv, sgemm, net")
        convs = convs if "conv" in parts else {}
        sgemm = sgemm if "sgemm" in parts else []
        net = net if "net" in parts else []
    if not (convs or sgemm or net):
        raise ValueError("nothing to time: give --from OURS.json and / or --shape SPEC")
    return convs, sgemm, net, threads or 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--from", dest="source")
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--only")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    try:
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads: {args.threads} is not a positive integer")
        if args.reps < 1:
            raise ValueError(f"--reps: {args.reps} is not a positive integer")
        convs, sgemm, net, threads = plan(args)
    except (ValueError, OSError) as e:
        sys.exit(f"torch_bench: {e}")
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "tool": "torch_bench", "threads": threads}
    if sgemm:
        out["sgemm_gflops"] = {str(n): bench_sgemm(torch, n, args.reps) for n in sgemm}
    if convs:
        out["conv2d"] = {name: bench_conv(torch, fields, args.reps) for name, fields in convs.items()}
    if net:
        out["seed_net_fwd_bwd_ms"] = {str(n): bench_seed_net(torch, n, args.reps) for n in net}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
