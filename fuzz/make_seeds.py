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
- seeds/pickle, pickle_gz also get structural shapes the mutations alone rarely build:
  memo reuse (PUT once, GET many times) of every kind of object (str, bytes,
  bytearray, tuple, list, dict, int, long, float, ndarray, dtype), containers nested
  deep but within the reader's limit, and long strings (`struct_*.pkl`).
- seeds/npy: the .npy fixtures of tests/fixtures/npy (`bad_` for the unsupported ones)
  and a few crafted headers; seeds/npz: the .npz fixtures.

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
    MNIST_MEMO.append(memo)
    out.append(p())
    out.append(b".")
    return b"".join(out)


def memo_reuse(obj, n, proto=4):
    """[obj] * (n + 1): obj built once, memoized with PUT 0, then n GETs of it."""
    return (b"\x80" + bytes([proto]) + b"](" + obj + b"q\x00" + b"h\x00" * n + b"e.")


def s_unicode(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def structural(mnist):
    """Structurally interesting pickles, each small, legal and within the limits."""
    long_text = "".join(chr(0x61 + i % 26) for i in range(2000))
    seeds = {
        "struct_memo_str.pkl": memo_reuse(s_unicode(long_text), 300),
        "struct_memo_short_str.pkl": memo_reuse(b"\x8c\x03abc", 2000),
        "struct_memo_bytes.pkl": memo_reuse(b"B" + struct.pack("<I", 1000) + bytes(range(250)) * 4, 300, 3),
        "struct_memo_bytearray.pkl": memo_reuse(b"\x96" + struct.pack("<Q", 1000) + b"\x07" * 1000, 300, 5),
        "struct_memo_tuple.pkl": memo_reuse(b"(" + b"K\x01" * 100 + b"t", 300),
        "struct_memo_list.pkl": memo_reuse(b"](" + b"N" * 100 + b"e", 300),
        "struct_memo_dict.pkl": memo_reuse(
            b"}(" + b"".join(b"\x8c\x02k" + bytes([0x30 + i % 10]) + b"K" + bytes([i]) for i in range(50)) + b"u", 300),
        "struct_memo_int.pkl": memo_reuse(b"J\xff\xff\xff\x7f", 2000),
        "struct_memo_long.pkl": memo_reuse(b"\x8a\x08" + b"\xff" * 7 + b"\x7f", 2000),
        "struct_memo_float.pkl": memo_reuse(b"G" + struct.pack(">d", 0.1), 2000),
        "struct_memo_none_bool.pkl": memo_reuse(b"(N\x88\x89t", 2000),
        # The MNIST-shaped tuple (arrays and dtypes shared through the memo) 200 times.
        "struct_memo_arrays.pkl": (
            mnist[:-1] + b"0]q\xff(" + (b"h" + bytes([MNIST_MEMO[-1]])) * 200 + b"e."),
        # Nesting: tuples, lists and dicts 150 deep (the reader allows 200).
        "struct_deep_tuple.pkl": b"\x80\x02" + b"(" * 150 + b"N" + b"t" * 150 + b".",
        "struct_deep_list.pkl": b"\x80\x02" + b"](" * 150 + b"N" + b"e" * 150 + b".",
        "struct_deep_dict.pkl": b"\x80\x02" + b"}(X\x01\x00\x00\x00k" * 150 + b"N" + b"u" * 150 + b".",
        # A DAG: each level a pair of the level below, memoized and referenced twice
        # (2^12 leaves; the kept dag_bomb.pkl regression goes to 2^60).
        "struct_shared_dag.pkl": b"\x80\x02N" + b"".join(
            b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86" for i in range(12)) + b".",
        # Long strings: a 60 000-character str, a Python 2 BINSTRING of 60 000 bytes.
        "struct_long_str.pkl": b"\x80\x04" + s_unicode("z" * 60000) + b".",
        "struct_long_binstring.pkl": b"\x80\x02T" + struct.pack("<i", 60000) + b"\xfe" * 60000 + b".",
    }
    return seeds


MNIST_MEMO = []


def npy_header(descr, fortran, shape, version=1):
    h = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    h = h.encode()
    field = 2 if version == 1 else 4
    while (8 + field + len(h) + 1) % 64:
        h += b" "
    h += b"\n"
    size = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + size + h


def idx(code, shape, data):
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape) + data


def main():
    for d in ("pickle", "pickle_gz", "mnist", "idx", "npy", "npz"):
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
    for name, data in structural(mnist).items():
        for d in ("pickle", "pickle_gz"):
            with open(os.path.join(SEEDS, d, name), "wb") as f:
                f.write(data)
    npy_fixtures = os.path.join(ROOT, "tests", "fixtures", "npy")
    for name in sorted(os.listdir(npy_fixtures)):
        with open(os.path.join(npy_fixtures, name), "rb") as f:
            data = f.read()
        if name.endswith(".npy"):
            out = ("bad_" + name) if name.startswith("unsupported_") else name
            with open(os.path.join(SEEDS, "npy", out), "wb") as f:
                f.write(data)
        elif name.endswith(".npz"):
            with open(os.path.join(SEEDS, "npz", name), "wb") as f:
                f.write(data)
    npy_seeds = {
        "crafted_v2_u1.npy": npy_header("|u1", "False", "(3, 2)", 2) + bytes(range(6)),
        "crafted_4d_f4.npy": npy_header(">f4", "True", "(1, 2, 1, 2)") + struct.pack(">4f", 1, 2, 3, 4),
        "crafted_0d_b1.npy": npy_header("|b1", "False", "()") + b"\x01",
        "bad_lying_shape.npy": npy_header("<f8", "False", "(1000000,)") + b"\x00" * 16,
        "bad_header_len.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFFF) + b"{",
    }
    for name, data in npy_seeds.items():
        with open(os.path.join(SEEDS, "npy", name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
