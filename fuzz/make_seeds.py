#!/usr/bin/env python3
"""Writes the small seed corpora under fuzz/seeds/ (stdlib only, no numpy needed).

- seeds/pickle: the numpy pickle fixtures of tests/fixtures/pickle (plain ones; the
  gzipped one decompressed) and a small MNIST-structured pickle.
- seeds/pickle_gz: the same, the decompressed content (the target gzips it itself).
- seeds/mnist: the small MNIST-structured pickle, written the way the embedded sample
  (data/mnist_sample.pkl.gz) is: Python 2 cPickle protocol 2, `_reconstruct` + BUILD,
  dtypes as `numpy.dtype(('f4', 0, 1))` + BUILD, raw data as BINSTRING, the memo
  shared between arrays exactly as in the sample; 3 images of 4 pixels per split.
- seeds/idx: hand-made IDX files of every type code, including 3-D u8 images.

Run from the repository root: python3 fuzz/make_seeds.py
"""
import gzip
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def put(i):
    return b"q" + bytes([i])


def get(i):
    return b"h" + bytes([i])


def mnist_pickle(n=3, w=4):
    """((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) as the sample has it."""
    out = [b"\x80\x02"]
    memo = 0

    def p():
        nonlocal memo
        memo += 1
        return put(memo - 1)

    def binstring(b):
        return b"T" + struct.pack("<i", len(b)) + b

    def array(first, split, images):
        # reconstruct(ndarray, (0,), 'b')
        parts = []
        if first and images:
            parts += [b"cnumpy.core.multiarray\n_reconstruct\n", p(), b"cnumpy\nndarray\n", p()]
        else:
            parts += [get(0), get(1)]
        parts += [b"K\x00\x85", p()]
        parts += [b"U\x01b", p()] if first and images else [get(3)]
        parts += [b"\x87", p(), b"R", p(), b"(K\x01"]
        if images:
            parts += [b"M" + struct.pack("<H", n), b"K" + bytes([w]), b"\x86", p()]
        else:
            parts += [b"M" + struct.pack("<H", n), b"\x85", p()]
        if images and first:
            parts += [b"cnumpy\ndtype\n", p(), b"U\x02f4", p(), b"K\x00K\x01\x87", p(), b"R", p()]
            parts += [b"(K\x03U\x01<", p(), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", p(), b"b"]
        elif images:
            parts += [get(10)]
        elif first:
            parts += [get(7), b"U\x02i8", p(), b"K\x00K\x01\x87", p(), b"R", p()]
            parts += [b"(K\x03", get(11), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", p(), b"b"]
        else:
            parts += [get(21)]
        if images:
            data = b"".join(struct.pack("<f", ((split * 7 + i) % 256) / 256) for i in range(n * w))
        else:
            data = b"".join(struct.pack("<q", (split * 3 + i) % 10) for i in range(n))
        parts += [b"K\x00", binstring(data), p(), b"t", p(), b"b"]
        return b"".join(parts)

    for split in range(3):
        out.append(array(split == 0, split, True))
        out.append(array(split == 0, split, False))
        out.append(b"\x86")
        out.append(p())
    out.append(b"\x87")
    out.append(p())
    out.append(b".")
    return b"".join(out)


def idx(code, shape, data):
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape) + data


def main():
    for d in ("pickle", "pickle_gz", "mnist", "idx"):
        path = os.path.join(SEEDS, d)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    fixtures = os.path.join(ROOT, "tests", "fixtures", "pickle")
    mnist = mnist_pickle()
    for name in sorted(os.listdir(fixtures)):
        with open(os.path.join(fixtures, name), "rb") as f:
            data = f.read()
        if name.endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except Exception:
                continue  # bad_garbage.pkl.gz: not gzip at all past the magic
            name = name[:-3]
        for d in ("pickle", "pickle_gz"):
            with open(os.path.join(SEEDS, d, name), "wb") as f:
                f.write(data)
    for d in ("pickle", "pickle_gz", "mnist"):
        with open(os.path.join(SEEDS, d, "mnist_small.pkl"), "wb") as f:
            f.write(mnist)
    idx_seeds = {
        "u8_images.idx": idx(0x08, [2, 3, 3], bytes(range(18))),
        "u8_labels.idx": idx(0x08, [4], bytes([5, 0, 4, 1])),
        "i8.idx": idx(0x09, [3], struct.pack(">3b", -1, 0, 1)),
        "i16.idx": idx(0x0B, [2, 2], struct.pack(">4h", -2, -1, 1, 2)),
        "i32.idx": idx(0x0C, [2], struct.pack(">2i", -70000, 70000)),
        "f32.idx": idx(0x0D, [1, 3], struct.pack(">3f", 0.5, -1.0, float("inf"))),
        "f64.idx": idx(0x0E, [2], struct.pack(">2d", 0.25, float("nan"))),
        "empty.idx": idx(0x08, [0, 28, 28], b""),
    }
    for name, data in idx_seeds.items():
        with open(os.path.join(SEEDS, "idx", name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
