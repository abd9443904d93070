"""Reference files for tests/weights_io.rs, and a live check that PyTorch loads what
convinit writes.

usage:
  python tools/weights_io_torch.py make
      writes, with safetensors.torch.save_file(m.state_dict(), ..., metadata={"format": "pt"}):
      tests/fixtures/weights_io/seed_net_8_state_dict.safetensors: the seed net (the
        notebook's conv net) holding the weights of tests/fixtures/seed_net_8.safetensors;
      tests/fixtures/weights_io/lenet_8_state_dict.safetensors: the LeNet-5 with batch norm
        of examples/lenet.rs holding the weights and buffers of
        tests/fixtures/layers/lenet_8.safetensors (num_batches_tracked as int64).
      The Rust tests check convinit's writer produces these exact bytes and loads them
      strictly.
  python tools/weights_io_torch.py check FILE [seed|lenet]
      loads FILE (written by convinit::io::save_safetensors from that net; seed by
      default) into the torch.nn.Sequential with load_state_dict(strict=True), runs it on
      the fixture's x (the LeNet in training mode, as the fixture was made) and compares
      with the fixture's out.
"""
import sys
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file


def seed_net():
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 1, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(0))


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


NETS = {
    "seed": (seed_net, "tests/fixtures/seed_net_8.safetensors",
             "tests/fixtures/weights_io/seed_net_8_state_dict.safetensors"),
    "lenet": (lenet, "tests/fixtures/layers/lenet_8.safetensors",
              "tests/fixtures/weights_io/lenet_8_state_dict.safetensors"),
}


def main():
    if sys.argv[1] == "make":
        for build, fixture, out in NETS.values():
            case, m = load_file(fixture), build()
            m.load_state_dict({k: v for k, v in case.items() if k[0].isdigit()})
            save_file(m.state_dict(), out, metadata={"format": "pt"})
        return
    build, fixture, _ = NETS[sys.argv[3] if len(sys.argv) > 3 else "seed"]
    case, m = load_file(fixture), build()
    m.load_state_dict(load_file(sys.argv[2]), strict=True)
    out = m.train()(case["x"]) if build is lenet else m(case["x"])
    err = (out - case["out"]).abs().max().item()
    print(f"PyTorch loaded {sys.argv[2]} (strict); max |out - fixture out| = {err:.3g}")
    assert err < 1e-5


main()
