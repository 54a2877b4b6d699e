"""``edgeqmoe bench latency``: per-window latency of each profile's pipeline, replayed
from audio files, and the stability of the stable profile against uniform routing.

For each profile: ``windows`` windows cut from the given clips (the profile's window
and hop, or ``--window``), each processed by the profile's pipeline exactly as the
daemon does (embedder, model, decision), one thread; per stage (embed, head,
decision, total): p50, p95, p99, max and standard deviation in milliseconds; resident
memory after the run and whether torch was imported.

Stability: the stable profile's bundle is run twice on the same embeddings, as
configured (curiosity routing, every expert evaluated: fixed work) and with uniform
top-k routing (only the chosen experts run: data-dependent work). Levene's test
(Brown-Forsythe) on the two head-latency samples gives the variance reduction and
its p-value; Welch's t-test compares the means.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from ..train.metrics import compare_samples
from .machine import machine_info


def _windows(paths: List[str], sr: int, window: float, hop: float, n: int):
    """Up to n windows, decoded file by file (never all in memory at once)."""
    from ..audio.io import load
    from ..audio.windowing import frame

    win, hp = int(round(window * sr)), int(round(hop * sr))
    done = 0
    for i in range(100 * len(paths)):
        for w in frame(load(paths[i % len(paths)], sr), win, hp):
            if done >= n:
                return
            done += 1
            yield np.ascontiguousarray(w)


def _summary(ms: np.ndarray) -> Dict:
    return {"p50": round(float(np.percentile(ms, 50)), 4), "p95": round(float(np.percentile(ms, 95)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4), "max": round(float(ms.max()), 4),
            "std": round(float(ms.std()), 4), "mean": round(float(ms.mean()), 4)}


def bench_profile(name: str, paths: List[str], n: int, window: Optional[float] = None) -> Dict:
    import psutil

    from ..daemon.pipeline import Pipeline
    from ..daemon.profiles import load_profile

    overrides = {"audio": {"window": window, "hop": window / 2}} if window else None
    p = load_profile(name, overrides)
    pipe = Pipeline.from_profile(p)
    sr = p.audio.sample_rate
    warm = np.zeros(int(round(p.audio.window * sr)), np.float32)
    for _ in range(5):
        pipe.process(warm, 0.0, 0.0)
    gc.collect()
    gc.freeze()
    gc.disable()
    stages = {k: [] for k in ("embed", "head", "decision", "total")}
    embs = []
    try:
        for w in _windows(paths, sr, p.audio.window, p.audio.hop, n):
            t0 = time.perf_counter()
            rec = pipe.process(w, 0.0, 0.0)
            total = (time.perf_counter() - t0) * 1e3
            for k in ("embed", "head", "decision"):
                stages[k].append(rec["stages_ms"][k])
            stages["total"].append(total)
            embs.append(pipe.embedder.embed(w, sr))  # for the routing comparison (untimed)
    finally:
        gc.enable()
    embs = np.stack(embs)
    return {"profile": p.name, "bundle": pipe.built.bundle, "fallback": bool(pipe.built.fallback),
            "embedder": pipe.embedder.info.id, "model": pipe.model.kind, "experts": list(pipe.model.experts),
            "window_s": p.audio.window, "n": len(embs),
            "stages_ms": {k: _summary(np.asarray(v)) for k, v in stages.items()},
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "torch_imported": "torch" in sys.modules, "_embeddings": embs, "_pipeline": pipe}


def routing_stability(pipe, embeddings: np.ndarray) -> Optional[Dict]:
    """Head latency of the bundle as configured (curiosity, all experts) against the
    same experts with uniform top-k routing (only chosen experts run)."""
    from ..model.moe import MoEModel, load_model

    m = pipe.model
    if not isinstance(m, MoEModel):
        return None
    uniform = load_model(pipe.built.bundle, evaluate_all=False, uniform_routing=True)
    lat = {"curiosity": [], "uniform": []}
    used = {"curiosity": [], "uniform": []}
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):  # interleaved, so machine noise falls on both alike
            for e in embeddings:
                x = e[None, :]
                for name, model in (("curiosity", m), ("uniform", uniform)):
                    t0 = time.perf_counter()
                    pred = model.predict(x)
                    lat[name].append((time.perf_counter() - t0) * 1e3)
                    used[name].append(tuple(pred.experts[0].tolist()))
    finally:
        gc.enable()
    cmp = compare_samples(lat["uniform"], lat["curiosity"])
    return {"bundle": pipe.built.bundle, "n_each": len(lat["curiosity"]),
            "curiosity_ms": _summary(np.asarray(lat["curiosity"])), "uniform_ms": _summary(np.asarray(lat["uniform"])),
            "variance_reduction": round(cmp["variance_reduction"], 4), "levene_W": round(cmp["levene_W"], 3),
            "levene_p": cmp["levene_p"], "welch_p": cmp["welch_p"],
            "routes_curiosity": len(set(used["curiosity"])), "routes_uniform": len(set(used["uniform"]))}


def run_bench(profiles: List[str], paths: List[str], n: int = 2000, window: Optional[float] = None) -> Dict:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    rows, stability = [], None
    for name in profiles:
        r = bench_profile(name, paths, n, window)
        embs, pipe = r.pop("_embeddings"), r.pop("_pipeline")
        rows.append(r)
        if r["profile"] == "stable" and stability is None:
            stability = routing_stability(pipe, embs)
    return {"machine": machine_info({"threads": 1}), "rows": rows, "stability": stability}


def format_table(res: Dict) -> str:
    from .machine import describe

    lines = [f"machine: {describe(res['machine'])}", ""]
    for r in res["rows"]:
        lines.append(f"{r['profile']} ({r['model']} {'/'.join(r['experts'])}, {r['embedder']}, {r['window_s']:g} s "
                     f"windows, n={r['n']}, RSS {r['rss_mb']} MB, torch imported: {r['torch_imported']}"
                     + (", FALLBACK bundle" if r["fallback"] else "") + ")")
        for k, s in r["stages_ms"].items():
            lines.append(f"  {k:9} p50 {s['p50']:8.3f}  p95 {s['p95']:8.3f}  p99 {s['p99']:8.3f}  max {s['max']:8.3f}"
                         f"  std {s['std']:7.3f} ms")
    s = res.get("stability")
    if s:
        lines += ["", f"stable head latency, curiosity (all experts) vs uniform top-k routing, {s['n_each']} windows each:",
                  f"  curiosity p50 {s['curiosity_ms']['p50']:.4f} p99 {s['curiosity_ms']['p99']:.4f} "
                  f"std {s['curiosity_ms']['std']:.4f} ms; uniform p50 {s['uniform_ms']['p50']:.4f} "
                  f"p99 {s['uniform_ms']['p99']:.4f} std {s['uniform_ms']['std']:.4f} ms",
                  f"  variance reduction {100 * s['variance_reduction']:.1f}%, Levene W={s['levene_W']}, "
                  f"p={s['levene_p']:.3g}; Welch p={s['welch_p']:.3g}; distinct routes: curiosity "
                  f"{s['routes_curiosity']}, uniform {s['routes_uniform']}"]
    return "\n".join(lines)
