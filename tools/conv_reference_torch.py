"""PyTorch reference cases for conv2d shapes the shared fixtures do not cover, in the
format tests/reference.rs reads (x, w, b, y, dy, dx, dw, db; metadata op=conv2d, stride,
padding, dilation, groups): the depthwise convs (groups = C) of the depthwise path.

usage: python tools/conv_reference_torch.py    (writes tests/fixtures/conv_depthwise*.safetensors)
"""
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

CASES = {
    # name: (N, C, H, W, multiplier, k, stride, padding, dilation)
    "conv_depthwise": (2, 8, 9, 7, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    "conv_depthwise_m2_s2": (3, 4, 11, 10, 2, (5, 3), (2, 2), (2, 1), (1, 2)),
}


def main():
    torch.manual_seed(0)
    for name, (n, c, h, w, m, k, s, p, d) in CASES.items():
        x = torch.randn(n, c, h, w, requires_grad=True)
        wt = (torch.randn(c * m, 1, *k) * 0.3).requires_grad_()
        b = torch.randn(c * m, requires_grad=True)
        y = F.conv2d(x, wt, b, stride=s, padding=p, dilation=d, groups=c)
        dy = torch.randn_like(y)
        y.backward(dy)
        t = {"x": x, "w": wt, "b": b, "y": y, "dy": dy, "dx": x.grad, "dw": wt.grad, "db": b.grad}
        meta = {"op": "conv2d", "stride": f"{s[0]},{s[1]}", "padding": f"{p[0]},{p[1]}",
                "dilation": f"{d[0]},{d[1]}", "groups": str(c)}
        save_file({k: v.detach().contiguous() for k, v in t.items()},
                  f"tests/fixtures/{name}.safetensors", metadata=meta)


main()
