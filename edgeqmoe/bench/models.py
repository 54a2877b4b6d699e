"""``edgeqmoe bench models``: every trained model side by side, per window.

For each bundle: the head's latency per window (one embedding at a time through the
torch-free runtime, the daemon's path; mean, std, p99 in ms), the memory its loading
adds (resident set, MB), the energy per inference with its method (the thread's CPU
time x the power model: ``modelled``; no hardware counter can be split per window),
and the bundle's size on disk (KB). Models take turns, round after round.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import numpy as np

from ..machine import machine_info
from ..stats import percentiles


def run_bench(bundles: List[str], n: int = 2000, rounds: int = 4, embeddings: Optional[np.ndarray] = None) -> Dict:
    import psutil

    from ..daemon.power import PowerMeter
    from ..model.moe import load_model

    power = PowerMeter("model")
    proc = psutil.Process()
    models = []
    for b in bundles:
        before = proc.memory_info().rss
        m = load_model(b)
        after = proc.memory_info().rss
        models.append((b, m, (after - before) / 2**20))
    rng = np.random.default_rng(0)
    rows = {b: {"lat": [], "cpu": []} for b, _, _ in models}
    for _ in range(rounds):
        for b, m, _ in models:
            X = embeddings if embeddings is not None and embeddings.shape[1] == m.in_features else \
                rng.standard_normal((n // rounds, m.in_features)).astype(np.float32)
            for x in X[: n // rounds]:
                x1 = x[None, :]
                c0, t0 = time.thread_time(), time.perf_counter()
                m.predict(x1)
                rows[b]["lat"].append((time.perf_counter() - t0) * 1e3)
                rows[b]["cpu"].append(time.thread_time() - c0)
    out = []
    for b, m, rss in models:
        lat = rows[b]["lat"]
        q = percentiles(lat, 4)
        cpu = float(np.mean(rows[b]["cpu"]))
        e = power.window_energy_mj(cpu)
        out.append({"bundle": b, "name": os.path.basename(os.path.dirname(b)) if os.path.basename(b) == "model.eqm"
                    else os.path.splitext(os.path.basename(b))[0], "model": m.kind, "experts": list(m.experts),
                    "n": len(lat), "mean_ms": q["mean"], "std_ms": q["std"], "p99_ms": q["p99"],
                    "rss_added_mb": round(rss, 2),
                    "energy_mj": round(e["energy_mj"], 5), "energy_method": e["energy_method"],
                    "size_kb": round(os.path.getsize(b) / 1024, 1)})
    return {"machine": machine_info({"threads": 1}), "power": power.describe(), "rows": out}


def format_markdown(res: Dict) -> str:
    from ..machine import describe

    lines = [f"Machine: {describe(res['machine'])}. Energy: {res['power']['method']} "
             f"({res['power'].get('model', {}).get('name', '')}, {res['power'].get('model', {}).get('watts_per_core', '')} "
             f"W per busy core, device class {res['power'].get('model', {}).get('device_class', '')}).", "",
             "| model | kind | head mean ms | std ms | p99 ms | RAM added MB | energy mJ/inference | size KB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {r['model']} {'/'.join(r['experts'])} | {r['mean_ms']:.4f} | {r['std_ms']:.4f} | "
                     f"{r['p99_ms']:.4f} | {r['rss_added_mb']:.1f} | {r['energy_mj']:.4f} ({r['energy_method']}) | "
                     f"{r['size_kb']:.0f} |")
    return "\n".join(lines)
