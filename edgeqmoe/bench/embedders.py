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
        # mn04 on each runtime that is installed: our integer kernels, ONNX Runtime (fp32, no
        # torch) and torch, side by side
        for rt in (("int8", "onnxruntime", "torch") if e == "mn04" else ("auto",)):
            key = e if rt == "auto" else f"{e}/{rt}"
            try:
                built[key] = get_embedder(e, weights=weights, threads=1, runtime=rt)
            except (WeightsError, ImportError) as err:
                skipped[key] = str(err)
    if not built:
        raise WeightsError("; ".join(skipped.values()))
    # each embedder's whole window (front end and network) and, where it has one, the
    # network alone on the window's log-mel: (name, what) -> a call on window i
    from functools import partial

    from ..audio.frontend import log_mel

    calls = {}
    for e, emb in built.items():
        calls[(e, "whole")] = partial(_whole, emb, windows, sr)
        if hasattr(emb, "forward_mel"):
            mels = [log_mel(w[None, :], emb.mel_spec, sr=sr) for w in windows]
            calls[(e, "network")] = partial(_network, emb, mels)
    for call in calls.values():
        for i in range(len(windows)):
            call(i)
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            ts = times[k]
            for i in range(per_round):
                t0 = time.perf_counter()
                call(i)
                ts.append(time.perf_counter() - t0)
    rows = []
    for (e, what), ts in times.items():
        q = percentiles(np.asarray(ts) * 1e3, 3)
        info = built[e].info
        rows.append({"embedder": e, "impl": f"{info.id}/{getattr(built[e], 'runtime', None)}", "what": what,
                     "runtime": getattr(built[e], "runtime", None), "version": info.version, "dim": info.dim,
                     "model_rate": info.sample_rate, "input_rate": sr, "window_s": window_s,
                     "median_ms": q["p50"], "p95_ms": q["p95"], "p99_ms": q["p99"], "n": len(ts)})
    return {"machine": machine_info({"threads": 1}), "rows": rows, "skipped": skipped}


def _whole(emb, windows, sr, i):
    return emb.embed(windows[i % len(windows)], sr)


def _network(emb, mels, i):
    return emb.forward_mel(mels[i % len(mels)])


def format_table(result: Dict) -> str:
    from ..machine import describe

    lines = [f"machine: {describe(result['machine'])}", "",
             f"{'embedder':18} {'what':8} {'dim':>4} {'window':>7} {'median ms':>10} {'p95 ms':>8} {'p99 ms':>8} "
             f"{'n':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['embedder']:18} {r['what']:8} {r['dim']:4d} {r['window_s']:6.2f}s {r['median_ms']:10.3f} "
                     f"{r['p95_ms']:8.3f} {r['p99_ms']:8.3f} {r['n']:6d}")
    rows = {(r["embedder"], r["what"]): r for r in result["rows"]}
    bases = ("mn04/onnxruntime", "mn04/torch")
    for r in result["rows"]:  # each against the full-precision runtimes of the same run (each pair once)
        for base in bases:
            ref = rows.get((base, r["what"]))
            if ref is None or not r["embedder"].startswith("mn04/") or \
                    (r["embedder"] in bases and bases.index(base) <= bases.index(r["embedder"])):
                continue
            speed = ref["median_ms"] / r["median_ms"]
            lines.append(f"  {r['embedder']} {r['what']}: {max(speed, 1 / speed):.2f}x "
                         f"{'faster' if speed >= 1 else 'slower'} than {base} (medians, same run)")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name:18} not timed: {why}")
    return "\n".join(lines)
