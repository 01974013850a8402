"""Shared by the bge_rs tests: fixture paths and readers, and the one tolerance rule of the
Rust tests (tests/common/mod.rs): |got - want| <= atol + rtol * |want|, its values per kind."""

import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

# (atol, rtol), the same values and reasons as tests/common/mod.rs `tol`.
NORMALIZED = (1e-4, 0.0)
UNNORMALIZED = (2e-4, 0.0)
LEXICAL = (1e-4, 0.0)
LOGITS = (1e-4, 0.0)
SIGMOID = (2e-5, 0.0)


def model(name):
    return str(FIXTURES / "models" / name)


def minilm():
    d = ROOT / "target" / "models" / "all-MiniLM-L6-v2"
    assert (d / "config.json").is_file(), f"{d} is missing: bash tools/fetch_minilm.sh {d} (.ci/run does)"
    return str(d)


def reference(path):
    return FIXTURES / "reference" / path


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def texts(key):
    return read_json(reference("sentences.json"))[key]


_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def load(path, name):
    """A tensor of a safetensors fixture (the format is a JSON header and raw little-endian data)."""
    with open(reference(path), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        meta = header[name]
        begin, end = meta["data_offsets"]
        f.seek(8 + n + begin)
        data = f.read(end - begin)
    return np.frombuffer(data, dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"])


def assert_close(got, want, tol, what=""):
    atol, rtol = tol
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = np.abs(got - want) - (atol + rtol * np.abs(want))
    assert (err <= 0).all(), f"{what}: worst excess {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
