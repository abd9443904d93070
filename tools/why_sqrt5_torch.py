"""The "why sqrt(5)" notebook in PyTorch, printing the same JSON keys as
`cargo run --release --example why_sqrt5 -- --json`, for one seed (0) or as the spread
over seeds 0..N (min, max, mean and std of each figure). This is the oracle the Rust example is checked against.

usage: python why_sqrt5_torch.py DATA.pkl.gz [--seeds N]
Needs torch and numpy (../shared/tools/setup_torch_ref.sh makes such an environment).
"""
import gzip, json, math, pickle, sys
import torch, torch.nn as nn, torch.nn.functional as F
from torch.nn import init


def load(path):
    with gzip.open(path, "rb") as f:
        (xt, yt), (xv, yv), _ = pickle.load(f, encoding="latin-1")
    return map(torch.tensor, (xt, yt, xv, yv))


def stats(out, key, t):
    out[key + ".mean"] = t.mean().item()
    out[key + ".std"] = t.std().item()


def run(xt, yt, xv, yv, seed):
    torch.manual_seed(seed)
    o = {}
    m, s = xt.mean(), xt.std()
    o["data.train_mean"], o["data.train_std"] = m.item(), s.item()
    xv = ((xv - m) / s)
    stats(o, "data.valid_norm", xv)
    xv = xv.view(-1, 1, 28, 28)
    x200, x100 = xv[:200], xv[:100]
    with torch.no_grad():
        l1 = nn.Conv2d(1, 32, 5)
        stats(o, "l1_default.weight", l1.weight)
        stats(o, "l1_default.bias", l1.bias)
        stats(o, "l1_default.out", l1(x200))
        init.kaiming_normal_(l1.weight, a=1.0)
        stats(o, "l1_kaiming_normal_a1.weight", l1.weight)
        stats(o, "l1_kaiming_normal_a1.out", l1(x200))
        f1 = lambda x, a=0: F.leaky_relu(l1(x), a)
        init.kaiming_normal_(l1.weight, a=0)
        stats(o, "l1_kaiming_normal_a0.weight", l1.weight)
        stats(o, "f1_kaiming_normal_a0.out", f1(x100))
        l1 = nn.Conv2d(1, 32, 5)
        stats(o, "f1_default.out", f1(x100))
        gain = lambda a: math.sqrt(2.0 / (1 + a**2))
        for k, a in (("1", 1), ("0", 0), ("0.01", 0.01), ("0.1", 0.1), ("sqrt5", math.sqrt(5))):
            o["gain." + k] = gain(a)
        o["uniform.std"] = torch.zeros(100000).uniform_(-1, 1).std().item()

        def kaiming2(w, a, use_fan_out=False):
            nf, ni, *_ = w.shape
            rec_fs = w[0, 0].shape.numel()
            fan = nf * rec_fs if use_fan_out else ni * rec_fs
            bound = math.sqrt(3.0) * gain(a) / math.sqrt(fan)
            w.uniform_(-bound, bound)

        kaiming2(l1.weight, a=0)
        stats(o, "l1_kaiming2_a0.weight", l1.weight)
        stats(o, "f1_kaiming2_a0.out", f1(x100))
        kaiming2(l1.weight, a=math.sqrt(5.0))
        stats(o, "l1_kaiming2_sqrt5.weight", l1.weight)
        stats(o, "f1_kaiming2_sqrt5.out", f1(x100))

    def net():
        return nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 1, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(0))

    y = yv[:100].float()
    mse = lambda out, t: (out.squeeze(-1) - t).pow(2).mean()
    for name, kaiming in (("net_default", False), ("net_kaiming", True)):
        m = net()
        if kaiming:
            for layer in m:
                if isinstance(layer, nn.Conv2d):
                    init.kaiming_uniform_(layer.weight)
                    layer.bias.data.zero_()
        t = m(x100)
        stats(o, name + ".out", t.detach())
        loss = mse(t, y)
        loss.backward()
        o[name + ".loss"] = loss.item()
        stats(o, name + ".grad0", m[0].weight.grad)
    return o


def main():
    path = sys.argv[1]
    seeds = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 1
    data = list(load(path))
    runs = [run(*data, seed) for seed in range(seeds)]
    if seeds == 1:
        print(json.dumps(runs[0], indent=1))
    else:
        spread = {}
        for k in runs[0]:
            v = [r[k] for r in runs]
            mean = sum(v) / len(v)
            sd = math.sqrt(sum((e - mean) ** 2 for e in v) / max(1, len(v) - 1))
            spread[k] = {"min": min(v), "max": max(v), "mean": mean, "std": sd}
        print(json.dumps({"seeds": seeds, "torch": torch.__version__, "spread": spread}, indent=1))


if __name__ == "__main__":
    main()
