"""``edgeqmoe run``: the long-running daemon.

Threads: the audio source (sounddevice callback or file reader) writes into the ring
buffer; this module's loop (the one inference thread) reads the ring, cuts windows,
runs the pipeline and hands records to the writer thread, which owns the files.

Each window record (docs/logs.md): ``t_wall`` (Unix seconds at the end of processing),
``capture_lag_ms`` (how far behind live audio the window's end was when processed),
``stages_ms`` (embed, head, decision), ``lv`` (RMS and peak level), ``deadline_miss``
(processing took longer than the hop), top-1 ``class``/``score``, the top-k, the
router's uncertainty and experts, the decision (a class, abstain, quiet, other), and
the modelled energy of the window.

Robustness: no audio for ``watchdog.silence_timeout`` (or exact zeros for
``flat_timeout``, or a stream that stopped) is logged and the device reopened with
backoff, forever; the daemon keeps running while the microphone is unplugged.
SIGHUP, or a change of the profile file, reloads the profile between windows; an
invalid edit keeps the running settings and logs why. SIGINT/SIGTERM finish the
current window, flush every file and exit 0.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..audio.windowing import Windower
from ..machine import apply_threads
from ..settings import SettingsError
from .pipeline import Pipeline, PipelineError
from .records import QUIET, WINDOW_SCHEMA, EventFanout
from .power import PowerMeter, temperature_c
from .profiles import Profile, ProfileError, load_profile
from ..stats import STAGES, co2_ug, percentiles
from .metrics import start as start_metrics, write_textfile
from .notify import Notifier
from .clips import ClipKeeper
from .mqtt import MqttLink
from .sinks import LogWriter, encode
from .sources import FileSource, MicSource, RingBuffer, SourceError, Wakeup, parse_source

class StopFlag:
    """A stop flag a sleeping loop wakes on: ``set`` from a signal handler or another
    thread, ``wait(t)`` sleeps up to ``t`` s or until it is set. One lock held until the
    stop (a ``threading.Event``'s wait costs about twice the CPU of a plain sleep, measured:
    150 against 90 us per wakeup here), so an idle daemon's wakeups cost what a sleep does."""

    def __init__(self):
        self._set = False
        self._gate = threading.Lock()
        self._gate.acquire()
        self._also: List[Callable[[], None]] = []  # other sleepers to wake (the window loop's Wakeup)

    def on_set(self, wake: Callable[[], None]) -> None:
        self._also.append(wake)
        if self._set:
            wake()

    def set(self) -> None:
        if not self._set:
            self._set = True
            try:
                self._gate.release()
            except RuntimeError:  # two setters at once: the gate is open already
                pass
            for wake in self._also:
                wake()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: Optional[float] = None) -> bool:
        if not self._set and self._gate.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._gate.release()  # open for every later wait too
        return self._set


class Signals:
    """SIGINT/SIGTERM (stop) and SIGHUP (reload) as events. Installed as early as the
    command line can (before the profile and model load), so a SIGHUP that arrives
    while the daemon starts is kept for later instead of killing it."""

    def __init__(self):
        self.stop = StopFlag()
        self.reload = threading.Event()

    def install(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda *_: self.stop.set())
            signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, lambda *_: self.reload.set())
        return self


class Supervisor:
    """Owns the audio source: opens it, watches it (no audio, only zeros, a stream
    that stopped) and reopens it with backoff, forever."""

    def __init__(self, daemon: "Daemon", ring: RingBuffer):
        self.d, self.ring = daemon, ring
        self.src = None
        self.backoff_i = 0
        self.next_try = 0.0
        self.last_audio = self.last_nonzero = time.monotonic()

    def open_first(self) -> None:
        """At start a missing or unknown device is bad input (exit 2; a service manager
        restarts us); a device lost later is reopened with backoff."""
        try:
            self.src = self.d.source_factory(self.ring)
            self.src.start()
        except SourceError as e:
            self.d.log("source_error", message=str(e))
            raise
        self.d.log("source_open", source=self.d.source_spec, kind=self.src.kind)
        self.d.say_listening(self.src)
        self.last_audio = self.last_nonzero = time.monotonic()

    def try_reopen(self, now: float) -> bool:
        """One attempt when its time has come; True when the source is open again."""
        if now < self.next_try:
            return False
        try:
            self.ring.reset()
            src = self.d.source_factory(self.ring)
            src.start()
        except SourceError as e:
            backoff = self.d.profile.watchdog.backoff
            wait = backoff[min(self.backoff_i, len(backoff) - 1)]
            self.backoff_i += 1
            self.next_try = now + wait
            self.d.log("source_error", message=str(e), retry_in_s=wait)
            return False
        self.src = src
        self.d.log("source_open", source=self.d.source_spec, kind=src.kind, after_retries=self.backoff_i)
        self.d.say_listening(src)
        self.d.echo(f"edgeqmoe: input {self.d.source_spec} open again")
        self.backoff_i = 0
        self.last_audio = self.last_nonzero = time.monotonic()
        return True

    def heard(self, block: np.ndarray, now: float) -> None:
        self.last_audio = now
        if np.any(block):
            self.last_nonzero = now

    def lost(self, now: float) -> Optional[str]:
        """Why a microphone counts as gone, or None."""
        if self.src is None or self.src.kind != "mic":
            return None
        w = self.d.profile.watchdog
        if not self.src.active:
            return "the input stream stopped"
        if now - self.last_audio > w.silence_timeout:
            return f"no audio for {now - self.last_audio:.1f} s"
        if now - self.last_nonzero > w.flat_timeout:
            return f"only zeros for {now - self.last_nonzero:.1f} s"
        return None

    def close(self, reason: str) -> None:
        self.d.log("source_lost", reason=reason, callbacks=getattr(self.src, "callbacks", None))
        self.d.echo(f"edgeqmoe: input {self.d.source_spec} lost ({reason}); reopening")
        self.stop()
        backoff = self.d.profile.watchdog.backoff
        self.next_try = time.monotonic() + backoff[0]
        self.backoff_i = 1

    def stop(self) -> None:
        if self.src is not None:
            self.src.stop()
            self.src = None


class LoopState:
    """What the window loop carries from one window to the next."""

    def __init__(self, profile: Profile):
        sr = profile.audio.sample_rate
        self.sr = sr
        self.wakeup = Wakeup()  # the idle loop sleeps on it: the ring wakes it, and so does a stop
        self.ring = RingBuffer(int(profile.audio.ring * sr), self.wakeup)
        self.set_window(profile)
        self.stats = _Stats()
        self.last_stats = self.last_file_check = time.monotonic()
        # the file's time when the profile was read, not now: an edit made since (while the
        # daemon was starting) is still seen as one
        self.prof_mtime = profile.source_mtime or _mtime(profile.source_file)
        self.audio_pos = 0  # samples consumed since the start (across reopens of the source)
        self.warmed = False
        self.file_i, self.file_start = -1, 0  # file sources: the file being read, its first sample
        self.level = _Level()  # window levels between two MQTT level messages
        self.started = time.monotonic()  # when the loop began (--duration of a microphone)
        self.reason = ""  # why the loop ended (the stop record's reason)

    def set_window(self, profile: Profile) -> None:
        """The profile's window and hop; on a reload that changes them the windows go on
        from the same sample (``Windower.resized``): none lost, none repeated."""
        sr = self.sr
        win_n, hop_n = int(round(profile.audio.window * sr)), int(round(profile.audio.hop * sr))
        old = getattr(self, "windower", None)
        if old is not None and (win_n, hop_n) == (self.win_n, self.hop_n):
            return
        self.win_n, self.hop_n = win_n, hop_n
        self.windower = old.resized(win_n, hop_n) if old is not None else Windower(win_n, hop_n)
        self.chunk = np.zeros(max(self.hop_n, int(0.1 * sr)), np.float32)


#: how often the profile file is looked at for changes (s; an idle loop that sleeps a whole
#: hop longer than this looks at it when it wakes)
PROFILE_CHECK_S = 1.0
#: the shortest and the longest sleep of an idle window loop (s)
MIN_IDLE_S, MAX_IDLE_S = 0.002, 1.0


class Daemon:
    def __init__(self, profile: Profile, source: Optional[str] = None, duration: Optional[float] = None,
                 log_dir: Optional[str] = None, realtime: Optional[bool] = None, echo: Callable = None,
                 source_factory: Optional[Callable] = None, signals: Optional[Signals] = None,
                 quiet: bool = False, json_out: Optional[Callable[[bytes], None]] = None,
                 device: Optional[str] = None):
        self.profile = profile
        self.source_spec = source or profile.audio.source
        self.duration = duration
        self.log_dir = log_dir or profile.logging.dir
        self.realtime = profile.audio.realtime if realtime is None else realtime
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.source_factory = source_factory or self._make_source
        self.signals = signals or Signals()
        self._stop, self._reload = self.signals.stop, self.signals.reload
        self.device = device or profile.device_name  # names every record, topic and entity (fleets)
        self.metrics = None  # the optional HTTP endpoint (metrics.http_port)
        self.mqtt = None  # the optional MQTT link (mqtt.host)
        self.clips = None  # the optional event clips (clips.enabled)
        self.notifier = Notifier()  # systemd: READY, watchdog pings, STOPPING (nothing outside systemd)
        self.quiet = quiet  # no start line, no event lines (problems are still said)
        self.json_out = json_out  # each window record, as a JSON line, also here (stdout for pipes)
        self.windows = 0
        self.misses_total = 0  # windows slower than the hop since start
        self._parsed_source = None
        self._file: Optional[tuple] = None  # file sources: (name, stream second where it starts)
        self.events: Optional[EventFanout] = None  # where events go out (made once the sinks are open)
        self._unchanged_said = False  # a reload that changed nothing was said (once until a change)

    # ------------------------------------------------------------------ setup
    def _make_source(self, ring: RingBuffer):
        a = self.profile.audio
        kind, arg = self._parsed_source or parse_source(self.source_spec)
        block = max(1, int(round(a.block_s * a.sample_rate)))
        if kind == "mic":
            return MicSource(ring, a.sample_rate, a.channels, block, arg)
        return FileSource(ring, arg, a.sample_rate, block, self.realtime)

    def log(self, event: str, **fields) -> None:
        rec = {"type": "daemon", "event": event, "t_wall": round(time.time(), 3), "t_mono": round(time.monotonic(), 3),
               "device": self.device}
        rec.update(fields)
        self.writer.put("daemon", rec)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        p = self.profile
        self.signals.install()
        # a mistyped source fails first: before the model is built or a log file made
        self._parsed_source = parse_source(self.source_spec) if self.source_factory == self._make_source else None
        converted = []
        self.pipeline = Pipeline.from_profile(p, say=converted.append)  # PipelineError before any file is touched
        self.threads = apply_threads(p.runtime.threads)  # BLAS and OpenMP too, not only torch
        self.writer = LogWriter(self.log_dir, p.logging.flush_interval, p.logging.rotate_bytes, p.logging.rotate_age,
                                p.logging.retention, p.logging.compress, warn=self.echo)
        for msg in converted:
            self.echo(f"edgeqmoe: {msg}")
            self.log("embedder_converted", message=msg)
        try:
            self.metrics = start_metrics(p.metrics)
            if p.clips.enabled:
                self.clips = ClipKeeper(p.clips, self.log_dir, p.audio.sample_rate, self.log, self.echo,
                                        emit=lambda ev, clip: self.events.emit(ev, clip))
            if p.mqtt.host:
                self.mqtt = MqttLink(p.mqtt, self.device, p.name, self._reported_classes(), self.log,
                                     self.echo).start()
            self.events = EventFanout(self.writer, self.metrics, self.mqtt, self.clips, self.echo, self.device,
                                      p.name, self.log_dir, self.quiet)
            return self._run()
        finally:
            for part in (self.clips, self.events, self.mqtt, self.metrics):  # clips first: their records go out
                if part is not None:
                    part.close()
            self.writer.close()

    def _run(self) -> int:
        st = self._begin()
        sup = Supervisor(self, st.ring)
        sup.open_first()
        self.notifier.ready(f"{self.profile.name}: listening to {self.source_spec}")
        gc_was = gc.isenabled()
        st.reason = "end of input"
        try:
            self._loop(st, sup)
        finally:
            self.notifier.stopping()
            sup.stop()
            self._flush_event()
            if st.stats.n:
                self._write_stats(st.stats, st.ring, time.monotonic() - st.last_stats)
            self.log("stop", windows=self.windows, dropped_samples=st.ring.dropped, reason=st.reason,
                     dropped_log_lines=self.writer.dropped_total)
            if gc_was:
                gc.enable()
        return 0

    def _begin(self) -> LoopState:
        """Power meter, CPU pinning, the start record, warm-up: all before audio flows."""
        p = self.profile
        self.power = PowerMeter(p.power.method, p.power.device_class, p.power.grid_intensity)
        if p.runtime.cpu_affinity and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, set(p.runtime.cpu_affinity))
            except OSError as e:
                self.echo(f"edgeqmoe: cannot pin to cores {list(p.runtime.cpu_affinity)}: {e}")
        st = LoopState(p)
        self._stop.on_set(st.wakeup.wake)
        self.log("start", profile=p.name, profile_file=p.source_file, source=self.source_spec,
                 metrics_url=self.metrics.url if self.metrics else None,
                 mqtt=self.mqtt.target if self.mqtt else None,
                 clips=({"dir": p.clips.dir, "privacy": p.clips.privacy} if self.clips else None),
                 window_schema=WINDOW_SCHEMA, window_s=p.audio.window, hop_s=p.audio.hop,
                 sample_rate=st.sr, pid=os.getpid(), power=self.power.describe(), realtime=self.realtime,
                 threads=self.threads,
                 **self._model_fields())
        if self.pipeline.built.fallback:
            self.echo(f"edgeqmoe: {self.pipeline.built.fallback}")
            self.log("fallback", message=self.pipeline.built.fallback)
        self._check_window()
        if self.pipeline.listen_unavailable:
            self.echo(f"edgeqmoe: {self.pipeline.listen_unavailable}")
        self._warm_up(st)
        return st

    def _loop(self, st: LoopState, sup: Supervisor) -> None:
        """Windows until a signal, the end of the input or the duration; ``st.reason`` says which."""
        while not self._stop.is_set():
            now = time.monotonic()
            self.notifier.ping(now)  # only a loop that goes round pings: a hung one gets restarted
            self._housekeeping(st, now)
            if sup.src is None:
                if sup.try_reopen(now):
                    self._restart_stream(st)
                else:  # until the next attempt (its backoff), the stats or a watchdog ping
                    self._stop.wait(min(max(sup.next_try - now, MIN_IDLE_S), self._until_chores(st, now), MAX_IDLE_S))
                continue
            n = self._read(st, sup.src)
            if n:
                sup.heard(st.chunk[:n], now)
                for start, window in st.windower.feed(st.chunk[:n]):
                    self._step(st, sup.src, start, window)
                self.events.clips_ready()
                st.audio_pos += n
                if self.duration is not None and st.audio_pos >= self.duration * st.sr:
                    st.reason = "duration reached"
                    return
                continue
            if getattr(sup.src, "finished", False) and st.ring.available == 0:
                self._end_of_input(st, sup.src)
                return
            lost = sup.lost(now)
            if lost:
                sup.close(lost)
                self._flush_event()
                continue
            if self.duration is not None and sup.src.kind == "mic" and now - st.started >= self.duration:
                st.reason = "duration reached"  # a microphone that went silent or away still ends the run
                return
            self._sleep(st, now)  # no audio waiting
        st.reason = "signal"

    def _sleep(self, st: LoopState, now: float) -> None:
        """No audio is waiting: sleep until the source has written the audio that
        completes the next window (it wakes the loop then, ``RingBuffer.want``), a stop,
        or the next chore (stats, a watchdog ping; the profile file and a lost microphone
        are looked at on every wakeup, at least every second or every hop). An idle
        daemon sleeps; it does not poll."""
        ring = st.ring
        ring.want = ring.written + max(1, st.windower.missing() - ring.available)
        if ring.written >= ring.want:  # written meanwhile
            ring.want = None
            return
        st.wakeup.sleep(min(self._until_chores(st, now), max(MAX_IDLE_S, self.profile.audio.hop)))
        ring.want = None

    def _until_chores(self, st: LoopState, now: float) -> float:
        """Seconds until the next stats record or watchdog ping is due (at least MIN_IDLE_S)."""
        due = min(st.last_stats + self.profile.logging.stats_interval, now + self.notifier.next_ping(now))
        return max(due - now, MIN_IDLE_S)

    def _end_of_input(self, st: LoopState, src) -> None:
        """A file source read to its end: the last short file, what was skipped, and a
        reader that failed (exit 2 through SourceError)."""
        self._finish_file(st, src)
        for e in getattr(src, "errors", []):
            self.log("source_error", message=e)
            self.echo(f"edgeqmoe: skipped {e}")
        if getattr(src, "fatal", None):
            st.reason = "input failed"
            self.log("source_error", message=src.fatal)
            raise SourceError(src.fatal)

    def _check_window(self) -> None:
        """Say so when the profile's windows are not those the bundle was trained on."""
        msg = self.pipeline.built.window_mismatch(self.profile.audio.window)
        if msg:
            self.echo(f"edgeqmoe: {msg}")
            self.log("window_mismatch", message=msg)

    def _model_fields(self) -> Dict:
        """What a reader needs to name the windows that follow (start and reload records)."""
        pipe, p = self.pipeline, self.profile
        return {"bundle": pipe.built.bundle, "classes": pipe.classes, "experts": list(pipe.model.experts),
                "embedder": {**pipe.embedder.info.as_dict(), "runtime": getattr(pipe.embedder, "runtime", None),
                             **({"weights": pipe.embedder.weights_path} if getattr(pipe.embedder, "weights_path", None)
                                else {})},
                "model": pipe.model.kind,
                "kernel": getattr(pipe.model, "variant", None) or p.model.kernel,
                "kernels": self.pipeline.kernels(),
                "listen": pipe.listener.describe if pipe.listener else {},
                "open_set": (pipe.open_set.describe() if pipe.open_set is not None else
                             "off" if not p.decision.open_set else "unavailable: the embedder has no AudioSet output"),
                # what makes a decision and an event, per class (the profile's thresholds and event_windows)
                "decision": {"thresholds": {c: round(float(t), 4) for c, t in zip(pipe.classes, pipe.decider.thr)},
                             "event_windows": dict(zip(pipe.classes, pipe.decider.need))},
                **({"listen_unavailable": pipe.listen_unavailable} if pipe.listen_unavailable else {})}

    def _warm_up(self, st: LoopState) -> None:
        """First calls allocate, compile and fault pages: do them before audio flows."""
        pipe = self.pipeline
        warm = np.zeros(st.win_n, np.float32)
        for _ in range(3):
            pipe.embedder.embed(warm, st.sr)
            pipe.model.predict(np.zeros((1, pipe.model.in_features), np.float32))

    def _restart_stream(self, st: LoopState) -> None:
        if self.clips is not None:
            self.clips.history.reset(0)
            self.clips.new_file(0)
        st.windower.reset()
        self.pipeline.decider.reset()

    def say_listening(self, src) -> None:
        """One line on what is listening, once the input is open."""
        if self.quiet:
            return
        pipe, p = self.pipeline, self.profile
        f = self._model_fields()
        extras = [f"open set {'on' if pipe.open_set is not None else 'off'}"]
        if pipe.listener is not None:
            extras.append(f"listening for {', '.join(pipe.listener.names)}")
        if self.metrics is not None:
            extras.append(f"metrics at {self.metrics.url}")
        if self.mqtt is not None:
            extras.append(f"MQTT to {self.mqtt.target}")
        if self.clips is not None:
            extras.append(f"clips in {self.clips.folder}{' (none where speech is heard)' if p.clips.privacy else ''}")
        desc = src.describe() if hasattr(src, "describe") else self.source_spec
        self.echo(f"edgeqmoe: {self.device} listening to {desc}; profile {p.name} ({p.audio.window:g} s windows, "
                  f"a decision every {p.audio.hop:g} s), model {Path(f['bundle']).name} "
                  f"({f['model']}, kernel {f['kernel']}), embedder {f['embedder']['id']} ({f['embedder']['runtime']}"
                  f"{', weights ' + f['embedder']['weights'] if f['embedder'].get('weights') else ''}), "
                  f"{'; '.join(extras)}; "
                  f"logs in {self.log_dir}")

    def _reported_classes(self) -> List[str]:
        """The model's classes and the listen groups: what events can be of."""
        pipe = self.pipeline
        return list(pipe.classes) + (list(pipe.listener.names) if pipe.listener else [])

    def _flush_event(self) -> None:
        """Events still open end here (a new file, a lost input, a reload, the stop),
        and clips waiting for audio that will not come are cut with what there is."""
        for ev in self.pipeline.flush_events():
            self.events.ended(ev)
        self.events.clips_ready(force=True)

    def _finish_file(self, st: LoopState, src) -> None:
        """A file shorter than one window still gets its one window (zero-padded), as
        offline framing gives it."""
        if st.file_i >= 0:
            short = st.windower.finish_short()
            if short is not None:
                self._step(st, src, *short)

    def _read(self, st: LoopState, src) -> int:
        """Samples from the ring into ``st.chunk``. Sources of files are read one file
        at a time: at a file's first sample the windows, smoothing and any open event
        start afresh, so that no window straddles two files."""
        files = getattr(src, "files", None)
        if files is None:
            return self._keep(st, st.ring.read(st.chunk))
        pos = st.ring.read_pos
        i = src.file_starting_at(pos, st.file_i)
        if i is not None:
            self._finish_file(st, src)
            self._flush_event()
            self.pipeline.decider.reset()
            st.windower.reset(pos)
            st.file_i, st.file_start = i, pos
            self._file = (files[i][1], pos / st.sr)
            self.events.place(self._file, pos / st.sr)
            if self.clips is not None:
                self.clips.new_file(pos)
            self.log("file", index=i, path=files[i][1], at_s=round(pos / st.sr, 3))
        nxt = src.next_start(pos)
        return self._keep(st, st.ring.read(st.chunk if nxt is None else st.chunk[:min(len(st.chunk), nxt - pos)]))

    def _keep(self, st: LoopState, n: int) -> int:
        """What was read also goes to the clips' history (ring positions)."""
        if n and self.clips is not None:
            self.clips.audio(st.chunk[:n], st.ring.read_pos - n)
        self.events.place(self._file, st.ring.read_pos / st.sr)
        return n

    def _step(self, st: LoopState, src, start: int, window: np.ndarray) -> None:
        """One window: pipeline, timing, energy, record, event."""
        p, sr = self.profile, st.sr
        t0 = time.perf_counter()
        cpu0 = _cpu()
        rec, ended = self.pipeline.process(window, start / sr, (start + st.win_n) / sr)
        total_ms = (time.perf_counter() - t0) * 1e3
        # behind live audio: what was captured after this window's end, plus the
        # callback's own delay; meaningless when files are read ahead (--fast)
        live = src.kind == "mic" or self.realtime
        lag = (st.ring.written - (start + st.win_n)) / sr + st.ring.callback_lag if live else 0.0
        t_wall, t_mono = time.time(), time.monotonic()
        rec.update({"t_wall": round(t_wall, 2), "capture_lag_ms": round(lag * 1e3, 1) if live else None})
        if total_ms > p.audio.hop * 1e3:
            rec["deadline_miss"] = True
            self.misses_total += 1
        if self.metrics is not None:
            self.metrics.window(total_ms / 1e3, total_ms > p.audio.hop * 1e3, st.ring.dropped)
        rec["mj"] = round(self.power.window_energy_mj(_cpu() - cpu0)["energy_mj"], 2)
        rec["v"] = 1
        if st.file_i >= 0:  # which file ("file" records of daemon.jsonl) and where in it, seconds
            rec["fi"], rec["fo"] = st.file_i, round((start - st.file_start) / sr, 3)
        st.stats.add(rec, lag, total_ms, t_wall - t_mono)
        self.writer.put("windows", rec)
        if self.json_out is not None:
            self.json_out(encode(rec))
        if self.clips is not None:
            self.clips.window(start / sr, (start + st.win_n) / sr, self.pipeline.speech)
        pipe = self.pipeline
        for ev in [pipe.decider.event] + (list(pipe.listener.open.values()) if pipe.listener else []):
            if ev is not None:
                self.events.running(ev)
        for ev in ended:
            self.events.ended(ev)
        if self.mqtt is not None:
            st.level.add(rec["lv"][0])
            if t_mono - st.level.since >= self.mqtt.s.level_interval:
                self.mqtt.level(st.level.take(t_mono))
        self.windows += 1
        if not st.warmed:
            st.warmed = True
            if p.runtime.freeze_gc:
                gc.collect()
                gc.freeze()
                gc.disable()

    def _housekeeping(self, st: LoopState, now: float) -> None:
        """Between windows, whatever the ring holds: stats on their interval, the
        profile file looked at every second, a pending reload applied."""
        p = self.profile
        if now - st.last_stats >= p.logging.stats_interval:
            self._write_stats(st.stats, st.ring, now - st.last_stats)
            st.stats = _Stats()
            st.last_stats = now
            if p.runtime.freeze_gc and st.warmed:
                gc.collect(0)
        if now - st.last_file_check >= PROFILE_CHECK_S:
            st.last_file_check = now
            m = _mtime(p.source_file)
            if m != st.prof_mtime:
                st.prof_mtime = m
                self._reload.set()
        if self._reload.is_set():
            self._reload.clear()
            if self._try_reload():
                st.set_window(self.profile)
                st.prof_mtime = self.profile.source_mtime or st.prof_mtime

    def _try_reload(self) -> bool:
        """Load the profile file again; any failure keeps the running settings and says
        why. A reload goes on seamlessly: windows continue from the same sample, the
        smoothing and open events carry over where the classes stay; a file that changed
        nothing does nothing (said once until something changes)."""
        p = self.profile
        try:
            new = load_profile(p.source_file)
            changed = changed_keys(p, new)
            if not changed:
                if not self._unchanged_said:
                    self._unchanged_said = True
                    self.log("reload_unchanged", message="the profile file is unchanged; nothing to apply")
                    self.echo(f"edgeqmoe: profile {p.source_file} unchanged; nothing reloaded")
                self.profile = new  # its mtime: not looked at again
                return False
            changed_audio = (new.audio.sample_rate, new.audio.channels, new.audio.source) != \
                            (p.audio.sample_rate, p.audio.channels, p.audio.source)
            if changed_audio:
                raise ProfileError("audio.sample_rate, audio.channels and audio.source cannot change while "
                                   "running; restart the daemon for those")
            fixed = [k for k in ("mqtt", "clips", "device", "metrics") if getattr(new, k) != getattr(p, k)]
            if fixed:
                raise ProfileError(f"{', '.join(fixed)} cannot change while running; restart the daemon for "
                                   f"{'that' if len(fixed) == 1 else 'those'}")
            if new.model != p.model or new.runtime.threads != p.runtime.threads:
                pipe = Pipeline.from_profile(new, say=self.echo)
                self.threads = apply_threads(new.runtime.threads)
                ended = pipe.take_over(self.pipeline)
            else:
                pipe = self.pipeline
                ended = pipe.set_decisions(new)
        except Exception as e:  # noqa: BLE001 - a reload must never take the daemon down
            msg = str(e) if isinstance(e, (SettingsError, ProfileError, PipelineError)) else f"{type(e).__name__}: {e}"
            self.log("reload_rejected", message=msg)
            self.echo(f"edgeqmoe: profile edit rejected, still running the previous settings: {msg}")
            return False
        for ev in ended:
            self.events.ended(ev)
        self._unchanged_said = False
        self.profile, self.pipeline = new, pipe
        if self.mqtt is not None:
            self.mqtt.set_classes(self._reported_classes())
        self.log("reload", profile=new.name, changed=changed, window_s=new.audio.window, hop_s=new.audio.hop,
                 **self._model_fields())
        self.echo(f"edgeqmoe: profile {new.name} reloaded ({', '.join(changed)} changed)")
        self._check_window()
        self.notifier.status(f"{new.name}: reloaded, listening to {self.source_spec}")
        return True

    def _write_stats(self, st: "_Stats", ring: RingBuffer, interval: float) -> None:
        import psutil

        proc = psutil.Process()
        rec = {"type": "stats", "t_wall": round(time.time(), 3), "t_mono": round(time.monotonic(), 3),
               "interval_s": round(interval, 3), "windows": st.n, "quiet_windows": st.quiet,
               "deadline_misses": st.misses,
               "dropped_samples_total": ring.dropped, "capture_lag_ms_max": round(st.lag_max * 1e3, 3),
               "clock_jump_s": round(st.clock_jump(), 4), "rss_mb": round(proc.memory_info().rss / 2**20, 2),
               "temperature_c": temperature_c(), "stages_ms": st.percentiles()}
        power = self.power
        rec["dropped_log_lines_total"] = self.writer.dropped_total
        rec["log_write_errors_total"] = self.writer.write_errors
        rec["device"] = self.device
        for part in (self.mqtt, self.clips):
            if part is not None:
                rec.update(part.stats())
        rec.update(power.interval())
        if st.energy:
            mj = float(np.mean(st.energy))
            rec["energy_mj_per_inference"] = round(mj, 3)
            rec["co2_ug_per_inference"] = round(co2_ug(mj, power.grid), 5)
        self.writer.put("stats", rec)
        try:
            write_textfile(Path(self.log_dir) / "edgeqmoe.prom", rec,
                           {"windows": self.windows, "deadline_misses": self.misses_total,
                            "dropped_samples": ring.dropped})
        except OSError as e:  # a metrics file is not worth stopping for; said once
            if not getattr(self, "_prom_said", False):
                self._prom_said = True
                self.echo(f"edgeqmoe: cannot write {Path(self.log_dir) / 'edgeqmoe.prom'}: {e}")


class _Level:
    """The power mean of window RMS levels (dBFS) over an interval."""

    def __init__(self):
        self.since, self.sum, self.n = float("-inf"), 0.0, 0  # the first window's level goes out at once

    def add(self, rms_dbfs: float) -> None:
        self.sum += 10.0 ** (rms_dbfs / 10.0)
        self.n += 1

    def take(self, now: float) -> float:
        mean = self.sum / self.n if self.n else 0.0
        self.since, self.sum, self.n = now, 0.0, 0
        return 10.0 * np.log10(mean) if mean > 1e-20 else -200.0


class _Stats:
    def __init__(self):
        self.n = 0
        self.quiet = 0
        self.misses = 0
        self.lag_max = 0.0
        self.stage: Dict[str, List[float]] = {k: [] for k in STAGES}
        self.wall_mono: List[float] = []
        self.energy: List[float] = []

    def add(self, rec: Dict, lag: float, total_ms: float, wall_minus_mono: float) -> None:
        self.n += 1
        self.misses += int(rec.get("deadline_miss", False))
        self.lag_max = max(self.lag_max, lag)
        if rec.get("d") == QUIET:  # no model ran: counted, but not in the latency of inference
            self.quiet += 1
        else:
            for k in STAGES[:-1]:
                self.stage[k].append(rec["stages_ms"][k])
            self.stage["total"].append(total_ms)
        if rec.get("mj") is not None:
            self.energy.append(rec["mj"])
        self.wall_mono.append(wall_minus_mono)

    def clock_jump(self) -> float:
        return (max(self.wall_mono) - min(self.wall_mono)) if self.wall_mono else 0.0

    def percentiles(self) -> Dict:
        return {k: percentiles(v, 3) for k, v in self.stage.items() if v}


def changed_keys(old: Profile, new: Profile) -> List[str]:
    """The settings (``section.key``) that differ between two profiles, the file's
    own bookkeeping (its path and modification time) aside."""
    out = []
    for f in dataclasses.fields(Profile):
        if f.name in ("source_file", "source_mtime"):
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(a)
                    if not g.name.startswith("_") and getattr(a, g.name) != getattr(b, g.name)] or [f.name]
        else:
            out.append(f.name)
    return out


def _cpu() -> float:
    """CPU seconds of this (the inference) thread, nanosecond resolution."""
    return time.thread_time()


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
