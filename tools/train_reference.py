"""PyTorch reference values for tests/train.rs: cross-entropy (loss and gradient),
SGD with momentum / weight decay / dampening / nesterov over a few steps, and fast.ai's
GeneralRelu forward and backward. Prints Rust array literals to paste into the tests.

usage: /tmp/torch-ref/bin/python tools/train_reference.py
"""
import torch
import torch.nn.functional as F

torch.set_printoptions(precision=8)


def rs(t):
    return "[" + ", ".join(f"{v:.9e}" for v in t.flatten().tolist()) + "]"


# Cross-entropy on fixed logits (including a large one to exercise log-sum-exp).
logits = torch.tensor([[1.0, 2.0, 0.5, -1.0, 0.0],
                       [0.1, -0.2, 0.3, 0.4, -0.5],
                       [80.0, 100.0, -50.0, 3.0, 99.0],
                       [-3.0, -3.0, -3.0, -3.0, -3.0]], requires_grad=True)
target = torch.tensor([1, 4, 2, 0])
loss = F.cross_entropy(logits, target)
loss.backward()
print("CE_LOSS", f"{loss.item():.9e}")
print("CE_GRAD", rs(logits.grad))

# SGD: 3 steps with fixed gradients.
grads = [torch.tensor([0.5, -1.0, 2.0, 0.0]),
         torch.tensor([-0.25, 0.75, 1.0, -3.0]),
         torch.tensor([1.5, 0.1, -0.5, 0.2])]
for name, kw in [("plain", dict(lr=0.1)),
                 ("momentum_wd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                 ("dampening", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1)),
                 ("nesterov", dict(lr=0.2, momentum=0.9, nesterov=True, weight_decay=0.001))]:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    opt = torch.optim.SGD([p], **kw)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(rs(p.detach()))
    print("SGD", name, kw)
    for o in out:
        print("   ", o + ",")


# GeneralRelu (fast.ai course 2019, lesson 10).
def general_relu(x, leak, sub, maxv):
    x = F.leaky_relu(x, leak) if leak is not None else F.relu(x)
    if sub is not None:
        x = x - sub
    if maxv is not None:
        x = x.clamp_max(maxv)
    return x


x = torch.tensor([-3.0, -0.5, 0.0, 0.25, 1.0, 5.9, 6.0, 6.4, 7.0, 10.0])
for args in [(0.1, 0.4, 6.0), (None, 0.5, None), (0.2, None, 3.0)]:
    xx = x.clone().requires_grad_(True)
    y = general_relu(xx, *args)
    y.backward(torch.arange(1.0, 11.0))
    print("GRELU", args)
    print("    y ", rs(y.detach()))
    print("    dx", rs(xx.grad))
