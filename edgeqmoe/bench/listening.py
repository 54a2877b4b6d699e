"""``edgeqmoe bench listening``: what listening costs beside what inference costs.

For each profile the daemon runs as a process of its own on a real-time source. Once
it has classified its first windows and ``warm`` more seconds have passed (start-up,
imports and warm-up are behind it), the process's CPU time (user + system, all its
threads) is read (``thread_cpu_s``: the scheduler's nanoseconds of every thread), and again
``span`` seconds later: their difference over the span is the steady-state CPU per
second of audio. Inference is what the window records of the
same span say the pipeline took (embed + head + decision per window; one thread, so
wall time is its CPU time). Their ratio is the cost of listening beside inference: the
loop, its threads, the source, the writer.

Sources: a file of target sounds replayed in real time (``file:``), or a microphone
(``mic`` / ``mic:NAME``), where a silent room makes every window quiet (no inference).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np


def _windows(log_dir: str) -> List[Dict]:
    from ..daemon.sinks import read_jsonl

    path = os.path.join(log_dir, "windows.jsonl")
    return list(read_jsonl(path)) if os.path.exists(path) else []


def thread_cpu_s(pid: int) -> Dict[str, float]:
    """CPU seconds of a process by thread name (``comm``: the interpreter's own threads
    share its name; an audio library's, such as libpulse's ``threaded-ml``, have theirs):
    the scheduler's nanosecond accounting (/proc/PID/task/*/schedstat) where Linux has
    it, else the kernel's clock ticks for the whole process (psutil: 10 ms steps)."""
    out: Dict[str, float] = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended
            out[name] = out.get(name, 0.0) + ns / 1e9
    except OSError:
        pass
    if out:
        return out
    import psutil

    return {"process": sum(psutil.Process(pid).cpu_times()[:2])}


def measure(profile: str, source: str, warm: float = 5.0, span: float = 30.0, env: Optional[Dict] = None,
            timeout: float = 120.0) -> Dict:
    """One daemon, its CPU over ``span`` seconds of steady state against its inference."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="edgeqmoe-bench-listening-") as log_dir:
        cmd = [sys.executable, "-m", "edgeqmoe.cli", "run", "--profile", profile, "--source", source,
               "--log-dir", log_dir, "--quiet", "--realtime"]
        err_path = os.path.join(log_dir, "stderr.txt")
        with open(err_path, "w") as err_f:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_f, env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + timeout
            while len(_windows(log_dir)) < 1 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is not None or time.monotonic() >= deadline:
                raise RuntimeError(f"'edgeqmoe run --profile {profile} --source {source}' classified no window "
                                   f"in {timeout:g} s: {open(err_path).read().strip()}")
            time.sleep(warm)
            p = psutil.Process(proc.pid)
            own = open(f"/proc/{proc.pid}/comm").read().strip() if os.path.exists(f"/proc/{proc.pid}/comm") else ""
            c0, t0, w0 = thread_cpu_s(proc.pid), time.monotonic(), time.time()
            time.sleep(span)
            c1, t1, w1 = thread_cpu_s(proc.pid), time.monotonic(), time.time()
            rss = p.memory_info().rss / 2**20
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon ended during the measurement (is the source {source} longer than "
                                   f"{warm + span:g} s?): {open(err_path).read().strip()}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        # records are written in batches: those of the span are all there once it stopped
        ws = [w for w in _windows(log_dir) if w0 < w["t_wall"] <= w1]
    seconds = t1 - t0
    infer = [sum(w["stages_ms"].values()) for w in ws if w.get("d") != -2]
    gate = [sum(w["stages_ms"].values()) for w in ws if w.get("d") == -2]
    per_name = {k: (c1.get(k, 0.0) - c0.get(k, 0.0)) * 1e3 / seconds for k in c1}
    cpu_ms = sum(per_name.values())
    audio_io = sum(v for k, v in per_name.items() if own and k != own and k != "process")
    infer_ms = float(np.sum(infer)) / seconds if infer else 0.0
    return {"profile": profile, "source": source, "seconds": round(seconds, 2),
            "cpu_ms_per_s": round(cpu_ms, 3), "inference_ms_per_s": round(infer_ms, 3),
            "gate_ms_per_s": round(float(np.sum(gate)) / seconds if gate else 0.0, 3),
            "ratio": round(cpu_ms / infer_ms, 2) if infer_ms > 0 else None,
            "audio_library_ms_per_s": round(audio_io, 3),
            "ratio_without_audio_library": round((cpu_ms - audio_io) / infer_ms, 2) if infer_ms > 0 else None,
            "threads_ms_per_s": {k: round(v, 3) for k, v in sorted(per_name.items())},
            "windows": len(ws), "quiet_windows": len(gate), "cpu_share": round(cpu_ms / 1e3, 5),
            "rss_mb": round(rss, 1)}


def target_file(folder: str, seconds: float, out: str, sr: int = 16000) -> str:
    """A WAV of at least ``seconds`` of the audio files of ``folder`` one after another
    (cycling), for a real-time file source that outlasts the measurement."""
    import soundfile as sf

    from ..audio.datasets import AUDIO_EXT
    from ..audio.io import AudioReadError, load

    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                   if os.path.splitext(f)[1].lower() in AUDIO_EXT)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXT)}) in {folder}")
    parts, n = [], 0
    for i in range(100 * len(files)):
        if n >= (seconds + 5) * sr:
            break
        try:
            x = load(files[i % len(files)], sr)
        except AudioReadError:
            continue
        parts.append(x)
        n += len(x)
    if n < (seconds + 5) * sr:
        raise ValueError(f"the audio files of {folder} hold too little readable audio")
    sf.write(out, np.concatenate(parts), sr, subtype="PCM_16")
    return out


def run_bench(profiles: List[str], source: str, warm: float, span: float, env: Optional[Dict] = None) -> Dict:
    from ..machine import machine_info

    rows = [measure(p, source, warm, span, env) for p in profiles]
    return {"machine": machine_info({"warm_s": warm, "span_s": span}), "rows": rows}


def format_table(result: Dict) -> str:
    from ..machine import describe

    r0 = result["rows"][0]
    lines = [f"machine: {describe(result['machine'])}",
             f"source: {r0['source']}; CPU = the daemon's user+sys over {r0['seconds']:g} s of steady state, per "
             "second of audio; inference = embed+head+decision of the windows of that span",
             "",
             f"{'profile':17} {'CPU ms/s':>9} {'audio lib':>9} {'inference ms/s':>15} {'CPU / inference':>16} "
             f"{'w/o audio lib':>14} {'windows':>8} {'quiet':>6} {'share of a core':>16} {'RSS MB':>7}"]
    for r in result["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        ratio2 = "-" if r["ratio_without_audio_library"] is None else f"{r['ratio_without_audio_library']:.2f}"
        lines.append(f"{r['profile']:17} {r['cpu_ms_per_s']:9.2f} {r['audio_library_ms_per_s']:9.2f} "
                     f"{r['inference_ms_per_s']:15.2f} {ratio:>16} {ratio2:>14} {r['windows']:8d} "
                     f"{r['quiet_windows']:6d} {100 * r['cpu_share']:15.2f}% {r['rss_mb']:7.1f}")
    lines.append("audio lib: threads of the audio library (PortAudio's ALSA plugins, libpulse), not the daemon's own")
    return "\n".join(lines)
