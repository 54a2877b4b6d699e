"""Model bundles: one safetensors file holding packed tensors and their metadata.

Layout: the standard safetensors container (8-byte little-endian header length, a
JSON header describing every tensor's dtype, shape and byte range, then the data).
Tensors are written with the ``safetensors`` library. Loading reads the file once
into private, 64-byte aligned memory (a bundle is at most a few MB) and returns
numpy views into it: replacing or overwriting the file while a daemon runs (``cp
new.eqm model.eqm``) never reaches the running model, which a shared mapping of the
file would (SIGBUS when the file shrinks). The header is validated first (every range
inside the file, sizes matching dtypes and shapes, no negative or overflowing
dimensions), the data region is checked against the sha256 stored in the metadata,
and float tensors (scales, norms, biases) must be finite.

The metadata key ``edgeqmoe`` holds a JSON document::

    {
      "format_version": 2,
      "embedder": {"id": "mn04", "version": "1", "sample_rate": 32000, "dim": 384},
      "classes": ["air_conditioner", ...],
      "input_norm": {"mean": "norm.mean", "std": "norm.std"} | null,
      "graph": {"type": "mlp", "steps": [
          {"op": "linear", "format": "q4", "in": 384, "out": 640,
           "w": "l0.w", "scale": "l0.scale", "bias": "l0.b"},
          {"op": "layernorm", "gamma": "l0.ln.g", "beta": "l0.ln.b", "eps": 1e-5},
          {"op": "relu"}, ...]},
        (or {"type": "ensemble", "kind": "q4", "members": [{"steps": [...]}, ...]},
         or {"type": "moe", ...}: edgeqmoe.model.moe)
      "data_sha256": "...",
      ... free-form provenance (training config, scores) ...
    }

Packed weights (uint8 tensors) start on 64-byte file offsets, so that the mapped
views are as aligned as the kernels want: safetensors writes uint8 tensors last, in
name order, and the writer adds small ``<name>.pad`` tensors (and ``_align`` before
the first) to get there.

A newer ``format_version`` than this code knows, an older one whose packed layouts
it no longer reads (format 1: row-major q1/q2/q4/ternary/popcount; ``python -m
edgeqmoe.model.upgrade`` converts those), a truncated or corrupt file, or a
checksum mismatch raise :class:`BundleError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

#: Bundle format this code writes and the only one it runs. 2: q1, q2, q4, ternary and
#: popcount weights in tiles of 16 rows (kernels.formats).
BUNDLE_FORMAT_VERSION = 2
_META_KEY = "edgeqmoe"
_DTYPES = {"U8": np.uint8, "I8": np.int8, "F16": np.float16, "F32": np.float32, "I32": np.int32}
_MAX_HEADER = 16 * 1024 * 1024
_MAX_FILE = 512 * 1024 * 1024
_ALIGN = 64
_PAD_SUFFIX = ".pad"


class BundleError(Exception):
    """A model bundle that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"model bundle {self.path}: {problem}")


@dataclass
class Bundle:
    """A loaded bundle: metadata plus read-only numpy views into the mapped file."""

    path: str
    meta: Dict[str, Any]
    tensors: Dict[str, np.ndarray]
    nbytes: int

    @property
    def classes(self) -> list:
        return list(self.meta["classes"])

    @property
    def embedder(self) -> Dict[str, Any]:
        return dict(self.meta["embedder"])

    def tensor(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise BundleError(self.path, f"metadata refers to tensor {name!r}, which the file lacks") from None


def save_bundle(path, tensors: Mapping[str, np.ndarray], meta: Dict[str, Any]) -> str:
    """Write tensors and metadata to ``path`` atomically (temp file + rename)."""
    from safetensors.numpy import save  # only writing needs the library

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    for k, v in arrays.items():
        if v.dtype.type not in _DTYPES.values():
            raise ValueError(f"tensor {k!r} has dtype {v.dtype}, not one a bundle stores")
    meta = dict(meta)
    meta["format_version"] = BUNDLE_FORMAT_VERSION
    meta["data_sha256"] = "0" * 64  # same length as the real one: the header keeps its size
    blob = _serialise_aligned(save, arrays, meta)
    hlen = struct.unpack("<Q", blob[:8])[0]
    meta["data_sha256"] = hashlib.sha256(blob[8 + hlen:]).hexdigest()
    blob2 = save(_with_pads(arrays, blob), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    assert len(blob2) == len(blob) and blob2[8 + hlen:] == blob[8 + hlen:]
    blob = blob2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return str(path)


def _u8_layout(blob: bytes):
    """(data start, [(name, begin, end)]) of the uint8 tensors of a serialised file, in
    file order."""
    hlen = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + hlen])
    u8 = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items()
                if k != "__metadata__" and v["dtype"] == "U8")
    return 8 + hlen, [(k, b, e) for b, e, k in u8]


def _with_pads(arrays: Dict[str, np.ndarray], blob: bytes) -> Dict[str, np.ndarray]:
    """The pad tensors that ``blob`` was written with, added to ``arrays``."""
    hlen = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + hlen])
    out = dict(arrays)
    for k, v in header.items():
        if k == "_align" or k.endswith(_PAD_SUFFIX):
            b, e = v["data_offsets"]
            out[k] = np.zeros(e - b, np.uint8)
    return out


def _serialise_aligned(save, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> bytes:
    """Serialise with pad tensors sized so every uint8 tensor starts 64-byte aligned."""
    pads = {"_align": 0}
    pads.update({k + _PAD_SUFFIX: 0 for k, v in arrays.items() if v.dtype == np.uint8})
    blob = b""
    for _ in range(8):
        full = dict(arrays)
        full.update({k: np.zeros(n, np.uint8) for k, n in pads.items()})
        blob = save(full, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
        base, layout = _u8_layout(blob)
        if all((base + b) % _ALIGN == 0 for k, b, _ in layout if k in arrays):
            return blob
        # walk the uint8 region in file order; each pad fills up to the next boundary
        cur = base + layout[0][1]
        for k, b, e in layout:
            if k in pads:
                pads[k] = (-cur) % _ALIGN
                cur += pads[k]
            else:
                cur += e - b
    return blob  # alignment is a speed matter only: the file is valid either way


def _aligned_bytes(n: int) -> np.ndarray:
    """n bytes of private memory starting on a 64-byte boundary."""
    raw = np.empty(n + _ALIGN, np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off:off + n]


def load_bundle(path, verify: bool = True, allow_older: bool = False) -> Bundle:
    """Map a bundle and validate it; see the module doc for what is checked.
    ``allow_older`` admits older formats (for edgeqmoe.model.upgrade only)."""
    path = str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BundleError(path, "file not found") from None
    except OSError as e:
        raise BundleError(path, f"cannot open it ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise BundleError(path, f"truncated: {size} bytes, not even a header length")
        if size > _MAX_FILE:
            raise BundleError(path, f"{size} bytes: larger than any bundle ({_MAX_FILE} bytes at most)")
        mm = _aligned_bytes(size)
        got = f.readinto(mm)
        if got != size:
            raise BundleError(path, f"changed while being read ({got} of {size} bytes); try again")
        mm.flags.writeable = False
        mm = mm.data
    hlen = struct.unpack("<Q", mm[:8])[0]
    if hlen > _MAX_HEADER or 8 + hlen > size:
        raise BundleError(path, f"truncated or not a bundle: header of {hlen} bytes in a {size}-byte file")
    try:
        header = json.loads(bytes(mm[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(path, f"corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise BundleError(path, "corrupt header (not a JSON object)")
    try:
        meta = json.loads(header.get("__metadata__", {}).get(_META_KEY, "null"))
    except (AttributeError, json.JSONDecodeError) as e:
        raise BundleError(path, f"corrupt edgeqmoe metadata ({e})") from None
    if not isinstance(meta, dict):
        raise BundleError(path, "not an edgeqmoe bundle (no 'edgeqmoe' metadata)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(path, f"bad format_version {version!r}")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(path, f"written by a newer edgeqmoe (bundle format {version}, this version reads up to "
                                f"{BUNDLE_FORMAT_VERSION}); upgrade edgeqmoe to use it")
    if version < BUNDLE_FORMAT_VERSION and not allow_older:
        raise BundleError(path, f"bundle format {version} stores packed weights in a layout this version no longer "
                                f"runs; convert it with 'python -m edgeqmoe.model.upgrade {path}' (or export it "
                                f"again with 'edgeqmoe train')")
    for key in ("embedder", "classes", "graph"):
        if key not in meta:
            raise BundleError(path, f"metadata lacks {key!r}")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise BundleError(path, "metadata 'classes' must be a non-empty list of names")
    if not isinstance(meta["embedder"], dict) or not isinstance(meta["embedder"].get("id"), str):
        raise BundleError(path, "metadata 'embedder' must be a mapping with an 'id'")
    if not isinstance(meta["graph"], dict) or not isinstance(meta["graph"].get("type"), str):
        raise BundleError(path, "metadata 'graph' must be a mapping with a 'type'")
    base = 8 + hlen
    data_len = size - base
    tensors: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BundleError(path, f"corrupt header entry for tensor {name!r}") from None
        if any(d < 0 for d in shape):
            raise BundleError(path, f"corrupt header: tensor {name!r} has a negative dimension {shape}")
        count = math.prod(shape)  # Python integers: a product that would wrap in int64 stays too large
        if not (0 <= begin <= end <= data_len):
            raise BundleError(path, f"truncated: tensor {name!r} ends at byte {base + end}, file has {size}")
        if end - begin != count * dtype.itemsize:
            raise BundleError(path, f"corrupt header: tensor {name!r} spans {end - begin} bytes for shape {shape}")
        arr = np.frombuffer(mm, dtype=dtype, count=count, offset=base + begin).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(arr).all():
            raise BundleError(path, f"tensor {name!r} holds NaN or infinite values; export the model again")
        tensors[name] = arr
    if verify:
        want = meta.get("data_sha256")
        got = hashlib.sha256(memoryview(mm)[base:]).hexdigest()
        if want != got:
            raise BundleError(path, "checksum mismatch: the file is corrupt (data sha256 "
                                    f"{got[:16]}..., metadata says {str(want)[:16]}...)")
    return Bundle(path=path, meta=meta, tensors=tensors, nbytes=size)
