"""Training data from an embedding cache: rows are windows (or whole clips), each with
its clip, label, fold and group (recording).

Protocols (``splits``):

* ``5``: the paper's stratified, shuffled 5-fold split over *clips* (windows of a clip
  stay together). Clips of one recording land on both sides, so it leaks and scores
  high; it is here to compare with the paper.
* ``folds``: the dataset's own folds, each held out in turn (UrbanSound8K keeps a
  recording in one fold): the honest score.

Early stopping never looks at the test fold: it watches a validation split taken from
the training side, grouped by recording (``val_split``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np


@dataclass
class Data:
    X: np.ndarray        # (rows, dim) float32
    y: np.ndarray        # (rows,) int64
    clip: np.ndarray     # (rows,) int64: clip index
    fold: np.ndarray     # (rows,) int64
    group: np.ndarray    # (rows,) str
    classes: List[str]
    embedder: dict
    window_s: float
    hop_s: float

    def subset(self, rows: np.ndarray) -> "Data":
        return Data(self.X[rows], self.y[rows], self.clip[rows], self.fold[rows], self.group[rows], self.classes,
                    self.embedder, self.window_s, self.hop_s)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def load_data(path, folds=()) -> Data:
    import json

    with np.load(path, allow_pickle=False) as z:
        d = Data(z["embedding"].astype(np.float32), z["label"].astype(np.int64), z["clip"].astype(np.int64),
                 z["fold"].astype(np.int64), z["group"].astype(str), [str(c) for c in z["classes"]],
                 json.loads(str(z["embedder"])), float(z["window_s"]), float(z["hop_s"]))
    if folds:
        d = d.subset(np.isin(d.fold, list(folds)))
    return d


def clip_labels(d: Data) -> Tuple[np.ndarray, np.ndarray]:
    """(unique clip ids, their labels)."""
    clips, first = np.unique(d.clip, return_index=True)
    return clips, d.y[first]


def splits(d: Data, cv: str, seed: int = 0) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(name, train row mask, test row mask) per fold of the protocol."""
    if cv == "5":
        clips, labels = clip_labels(d)
        rng = np.random.default_rng(seed)
        assign = np.empty(len(clips), dtype=np.int64)
        for c in np.unique(labels):  # stratified: deal each class's shuffled clips round-robin
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            assign[idx] = (np.arange(len(idx)) + rng.integers(5)) % 5
        fold_of_clip = dict(zip(clips.tolist(), assign.tolist()))
        row_fold = np.array([fold_of_clip[c] for c in d.clip.tolist()])
        for k in range(5):
            yield f"cv5-{k + 1}", row_fold != k, row_fold == k
    elif cv == "folds":
        folds = sorted(set(d.fold.tolist()))
        if len(folds) < 2:
            raise ValueError("the dataset has fewer than two folds: use cv: 5")
        for f in folds:
            yield f"fold{f}", d.fold != f, d.fold == f
    else:
        raise ValueError(f"unknown protocol {cv!r}")


def val_split(d: Data, fraction: float, seed: int = 0, by: str = "group") -> Tuple[np.ndarray, np.ndarray]:
    """(train mask, validation mask) holding out ``fraction`` of the recordings
    (``by="group"``) or of the clips (``by="clip"``), stratified by label.

    The honest protocol validates on held-out recordings. Under the paper's leaky
    5-fold protocol the validation split mirrors the test condition (clips of a
    recording on both sides), so it is drawn by clip there."""
    if fraction <= 0:
        return np.ones(len(d.y), bool), np.zeros(len(d.y), bool)
    key = d.group if by == "group" else d.clip.astype(str)
    groups, first = np.unique(key, return_index=True)
    labels = d.y[first]
    rng = np.random.default_rng(seed + 7919)
    held = []
    for c in np.unique(labels):
        g = groups[labels == c]
        g = g[rng.permutation(len(g))]
        held += list(g[:max(1, int(round(fraction * len(g))))]) if len(g) > 1 else []
    val = np.isin(key, held)
    return ~val, val
