"""``edgeqmoe bench listening``: what listening costs beside what inference costs.

For each profile the daemon runs twice as a process of its own on the same real-time
source, once for ``short`` and once for ``long`` seconds; the process's CPU time
(user + system, from the kernel's accounting of the child) of the short run is taken
from the long one's, so start-up (imports, model load, warm-up) cancels and what is left
is the steady state: CPU per second of audio. Inference is what the window records say
the pipeline took (embed + head + decision per window; one thread, so wall time is its
CPU time), over the same seconds. Their ratio is the overhead of listening: the loop,
its threads, the source, the writer.

Sources: a file of target sounds replayed in real time (``--source file:``), or a
microphone (``mic`` / ``mic:NAME``), where a silent room makes every window quiet (no
inference at all).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np


def _run_daemon(profile: str, source: str, seconds: float, log_dir: str, env: Optional[Dict] = None) -> Dict:
    """One daemon process for ``seconds`` of audio; its CPU time and its window records."""
    from ..daemon.sinks import read_jsonl

    cmd = [sys.executable, "-m", "edgeqmoe.cli", "run", "--profile", profile, "--source", source,
           "--duration", f"{seconds:g}", "--log-dir", log_dir, "--quiet"]
    os.makedirs(log_dir, exist_ok=True)
    err_path = os.path.join(log_dir, "stderr.txt")
    t0 = time.monotonic()
    with open(err_path, "w") as err_f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_f, env={**os.environ, **(env or {})})
        _, status, rusage = os.wait4(proc.pid, 0)  # the child's own CPU accounting
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    with open(err_path) as f:
        err = f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"'edgeqmoe run --profile {profile} --source {source}' exited {proc.returncode}: "
                           f"{err.strip()}")
    path = os.path.join(log_dir, "windows.jsonl")
    windows = list(read_jsonl(path)) if os.path.exists(path) else []
    if not windows:
        raise RuntimeError(f"'edgeqmoe run --profile {profile} --source {source}' wrote no window: {err.strip()}")
    infer = [sum(w["stages_ms"].values()) for w in windows if w.get("d") != -2]
    quiet = sum(1 for w in windows if w.get("d") == -2)
    return {"cpu_s": rusage.ru_utime + rusage.ru_stime, "wall_s": wall, "windows": len(windows), "quiet": quiet,
            "inference_ms": float(np.sum(infer)) if infer else 0.0,
            "quiet_ms": float(np.sum([sum(w["stages_ms"].values()) for w in windows if w.get("d") == -2])),
            "rss_mb_max": rusage.ru_maxrss / 1024.0}


def measure(profile: str, source: str, short: float, long: float, env: Optional[Dict] = None) -> Dict:
    """Steady-state CPU per second of audio (long run minus short run) against the
    inference the long run's extra windows took."""
    with tempfile.TemporaryDirectory(prefix="edgeqmoe-bench-listening-") as tmp:
        a = _run_daemon(profile, source, short, os.path.join(tmp, "short"), env)
        b = _run_daemon(profile, source, long, os.path.join(tmp, "long"), env)
    span = long - short
    cpu_ms = (b["cpu_s"] - a["cpu_s"]) * 1e3 / span
    infer_ms = (b["inference_ms"] - a["inference_ms"]) / span
    level_ms = (b["quiet_ms"] - a["quiet_ms"]) / span
    return {"profile": profile, "source": source, "short_s": short, "long_s": long,
            "cpu_ms_per_s": round(cpu_ms, 3), "inference_ms_per_s": round(infer_ms, 3),
            "gate_ms_per_s": round(level_ms, 3),
            "ratio": round(cpu_ms / infer_ms, 2) if infer_ms > 0 else None,
            "windows": b["windows"] - a["windows"], "quiet_windows": b["quiet"] - a["quiet"],
            "cpu_share": round(cpu_ms / 1e3, 4), "rss_mb_max": round(b["rss_mb_max"], 1)}


def target_file(folder: str, seconds: float, out: str, sr: int = 16000) -> str:
    """A WAV of at least ``seconds`` of the audio files of ``folder`` one after another
    (cycling), for a real-time file source that outlasts the longest run."""
    import soundfile as sf

    from ..audio.datasets import AUDIO_EXT
    from ..audio.io import load

    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                   if os.path.splitext(f)[1].lower() in AUDIO_EXT)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXT)}) in {folder}")
    parts, n, i = [], 0, 0
    while n < (seconds + 5) * sr:
        x = load(files[i % len(files)], sr)
        parts.append(x)
        n, i = n + len(x), i + 1
        if i >= 10 * len(files) and n == 0:
            raise ValueError(f"the audio files of {folder} hold no samples")
    sf.write(out, np.concatenate(parts), sr, subtype="PCM_16")
    return out


def run_bench(profiles: List[str], source: str, short: float, long: float, env: Optional[Dict] = None) -> Dict:
    from ..machine import machine_info

    rows = [measure(p, source, short, long, env) for p in profiles]
    return {"machine": machine_info({"short_s": short, "long_s": long}), "rows": rows}


def format_table(result: Dict) -> str:
    from ..machine import describe

    r0 = result["rows"][0]
    lines = [f"machine: {describe(result['machine'])}",
             f"source: {r0['source']}; CPU = process user+sys of a {r0['long_s']:g} s run minus a "
             f"{r0['short_s']:g} s run, per second of audio; inference = embed+head+decision of those windows",
             "",
             f"{'profile':17} {'CPU ms/s':>9} {'inference ms/s':>15} {'CPU / inference':>16} {'windows':>8} "
             f"{'quiet':>6} {'share of a core':>16}"]
    for r in result["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['profile']:17} {r['cpu_ms_per_s']:9.2f} {r['inference_ms_per_s']:15.2f} {ratio:>16} "
                     f"{r['windows']:8d} {r['quiet_windows']:6d} {100 * r['cpu_share']:15.2f}%")
    return "\n".join(lines)
