"""The 527 AudioSet classes that mn04 scores, and finding them by name.

``audioset_labels()`` lists the display names in output order (shipped with the
package: ``audioset_labels.txt``). ``find_label(name)`` accepts a display name or any
of its comma-separated parts, in any case (``Smoke detector`` finds "Smoke detector,
smoke alarm"), and says what was meant when it finds nothing.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

import numpy as np

LABELS_FILE = Path(__file__).with_name("audioset_labels.txt")
N_LABELS = 527


class LabelError(ValueError):
    """A name that is no AudioSet class; the message suggests the nearest."""


@lru_cache(maxsize=1)
def audioset_labels() -> List[str]:
    names = [line.rstrip("\n").split("\t")[2] for line in LABELS_FILE.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    assert len(names) == N_LABELS, f"{LABELS_FILE} lists {len(names)} classes, not {N_LABELS}"
    return names


@lru_cache(maxsize=1)
def _by_name() -> Dict[str, int]:
    out: Dict[str, int] = {}
    for i, name in enumerate(audioset_labels()):
        out.setdefault(name.lower(), i)
    for i, name in enumerate(audioset_labels()):  # the parts of "A, b" after the whole names
        for part in name.split(","):
            out.setdefault(part.strip().lower(), i)
    return out


def find_label(name: str) -> int:
    """Index of an AudioSet class by display name or a comma-separated part of it."""
    i = _by_name().get(str(name).strip().lower())
    if i is not None:
        return i
    close = difflib.get_close_matches(str(name).lower(), list(_by_name()), n=6, cutoff=0.6)
    names = audioset_labels()
    near = list(dict.fromkeys(_by_name()[c] for c in close))[:3]
    hint = ("; did you mean " + " or ".join(repr(names[i]) for i in near) + "?") if near else \
        "; 'edgeqmoe labels' lists all 527"
    raise LabelError(f"{name!r} is not an AudioSet class{hint}")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
