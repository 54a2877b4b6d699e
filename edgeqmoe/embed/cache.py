"""Embedding whole datasets, with a resumable cache.

``embed_dataset`` writes ``<out>/<dataset>.<embedder>-v<version>[.w<window>-h<hop>].npz``
with plain numpy arrays (no pickle):

* ``embedding`` (n, dim) float32, ``label`` (n,) int64, ``fold`` (n,) int64,
  ``group`` (n,) str, ``file`` (n,) str (the file id, relative to the dataset root);
* ``clip`` (n,) int64: index of the row's clip in the dataset order, and ``start``
  (n,) float64: the window's start in seconds (0 for whole clips);
* ``classes`` (c,) str, ``embedder`` (a JSON string), ``window_s``, ``hop_s``.

Without ``window`` each clip is one row (its whole length); with it, every clip is cut
into windows (``edgeqmoe.audio.windowing.frame``) that inherit the clip's label.

Resuming: results are kept per file, keyed by the sha256 of the file's bytes, in
chunk files under ``<out>/<name>.parts/`` written atomically every few seconds. A
rerun computes only files whose content is new; a changed embedder version or
windowing is a different name, so nothing stale is reused. A file that cannot be
decoded is reported (name and reason), skipped, and counted in the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..audio.datasets import Dataset
from ..audio.io import AudioReadError, decode
from ..audio.resample import resample
from ..audio.windowing import frame
from .base import Embedder

CHUNK_SECONDS = 5.0
BATCH_WINDOWS = 32


@dataclass
class EmbedSummary:
    output: str
    clips: int = 0
    computed: int = 0
    reused: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"output": self.output, "clips": self.clips, "computed": self.computed, "reused": self.reused,
                "failed": len(self.failed), "failures": [{"file": f, "reason": r} for f, r in self.failed],
                "rows": self.rows, "seconds": round(self.seconds, 2)}


def cache_name(dataset: Dataset, embedder: Embedder, window: Optional[float], hop: Optional[float]) -> str:
    name = f"{dataset.name}.{embedder.info.id}-v{embedder.info.version}"
    if window:
        name += f".w{window:g}-h{(hop or window):g}"
    return name


def _load_parts(parts: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    done: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for f in sorted(parts.glob("chunk-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                keys, counts, emb, start = z["key"], z["count"], z["embedding"], z["start"]
        except Exception:  # a chunk cut short by a crash: its files are simply redone
            continue
        pos = 0
        for k, c in zip(keys, counts):
            done[str(k)] = (emb[pos:pos + c], start[pos:pos + c])
            pos += c
    return done


def _write_chunk(parts: Path, entries: List[Tuple[str, np.ndarray, np.ndarray]]) -> None:
    if not entries:
        return
    parts.mkdir(parents=True, exist_ok=True)
    n = len(list(parts.glob("chunk-*.npz")))
    path = parts / f"chunk-{n:06d}-{os.getpid()}-{int(time.time() * 1000) % 10**9}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=np.array([e[0] for e in entries]), count=np.array([len(e[1]) for e in entries]),
             embedding=np.concatenate([e[1] for e in entries]), start=np.concatenate([e[2] for e in entries]))
    os.replace(tmp, path)


def embed_dataset(dataset: Dataset, embedder: Embedder, out_dir, window: Optional[float] = None,
                  hop: Optional[float] = None, workers: int = 2,
                  on_progress: Optional[Callable[[int, int], None]] = None,
                  on_failure: Optional[Callable[[str, str], None]] = None) -> EmbedSummary:
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = cache_name(dataset, embedder, window, hop)
    parts = out_dir / f"{name}.parts"
    done = _load_parts(parts)
    sr = embedder.info.sample_rate
    win_n = int(round(window * sr)) if window else None
    hop_n = int(round((hop or window) * sr)) if window else None
    summary = EmbedSummary(output=str(out_dir / f"{name}.npz"), clips=len(dataset))

    def prepare(clip):
        """Read, hash, decode, resample, cut: (key, windows, starts) or an error."""
        try:
            with open(clip.path, "rb") as f:
                data = f.read()
        except OSError as e:
            return clip, None, None, None, f"cannot read ({e.strerror})"
        key = hashlib.sha256(data).hexdigest()[:32]
        if key in done:
            return clip, key, None, None, None
        try:
            x, file_sr = decode(data, clip.file_id)
        except AudioReadError as e:
            return clip, key, None, None, str(e).split(": ", 1)[-1]
        x = resample(x, file_sr, sr)
        if win_n:
            wins = frame(x, win_n, hop_n)
            starts = np.arange(len(wins), dtype=np.float64) * (hop_n / sr)
        else:
            wins, starts = x[None, :], np.zeros(1)
        return clip, key, wins, starts, None

    keys_in_order: List[Optional[str]] = []
    pending: List[Tuple[str, np.ndarray, np.ndarray]] = []
    last_flush = time.monotonic()
    batch: List[Tuple[str, np.ndarray, np.ndarray]] = []  # (key, windows, starts) awaiting the model

    def run_batch():
        nonlocal last_flush
        if not batch:
            return
        # windows of equal length go through the model together
        by_len: Dict[int, List[int]] = {}
        for i, (_, w, _) in enumerate(batch):
            by_len.setdefault(w.shape[1], []).append(i)
        results: Dict[int, np.ndarray] = {}
        for idx in by_len.values():
            stacked = np.concatenate([batch[i][1] for i in idx])
            emb = np.concatenate([embedder._embed_batch(stacked[j:j + BATCH_WINDOWS])
                                  for j in range(0, len(stacked), BATCH_WINDOWS)])
            pos = 0
            for i in idx:
                n = len(batch[i][1])
                results[i] = emb[pos:pos + n]
                pos += n
        for i, (key, _, starts) in enumerate(batch):
            done[key] = (results[i], starts)
            pending.append((key, results[i], starts))
        batch.clear()
        if time.monotonic() - last_flush > CHUNK_SECONDS:
            _write_chunk(parts, pending)
            pending.clear()
            last_flush = time.monotonic()

    def prepared():
        """Results in dataset order, at most a few files decoded ahead of the model."""
        from collections import deque

        ahead = 4 * max(1, workers)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            queue: deque = deque()
            for clip in dataset.clips:
                queue.append(pool.submit(prepare, clip))
                if len(queue) >= ahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()

    for n_done, (clip, key, wins, starts, err) in enumerate(prepared(), 1):
        if err:
            summary.failed.append((clip.file_id, err))
            keys_in_order.append(None)
            if on_failure:
                on_failure(clip.file_id, err)
        elif wins is None:
            summary.reused += 1
            keys_in_order.append(key)
        else:
            summary.computed += 1
            keys_in_order.append(key)
            batch.append((key, wins, starts))
            if sum(len(b[1]) for b in batch) >= BATCH_WINDOWS:
                run_batch()
        if on_progress:
            on_progress(n_done, len(dataset))
    run_batch()
    _write_chunk(parts, pending)

    rows = {k: [] for k in ("embedding", "label", "fold", "group", "file", "clip", "start")}
    for ci, (clip, key) in enumerate(zip(dataset.clips, keys_in_order)):
        if key is None:
            continue
        emb, starts = done[key]
        n = len(emb)
        rows["embedding"].append(emb)
        rows["start"].append(starts)
        rows["label"] += [clip.label] * n
        rows["fold"] += [clip.fold] * n
        rows["group"] += [clip.group] * n
        rows["file"] += [clip.file_id] * n
        rows["clip"] += [ci] * n
    dim = embedder.info.dim
    arrays = {
        "embedding": np.concatenate(rows["embedding"]).astype(np.float32) if rows["embedding"] else np.zeros((0, dim), np.float32),
        "start": np.concatenate(rows["start"]) if rows["start"] else np.zeros(0),
        "label": np.array(rows["label"], dtype=np.int64),
        "fold": np.array(rows["fold"], dtype=np.int64),
        "group": np.array(rows["group"], dtype=str),
        "file": np.array(rows["file"], dtype=str),
        "clip": np.array(rows["clip"], dtype=np.int64),
        "classes": np.array(dataset.classes, dtype=str),
        "embedder": np.array(json.dumps(embedder.info.as_dict())),
        "window_s": np.array(window or 0.0),
        "hop_s": np.array((hop or window) or 0.0),
    }
    tmp = out_dir / f"{name}.tmp.npz"
    save_npz(tmp, arrays)
    os.replace(tmp, out_dir / f"{name}.npz")
    summary.rows = len(arrays["label"])
    summary.seconds = time.perf_counter() - t0
    return summary


def save_npz(path, arrays: Dict[str, np.ndarray]) -> None:
    """An .npz (zip of .npy) readable by ``np.load``; unlike ``np.savez`` it takes any
    array name, ``file`` included."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(v), allow_pickle=False)


def load_embeddings(path) -> Dict[str, np.ndarray]:
    """The arrays of an embedding cache file (plain numpy, no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
