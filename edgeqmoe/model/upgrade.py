"""Convert a model bundle of an older format to the current one, in place or to a new
file: ``python -m edgeqmoe.model.upgrade OLD.eqm [NEW.eqm]``.

Format 1 stored q1, q2, q4 and ternary weights row by row in blocks of 512, 256, 256
and 128 weights (byte i of a block holding weights i + j * block / fields in field j,
then 64-weight tail blocks) and popcount weights as a sign plane and a mask plane per
row. Format 2 stores them in tiles of 16 rows (kernels.formats). The codes are decoded
from the old layout and packed again; every other tensor and all metadata are kept.
"""

from __future__ import annotations

import sys
from typing import Dict, Iterator

import numpy as np

from ..kernels.formats import get_format, padded_k
from .bundle import BUNDLE_FORMAT_VERSION, BundleError, load_bundle, save_bundle

#: Format 1 block sizes of the field formats, and their offsets.
_V1_FIELDS = {"q1": (1, 512, 0), "q2": (2, 256, 2), "ternary": (2, 256, 1), "q4": (4, 128, 8)}


def _v1_codes(fmt: str, packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Signed codes (n, k) of a format 1 packed tensor."""
    kp = padded_k(k)
    rows = np.asarray(packed, dtype=np.uint8).reshape(n, -1)
    if fmt == "popcount":
        bits = np.unpackbits(rows, axis=1, bitorder="little")
        sign, mask = bits[:, :kp], bits[:, kp:2 * kp]
        return (mask.astype(np.int8) * np.where(sign > 0, -1, 1)).astype(np.int8)[:, :k]
    bits, big, offset = _V1_FIELDS[fmt]
    per, fmask = 8 // bits, (1 << bits) - 1
    u = np.zeros((n, kp), dtype=np.int16)
    pos = 0
    while pos < kp:
        bsz = big if kp - pos >= big else 64
        nb = bsz // per
        byte = rows[:, pos * bits // 8:(pos + bsz) * bits // 8]
        for j in range(per):
            u[:, pos + j * nb:pos + (j + 1) * nb] = (byte >> (bits * j)) & fmask
        pos += bsz
    codes = u * 2 - 1 if fmt == "q1" else u - offset
    return codes.astype(np.int8)[:, :k]


def _linear_steps(node) -> Iterator[dict]:
    """Every linear step of a graph, however nested (MLP steps, router, experts)."""
    if isinstance(node, dict):
        if node.get("op") == "linear":
            yield node
        for v in node.values():
            yield from _linear_steps(v)
    elif isinstance(node, list):
        for v in node:
            yield from _linear_steps(v)


def upgrade(src: str, dst: str | None = None) -> str:
    """Write the current-format version of bundle ``src`` to ``dst`` (default: src)."""
    b = load_bundle(src, allow_older=True)
    version = b.meta["format_version"]
    if version == BUNDLE_FORMAT_VERSION:
        raise BundleError(src, f"already in bundle format {version}; nothing to do")
    tensors: Dict[str, np.ndarray] = {k: np.array(v) for k, v in b.tensors.items()
                                      if k != "_align" and not k.endswith(".pad")}
    for step in _linear_steps(b.meta["graph"]):
        f = get_format(step["format"])
        if step["format"] in ("q8", "f16"):
            continue  # unchanged layouts
        n, k = int(step["out"]), int(step["in"])
        tensors[step["w"]] = f.pack(_v1_codes(step["format"], b.tensors[step["w"]], n, k))
    meta = {k: v for k, v in b.meta.items() if k not in ("format_version", "data_sha256")}
    del b
    return save_bundle(dst or src, tensors, meta)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print(__doc__.strip().splitlines()[0] + "\nusage: python -m edgeqmoe.model.upgrade OLD.eqm [NEW.eqm]")
        return 2
    try:
        out = upgrade(*args)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (bundle format {BUNDLE_FORMAT_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
