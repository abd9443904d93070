"""Reference files for tests/weights_io.rs, and a live check that PyTorch loads what
convinit writes.

usage:
  python tools/weights_io_torch.py make
      writes tests/fixtures/weights_io/seed_net_8_state_dict.safetensors: the state_dict of the
      seed net (the notebook's conv net) holding the weights of seed_net_8.safetensors,
      saved by safetensors.torch.save_file(..., metadata={"format": "pt"}). The Rust test
      checks convinit's writer produces these exact bytes.
  python tools/weights_io_torch.py check FILE
      loads FILE (written by convinit::io::save_safetensors from the seed net) into a
      torch.nn.Sequential with load_state_dict(strict=True), runs it on the fixture's x
      and compares with the fixture's out.
"""
import sys
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

FIX = "tests/fixtures/seed_net_8.safetensors"


def seed_net():
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 1, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(0))


def main():
    case = load_file(FIX)
    m = seed_net()
    if sys.argv[1] == "make":
        m.load_state_dict({k: v for k, v in case.items() if k[0].isdigit()})
        save_file(m.state_dict(), "tests/fixtures/weights_io/seed_net_8_state_dict.safetensors",
                  metadata={"format": "pt"})
    else:
        m.load_state_dict(load_file(sys.argv[2]), strict=True)
        out = m(case["x"])
        err = (out - case["out"]).abs().max().item()
        print(f"PyTorch loaded {sys.argv[2]} (strict); max |out - fixture out| = {err:.3g}")
        assert err < 1e-5


main()
