"""``edgeqmoe bench latency``: per-window latency of each profile's pipeline, replayed
from audio files, and the stability of the stable profile against uniform routing.

For each profile: ``windows`` windows cut from the given clips (the profile's window
and hop, or ``--window``), each processed by the profile's pipeline exactly as the
daemon does (embedder, model, decision), one thread; per stage (embed, head,
decision, total): p50, p95, p99, max and standard deviation in milliseconds; resident
memory after the run and whether torch was imported.

Stability: the stable profile's bundle is run on the same embeddings three ways,
interleaved window by window: as the profile configures it (curiosity routing, every
expert evaluated: fixed work), with uniform routing (top-k experts drawn at random
per window, only those run: the paper's baseline) and with the router's plain top-k
(only the chosen experts run: data-dependent work). Levene's test (Brown-Forsythe) on
the head-latency samples gives each variance reduction and its p-value; Welch's
t-test compares the means.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from ..stats import compare_samples, percent, percentiles
from ..machine import apply_threads, machine_info


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


def bench_profile(name: str, paths: List[str], n: int, window: Optional[float] = None) -> Dict:
    import psutil

    from ..daemon.pipeline import Pipeline
    from ..daemon.profiles import load_profile

    p = load_profile(name)
    if window:  # another window length, each profile keeping its own hop as a share of its window
        p = load_profile(name, {"audio": {"window": window, "hop": window * p.audio.hop / p.audio.window}})
    pipe = Pipeline.from_profile(p)
    threads = apply_threads(p.runtime.threads)  # as the daemon does: its threads, BLAS included
    sr = p.audio.sample_rate
    warm = np.zeros(int(round(p.audio.window * sr)), np.float32)
    for _ in range(5):
        pipe.process(warm, 0.0, 0.0)
    gc.collect()
    gc.freeze()
    gc.disable()
    stages = {k: [] for k in ("embed", "head", "decision", "total")}
    cpu_ms, embs = [], []
    try:
        for w in _windows(paths, sr, p.audio.window, p.audio.hop, n):
            c0, t0 = time.thread_time(), time.perf_counter()
            rec, _ = pipe.process(w, 0.0, 0.0)
            total = (time.perf_counter() - t0) * 1e3
            cpu_ms.append((time.thread_time() - c0) * 1e3)
            for k in ("embed", "head", "decision"):
                stages[k].append(rec["stages_ms"][k])
            stages["total"].append(total)
            embs.append(pipe.embedder.embed(w, sr))  # for the routing comparison (untimed)
    finally:
        gc.enable()
    embs = np.stack(embs)
    # the daemon's own energy model for a window: its CPU time x watts per busy core of
    # this machine's class (daemon/power.py); modelled, never measured
    from ..daemon.power import POWER_MODEL_W_PER_CORE, detect_device_class

    cls = detect_device_class()
    w_core = POWER_MODEL_W_PER_CORE[cls]
    cpu = percentiles(cpu_ms)
    energy = {"cpu_ms": cpu, "energy_mj_p50": round(cpu["p50"] * w_core, 4),
              # listening for an hour: one window every hop, at the median window's energy
              "energy_j_per_hour": round(cpu["p50"] * w_core * 3600 / p.audio.hop / 1e3, 3),
              "energy_model": f"cpu-time x {w_core} W/core ({cls})"}
    return {"profile": p.name, "bundle": pipe.built.bundle, "fallback": bool(pipe.built.fallback),
            "embedder": pipe.embedder.info.id, "model": pipe.model.kind, "experts": list(pipe.model.experts),
            "window_s": p.audio.window, "hop_s": p.audio.hop, "n": len(embs),
            "stages_ms": {k: percentiles((v)) for k, v in stages.items()},
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "torch_imported": "torch" in sys.modules, "threads": threads, **energy, "_embeddings": embs,
            "_pipeline": pipe}


def routing_stability(pipe, embeddings: np.ndarray, repeats: int = 5) -> Optional[Dict]:
    """Head latency of the bundle as configured (curiosity, all experts) against the
    same experts with uniform routing and with the router's plain top-k (only the
    chosen experts run in both).

    ``repeats`` passes go over all windows, each window running once in each mode
    (interleaved), pass r on its own model instances with the same seed (so uniform
    routing draws the same experts for a window in every pass). A window's latency is
    its minimum over the passes: its work, with this shared machine's scheduling
    jitter (bursts that move fixed C work by 20% and more) filtered out, since a burst
    rarely hits the same window in every pass. The first pass alone, as the daemon
    would see it, is reported too."""
    from ..model.moe import MoEModel, load_model

    m = pipe.model
    if not isinstance(m, MoEModel):
        return None
    b = pipe.built.bundle
    models = {"curiosity": [m] + [load_model(b, kernel=m.variant, evaluate_all=m.evaluate_all)
                                  for _ in range(repeats - 1)],
              "uniform": [load_model(b, kernel=m.variant, routing="uniform", seed=0) for _ in range(repeats)],
              "router": [load_model(b, kernel=m.variant, routing="router") for _ in range(repeats)]}
    n = len(embeddings)
    lat = {k: np.zeros((repeats, n)) for k in models}
    for ms in models.values():  # first touch of every mapping and buffer, untimed
        for mi in ms:
            mi.predict(embeddings[:1])
    used = {k: [] for k in models}
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            for i, e in enumerate(embeddings):
                x = e[None, :]
                for name, ms in models.items():
                    t0 = time.perf_counter()
                    pred = ms[r].predict(x)
                    lat[name][r, i] = (time.perf_counter() - t0) * 1e3
                    if r == 0:
                        used[name].append(tuple(sorted(pred.experts[0].tolist())))
    finally:
        gc.enable()
    first = {k: v[0] for k, v in lat.items()}
    best = {k: v.min(axis=0) for k, v in lat.items()}
    out = {"bundle": b, "n_each": len(best["curiosity"]), "repeats": repeats, "experts": list(m.experts),
           "top_k": m.top_k}
    for name in models:
        out[f"{name}_ms"] = percentiles((best[name]))
        out[f"{name}_first_ms"] = percentiles((first[name]))
        out[f"routes_{name}"] = len(set(used[name]))
    for base in ("uniform", "router"):
        for which, lat in (("", best), ("_first", first)):
            cmp = compare_samples(lat[base], lat["curiosity"])
            key = ("" if base == "uniform" else "_vs_router") + which
            out.update({f"variance_reduction{key}": (None if cmp["variance_reduction"] is None
                                                             else round(cmp["variance_reduction"], 4)),
                        f"levene_W{key}": round(cmp["levene_W"], 3), f"levene_p{key}": cmp["levene_p"],
                        f"welch_p{key}": cmp["welch_p"]})
    return out


def _one_profile(name: str, paths: List[str], n: int, window: Optional[float], stability: bool):
    """One profile's row (and the stable routing comparison), as run_bench reports it."""
    r = bench_profile(name, paths, n, window)
    embs, pipe = r.pop("_embeddings"), r.pop("_pipeline")
    return r, (routing_stability(pipe, embs) if stability and r["profile"] == "stable" else None)


def run_bench(profiles: List[str], paths: List[str], n: int = 2000, window: Optional[float] = None) -> Dict:
    """Every profile in a process of its own (fresh, spawned), so that each one's
    resident memory and whether it imported torch are its own, as in the daemon."""
    rows, stability = [], None
    if len(profiles) == 1:
        row, stability = _one_profile(profiles[0], paths, n, window, True)
        rows.append(row)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        for name in profiles:
            with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
                row, stab = ex.submit(_one_profile, name, paths, n, window, stability is None).result()
            rows.append(row)
            stability = stability or stab
    return {"machine": machine_info(), "rows": rows, "stability": stability}


def format_table(res: Dict) -> str:
    from ..machine import describe

    lines = [f"machine: {describe(res['machine'])}", ""]
    for r in res["rows"]:
        lines.append(f"{r['profile']} ({r['model']} {'/'.join(r['experts'])}, {r['embedder']}, {r['window_s']:g} s "
                     f"windows every {r['hop_s']:g} s, n={r['n']}, threads {r['threads']}, RSS {r['rss_mb']} MB, torch imported: {r['torch_imported']}"
                     + (", FALLBACK bundle" if r["fallback"] else "") + ")")
        for k, s in r["stages_ms"].items():
            lines.append(f"  {k:9} p50 {s['p50']:8.3f}  p95 {s['p95']:8.3f}  p99 {s['p99']:8.3f}  max {s['max']:8.3f}"
                         f"  std {s['std']:7.3f} ms")
        lines.append(f"  energy    {r['energy_mj_p50']:.4f} mJ per window at the median CPU time "
                     f"({r['cpu_ms']['p50']:.3f} ms), {r['energy_j_per_hour']:.3f} J per hour of listening "
                     f"({3600 / r['hop_s']:.0f} windows), modelled: {r['energy_model']}")
    s = res.get("stability")
    if s:
        lines += ["", f"stable head latency ({'/'.join(s['experts'])}, top-{s['top_k']}), {s['n_each']} windows each, "
                      f"per window the minimum over {s['repeats']} passes (first pass alone in brackets):"]
        for name, what in (("curiosity", "curiosity, all experts (as configured)"),
                           ("uniform", "uniform routing (random top-k)"), ("router", "router's plain top-k")):
            q, f = s[f"{name}_ms"], s[f"{name}_first_ms"]
            lines.append(f"  {what:40} p50 {q['p50']:.4f} p99 {q['p99']:.4f} std {q['std']:.4f} ms "
                         f"[std {f['std']:.4f}], {s[f'routes_{name}']} distinct expert sets")
        for base, key in (("uniform routing", ""), ("the router's top-k", "_vs_router")):
            lines.append(f"  vs {base}: variance reduction {percent(s['variance_reduction' + key])}, Levene "
                         f"W={s['levene_W' + key]}, p={s['levene_p' + key]:.3g}; Welch p={s['welch_p' + key]:.3g} "
                         f"[first pass: {percent(s['variance_reduction' + key + '_first'])}, "
                         f"p={s['levene_p' + key + '_first']:.3g}]")
    return "\n".join(lines)
