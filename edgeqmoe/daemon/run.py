"""``edgeqmoe run``: the long-running daemon.

Threads: the audio source (sounddevice callback or file reader) writes into the ring
buffer; this module's loop (the one inference thread) reads the ring, cuts windows,
runs the pipeline and hands records to the writer thread, which owns the files.

Each window record: ``t_wall`` (Unix seconds at the end of processing), ``t_mono``
(monotonic seconds), ``start_s``/``end_s`` (position in the audio stream),
``capture_lag_ms`` (how far behind live audio the window's end was when processed),
``stages_ms`` (embed, head, decision, total), ``deadline_miss`` (processing took longer
than the hop), top-1 ``class``/``score``, ``topk``, ``uncertainty``, ``experts``,
``decision``, and the modelled energy of the window.

Robustness: no audio for ``watchdog.silence_timeout`` (or exact zeros for
``flat_timeout``, or a stream that stopped) is logged and the device reopened with
backoff, forever; the daemon keeps running while the microphone is unplugged.
SIGHUP, or a change of the profile file, reloads the profile between windows; an
invalid edit keeps the running settings and logs why. SIGINT/SIGTERM finish the
current window, flush every file and exit 0.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..audio.windowing import Windower
from ..settings import SettingsError
from .pipeline import Pipeline, PipelineError
from .power import PowerMeter, temperature_c
from .profiles import Profile, ProfileError, load_profile
from .sinks import LogWriter
from .sources import FileSource, MicSource, RingBuffer, SourceError, parse_source

STAGES = ("embed", "head", "decision", "total")
#: Keys of a window record (docs/logs.md): class/decision/topk/experts are indices
#: into the start record's "classes" and "experts".
WINDOW_SCHEMA = {"v": 1, "fields": {"t_wall": "Unix s", "t_mono": "monotonic s", "capture_lag_ms": "ms",
                                     "stages_ms": "embed/head/decision ms", "class": "top-1 class index",
                                     "score": "top-1 probability", "k": "[class index, probability] after the top-1",
                                     "d": "decided class index, -1 abstain, absent: none",
                                     "u": "router uncertainty (nats), MoE", "x": "expert indices used, MoE",
                                     "deadline_miss": "present when slower than the hop",
                                     "mj": "energy of the window, mJ"},
                 "energy_method": "modelled"}


class Daemon:
    def __init__(self, profile: Profile, source: Optional[str] = None, duration: Optional[float] = None,
                 log_dir: Optional[str] = None, realtime: Optional[bool] = None, echo: Callable = None,
                 source_factory: Optional[Callable] = None):
        self.profile = profile
        self.source_spec = source or profile.audio.source
        self.duration = duration
        self.log_dir = log_dir or profile.logging.dir
        self.realtime = profile.audio.realtime if realtime is None else realtime
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.source_factory = source_factory or self._make_source
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.exit_code = 0
        self.windows = 0
        self._parsed_source = None

    # ------------------------------------------------------------------ setup
    def _make_source(self, ring: RingBuffer):
        a = self.profile.audio
        kind, arg = self._parsed_source or parse_source(self.source_spec)
        block = max(1, int(round(a.block * a.sample_rate)))
        if kind == "mic":
            return MicSource(ring, a.sample_rate, a.channels, block, arg)
        return FileSource(ring, arg, a.sample_rate, block, self.realtime)

    def log(self, event: str, **fields) -> None:
        rec = {"type": "daemon", "event": event, "t_wall": round(time.time(), 3), "t_mono": round(time.monotonic(), 3)}
        rec.update(fields)
        self.writer.put("daemon", rec)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        p = self.profile
        # a mistyped source fails first: before the model is built or a log file made
        self._parsed_source = parse_source(self.source_spec) if self.source_factory == self._make_source else None
        self.pipeline = Pipeline.from_profile(p)  # raises PipelineError before any file is touched
        self.writer = LogWriter(self.log_dir, p.logging.flush_interval, p.logging.rotate_bytes, p.logging.rotate_age,
                                p.logging.retention, p.logging.compress)
        try:
            return self._run()
        finally:
            self.writer.close()

    def _open(self, ring: RingBuffer):
        src = self.source_factory(ring)
        src.start()
        return src

    def _run(self) -> int:
        p = self.profile
        pipe = self.pipeline
        power = PowerMeter(p.power.method, p.power.device_class, p.power.grid_intensity)
        if p.runtime.cpu_affinity and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, set(p.runtime.cpu_affinity))
            except OSError as e:
                self.echo(f"edgeqmoe: cannot pin to cores {list(p.runtime.cpu_affinity)}: {e}")
        self._install_signals()
        sr = p.audio.sample_rate
        win_n, hop_n = int(round(p.audio.window * sr)), int(round(p.audio.hop * sr))
        ring = RingBuffer(int(p.audio.ring * sr))
        windower = Windower(win_n, hop_n)
        chunk = np.zeros(max(hop_n, int(0.1 * sr)), np.float32)
        self.log("start", profile=p.name, profile_file=p.source_file, source=self.source_spec,
                 classes=pipe.classes, window_schema=WINDOW_SCHEMA,
                 bundle=pipe.built.bundle, embedder=pipe.embedder.info.as_dict(), model=pipe.model.kind,
                 experts=list(pipe.model.experts), kernel=getattr(pipe.model, "variant", None) or p.model.kernel,
                 window_s=p.audio.window, hop_s=p.audio.hop, sample_rate=sr, pid=os.getpid(),
                 power=power.describe(), realtime=self.realtime)
        if pipe.built.fallback:
            self.echo(f"edgeqmoe: {pipe.built.fallback}")
            self.log("fallback", message=pipe.built.fallback)
        # warm up (first calls allocate, compile and fault pages) before audio flows
        warm = np.zeros(win_n, np.float32)
        for _ in range(3):
            pipe.embedder.embed(warm, sr)
            pipe.model.predict(np.zeros((1, pipe.model.in_features), np.float32))
        src = None
        backoff_i, next_try = 0, 0.0
        # at start a missing or unknown device is bad input (exit 2; a service manager
        # restarts us); a device lost later is reopened with backoff, forever
        try:
            src = self._open(ring)
        except SourceError as e:
            self.log("source_error", message=str(e))
            raise
        self.log("source_open", source=self.source_spec, kind=src.kind)
        stats = _Stats()
        last_stats = time.monotonic()
        last_audio = time.monotonic()
        last_nonzero = time.monotonic()
        prof_mtime = _mtime(p.source_file)
        warmed = False
        gc_was = gc.isenabled()
        audio_pos = 0  # samples consumed since the stream (re)started
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                # ---------------------------------------------- watchdog / reopen
                if src is None:
                    if now >= next_try:
                        try:
                            ring.reset()
                            windower.reset()
                            pipe.decider.reset()
                            audio_pos = 0
                            src = self._open(ring)
                            self.log("source_open", source=self.source_spec, kind=src.kind, after_retries=backoff_i)
                            self.echo(f"edgeqmoe: input {self.source_spec} open again")
                            backoff_i = 0
                            last_audio = last_nonzero = time.monotonic()
                        except SourceError as e:
                            wait = p.watchdog.backoff[min(backoff_i, len(p.watchdog.backoff) - 1)]
                            backoff_i += 1
                            next_try = now + wait
                            self.log("source_error", message=str(e), retry_in_s=wait)
                    else:
                        self._stop.wait(0.05)
                    continue
                n = ring.read(chunk)
                if n:
                    last_audio = now
                    block = chunk[:n]
                    if np.any(block):
                        last_nonzero = now
                    for start, window in windower.feed(block):
                        t0 = time.perf_counter()
                        cpu0 = _cpu()
                        rec = pipe.process(window, start / sr, (start + win_n) / sr)
                        total_ms = (time.perf_counter() - t0) * 1e3
                        # behind live audio: what was captured after this window's end, plus the
                        # callback's own delay; meaningless when files are read ahead (--fast)
                        live = src.kind == "mic" or self.realtime
                        lag = (ring.written - (start + win_n)) / sr + ring.callback_lag if live else 0.0
                        rec.update({"t_wall": round(time.time(), 2), "t_mono": round(time.monotonic(), 3),
                                    "capture_lag_ms": round(lag * 1e3, 1) if live else None})
                        if total_ms > p.audio.hop * 1e3:
                            rec["deadline_miss"] = True
                        rec["mj"] = round(power.window_energy_mj(_cpu() - cpu0)["energy_mj"], 2)
                        rec["v"] = 1
                        stats.add(rec, lag, total_ms)
                        ev = rec.pop("_event", None)
                        self.writer.put("windows", rec)
                        if ev is not None:
                            self.writer.put("events", _event_record(ev))
                        self.windows += 1
                        if not warmed:
                            warmed = True
                            if p.runtime.freeze_gc:
                                gc.collect()
                                gc.freeze()
                                gc.disable()
                    audio_pos += n
                    if self.duration is not None and audio_pos >= self.duration * sr:
                        break
                    continue
                # no audio waiting
                finished = getattr(src, "finished", False)
                if finished and ring.available == 0:
                    for e in getattr(src, "errors", []):
                        self.log("source_error", message=e)
                    break
                lost = None
                if src.kind == "mic":
                    if not src.active:
                        lost = "the input stream stopped"
                    elif now - last_audio > p.watchdog.silence_timeout:
                        lost = f"no audio for {now - last_audio:.1f} s"
                    elif now - last_nonzero > p.watchdog.flat_timeout:
                        lost = f"only zeros for {now - last_nonzero:.1f} s"
                if lost:
                    self.log("source_lost", reason=lost, callbacks=getattr(src, "callbacks", None))
                    self.echo(f"edgeqmoe: input {self.source_spec} lost ({lost}); reopening")
                    src.stop()
                    ev = pipe.decider.flush()
                    if ev is not None:
                        self.writer.put("events", _event_record(ev))
                    src = None
                    next_try = time.monotonic() + p.watchdog.backoff[0]
                    backoff_i = 1
                    continue
                # periodic work happens only while waiting for audio: never mid-window
                if now - last_stats >= p.logging.stats_interval:
                    self._write_stats(stats, ring, power, now - last_stats)
                    stats = _Stats()
                    last_stats = now
                    if p.runtime.freeze_gc and warmed:
                        gc.collect(0)
                    m = _mtime(p.source_file)
                    if m != prof_mtime:
                        prof_mtime = m
                        self._reload.set()
                if self._reload.is_set():
                    self._reload.clear()
                    new = self._try_reload()
                    if new is not None:
                        p, pipe, windower, win_n, hop_n = new
                        chunk = np.zeros(max(hop_n, int(0.1 * sr)), np.float32)
                self._stop.wait(min(0.01, p.audio.block / 2))
        finally:
            if src is not None:
                src.stop()
            ev = pipe.decider.flush()
            if ev is not None:
                self.writer.put("events", _event_record(ev))
            if stats.n:
                self._write_stats(stats, ring, power, time.monotonic() - last_stats)
            self.log("stop", windows=self.windows, dropped_samples=ring.dropped,
                     reason="signal" if self._stop.is_set() else "end of input")
            if gc_was:
                gc.enable()
        return 0

    def _try_reload(self):
        p = self.profile
        try:
            new = load_profile(p.source_file)
            changed_audio = (new.audio.sample_rate, new.audio.channels, new.audio.source) != \
                            (p.audio.sample_rate, p.audio.channels, p.audio.source)
            if changed_audio:
                raise ProfileError("audio.sample_rate, audio.channels and audio.source cannot change while "
                                   "running; restart the daemon for those")
            pipe = Pipeline.from_profile(new) if (new.model != p.model or new.runtime.threads != p.runtime.threads) \
                else self.pipeline
            if pipe is self.pipeline:
                from .pipeline import Decider

                pipe.decider = Decider(pipe.classes, new.decision)
        except (SettingsError, ProfileError, PipelineError) as e:
            self.log("reload_rejected", message=str(e))
            self.echo(f"edgeqmoe: profile edit rejected, still running the previous settings: {e}")
            return None
        sr = new.audio.sample_rate
        win_n, hop_n = int(round(new.audio.window * sr)), int(round(new.audio.hop * sr))
        windower = Windower(win_n, hop_n)
        self.profile, self.pipeline = new, pipe
        self.log("reload", profile=new.name, bundle=pipe.built.bundle, window_s=new.audio.window, hop_s=new.audio.hop)
        return new, pipe, windower, win_n, hop_n

    def _write_stats(self, st: "_Stats", ring: RingBuffer, power: PowerMeter, interval: float) -> None:
        import psutil

        proc = psutil.Process()
        rec = {"type": "stats", "t_wall": round(time.time(), 3), "t_mono": round(time.monotonic(), 3),
               "interval_s": round(interval, 3), "windows": st.n, "deadline_misses": st.misses,
               "dropped_samples_total": ring.dropped, "capture_lag_ms_max": round(st.lag_max * 1e3, 3),
               "clock_jump_s": round(st.clock_jump(), 4), "rss_mb": round(proc.memory_info().rss / 2**20, 2),
               "temperature_c": temperature_c(), "stages_ms": st.percentiles()}
        rec.update(power.interval())
        if st.energy:
            mj = float(np.mean(st.energy))
            rec["energy_mj_per_inference"] = round(mj, 3)
            rec["co2_ug_per_inference"] = round(mj / 1e3 / 3.6e6 * power.grid * 1e6, 5)  # mJ -> kWh x g/kWh
        self.writer.put("stats", rec)
        _write_prometheus(Path(self.log_dir) / "edgeqmoe.prom", rec, self.windows)


class _Stats:
    def __init__(self):
        self.n = 0
        self.misses = 0
        self.lag_max = 0.0
        self.stage: Dict[str, List[float]] = {k: [] for k in STAGES}
        self.wall_mono: List[float] = []
        self.energy: List[float] = []

    def add(self, rec: Dict, lag: float, total_ms: float) -> None:  # noqa: D401
        self.n += 1
        self.misses += int(rec.get("deadline_miss", False))
        self.lag_max = max(self.lag_max, lag)
        for k in STAGES[:-1]:
            self.stage[k].append(rec["stages_ms"][k])
        self.stage["total"].append(total_ms)
        if rec.get("mj") is not None:
            self.energy.append(rec["mj"])
        self.wall_mono.append(rec["t_wall"] - rec["t_mono"])

    def clock_jump(self) -> float:
        return (max(self.wall_mono) - min(self.wall_mono)) if self.wall_mono else 0.0

    def percentiles(self) -> Dict:
        out = {}
        for k, v in self.stage.items():
            if v:
                a = np.asarray(v)
                out[k] = {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
                          "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3),
                          "std": round(float(a.std()), 3)}
        return out


def _event_record(ev: Dict) -> Dict:
    return {"type": "event", "class": ev["class"], "start_s": round(ev["start"], 3), "end_s": round(ev["end"], 3),
            "windows": ev["windows"], "peak": round(ev["peak"], 5), "t_wall": round(time.time(), 3)}


def _cpu() -> float:
    """CPU seconds of this (the inference) thread, nanosecond resolution."""
    return time.thread_time()


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _write_prometheus(path: Path, rec: Dict, windows_total: int) -> None:
    """node_exporter textfile-collector format, replaced atomically."""
    lines = ["# HELP edgeqmoe_windows_total Windows classified since start.",
             "# TYPE edgeqmoe_windows_total counter", f"edgeqmoe_windows_total {windows_total}",
             "# HELP edgeqmoe_deadline_misses Windows slower than the hop in the last interval.",
             "# TYPE edgeqmoe_deadline_misses gauge", f"edgeqmoe_deadline_misses {rec['deadline_misses']}",
             "# HELP edgeqmoe_dropped_samples_total Audio samples that did not fit the ring buffer.",
             "# TYPE edgeqmoe_dropped_samples_total counter",
             f"edgeqmoe_dropped_samples_total {rec['dropped_samples_total']}",
             "# HELP edgeqmoe_capture_lag_seconds Largest capture lag in the last interval.",
             "# TYPE edgeqmoe_capture_lag_seconds gauge", f"edgeqmoe_capture_lag_seconds {rec['capture_lag_ms_max'] / 1e3}",
             "# HELP edgeqmoe_rss_bytes Resident memory.", "# TYPE edgeqmoe_rss_bytes gauge",
             f"edgeqmoe_rss_bytes {int(rec['rss_mb'] * 2**20)}",
             "# HELP edgeqmoe_stage_seconds Per-window stage latency quantiles over the last interval.",
             "# TYPE edgeqmoe_stage_seconds gauge"]
    for stage, q in rec["stages_ms"].items():
        for name, v in q.items():
            if name.startswith("p"):
                lines.append(f'edgeqmoe_stage_seconds{{stage="{stage}",quantile="0.{name[1:]}"}} {v / 1e3}')
    if rec.get("power_w") is not None:
        lines += ["# HELP edgeqmoe_power_watts Average power over the last interval.",
                  "# TYPE edgeqmoe_power_watts gauge",
                  f'edgeqmoe_power_watts{{method="{rec.get("power_method")}"}} {rec["power_w"]}']
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
