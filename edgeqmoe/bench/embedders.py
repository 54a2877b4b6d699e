"""``edgeqmoe bench embedders``: time per window of each embedder, front end included.

Input: windows of real or synthetic audio at the input rate (16 kHz, as from the
microphone), one at a time, one thread; each call is timed on its own (median, p95,
p99, in milliseconds). The embedders take turns, round after round, so noise on a
shared machine falls on all alike.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

import numpy as np

from ..machine import apply_threads, machine_info
from ..stats import percentiles


def run_bench(embedders: List[str], window_s: float = 1.0, sr: int = 16000, rounds: int = 10,
              per_round: int = 50, weights: Optional[str] = None, audio: Optional[np.ndarray] = None) -> Dict:
    from ..embed import WeightsError, get_embedder

    apply_threads(1)
    n = int(round(window_s * sr))
    if audio is None:
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(n * 8) * 0.1).astype(np.float32)
    starts = np.linspace(0, max(0, len(audio) - n), 8).astype(int)
    windows = [np.ascontiguousarray(audio[s:s + n]) for s in starts]
    built, skipped = {}, {}
    for e in embedders:  # one without its weights is skipped and said; the others are still timed
        # mn04 on each runtime that is installed: ONNX Runtime (no torch) and torch, side by side
        for rt in (("onnxruntime", "torch") if e == "mn04" else ("auto",)):
            key = e if rt == "auto" else f"{e}/{rt}"
            try:
                built[key] = get_embedder(e, weights=weights, threads=1, runtime=rt)
            except (WeightsError, ImportError) as err:
                skipped[key] = str(err)
    if not built:
        raise WeightsError("; ".join(skipped.values()))
    times = {e: [] for e in built}
    for emb in built.values():
        for w in windows:
            emb.embed(w, sr)
    for _ in range(rounds):
        for e, emb in built.items():
            ts = times[e]
            for i in range(per_round):
                w = windows[i % len(windows)]
                t0 = time.perf_counter()
                emb.embed(w, sr)
                ts.append(time.perf_counter() - t0)
    rows = []
    for e, ts in times.items():
        q = percentiles(np.asarray(ts) * 1e3, 3)
        info = built[e].info
        rows.append({"embedder": e, "runtime": getattr(built[e], "runtime", None), "version": info.version, "dim": info.dim, "model_rate": info.sample_rate,
                     "input_rate": sr, "window_s": window_s, "median_ms": q["p50"], "p95_ms": q["p95"],
                     "p99_ms": q["p99"], "n": len(ts)})
    return {"machine": machine_info({"threads": 1}), "rows": rows, "skipped": skipped}


def format_table(result: Dict) -> str:
    from ..machine import describe

    lines = [f"machine: {describe(result['machine'])}", "",
             f"{'embedder':18} {'dim':>4} {'window':>7} {'median ms':>10} {'p95 ms':>8} {'p99 ms':>8} {'n':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['embedder']:18} {r['dim']:4d} {r['window_s']:6.2f}s {r['median_ms']:10.3f} "
                     f"{r['p95_ms']:8.3f} {r['p99_ms']:8.3f} {r['n']:6d}")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name:18} not timed: {why}")
    return "\n".join(lines)
