"""What the daemon writes about each window and each event: one definition each.

- Decision codes of a window record (``d``): a class index, or ``ABSTAIN``, ``QUIET``,
  ``OTHER``; ``WINDOW_SCHEMA`` names every key of a window record (docs/logs.md).
- ``Event``: a run of windows decided as one class or heard as one listen group. The
  pipeline opens, extends and ends events; it returns each window's record and the
  events that ended with it.
- ``EventFanout``: the one place where events go out: while one runs (the terminal line,
  MQTT state ON, the start of its clip), when it ends (state OFF, its clip cut) and
  once its clip is decided (the events log, the metrics, the MQTT event message).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

#: decisions of a window record (``d``) other than a class index
ABSTAIN, QUIET, OTHER = -1, -2, -3
DECISION_CODES = {ABSTAIN: "abstain", QUIET: "quiet", OTHER: "other"}

#: Keys of a window record (docs/logs.md): class/decision/topk/experts are indices
#: into the start record's "classes" and "experts".
WINDOW_SCHEMA = {"v": 1, "fields": {"t_wall": "Unix s", "capture_lag_ms": "ms",
                                     "stages_ms": "embed/head/decision ms", "class": "top-1 class index",
                                     "score": "top-1 probability", "k": "[class index, probability] after the top-1",
                                     "d": "decided class index, -1 abstain, -2 quiet (below the level gate: "
                                          "no class, score or k), -3 other, absent: none",
                                     "lv": "[RMS, peak] level of the window, dBFS",
                                     "o": "other windows: [open-set rule's probability of a target sound, "
                                          "[[AudioSet class index, probability] x 3]]",
                                     "ls": "[listen group index (start record's listen, in order), AudioSet "
                                           "probability] of each group heard",
                                     "u": "router uncertainty (nats), MoE", "x": "expert indices used, MoE",
                                     "deadline_miss": "present when slower than the hop",
                                     "mj": "energy of the window, mJ"},
                 "energy_method": "modelled"}


@dataclass(eq=False)  # an event is itself: compared and hashed by identity
class Event:
    """``label``: a class of the model or a listen group (``source`` "audioset");
    ``start``/``end``: stream seconds; ``peak``: its highest (smoothed) score."""

    label: str
    start: float
    end: float
    peak: float
    windows: int = 1
    source: Optional[str] = None
    file: Optional[str] = None  # file sources: the file and where in it the event starts
    offset_s: Optional[float] = None
    told: bool = False  # its start was fanned out (it reached min_windows)
    min_windows: int = 1  # decided windows in a row that make it an event (its class's event_min_windows)

    @property
    def counts(self) -> bool:
        """Long enough to be an event."""
        return self.windows >= self.min_windows

    def extend(self, t_end: float, score: float) -> None:
        self.end, self.windows, self.peak = t_end, self.windows + 1, max(self.peak, score)

    def record(self, device: Optional[str] = None) -> Dict:
        """The line of events.jsonl (docs/logs.md)."""
        rec = {"type": "event", "class": self.label, "start_s": round(self.start, 3), "end_s": round(self.end, 3),
               "windows": self.windows, "peak": round(self.peak, 5), "t_wall": round(time.time(), 3)}
        if device:
            rec["device"] = device
        if self.source:
            rec["source"] = self.source
        if self.file is not None:
            rec["file"], rec["offset_s"] = self.file, self.offset_s
        return rec


class EventFanout:
    """Events out to the terminal, the events log, metrics, MQTT and clips (module doc).
    ``place(file, stream_s)`` keeps it told which file is being read and how far the
    stream is, so that events name their file and their wall-clock times."""

    def __init__(self, writer, metrics, mqtt, clips, echo: Callable[[str], None], device: str, profile: str,
                 log_dir: str, quiet: bool = False):
        self.writer, self.metrics, self.mqtt, self.clips = writer, metrics, mqtt, clips
        self.echo, self.device, self.profile, self.log_dir, self.quiet = echo, device, profile, log_dir, quiet
        self.file: Optional[Tuple[str, float]] = None  # (file name, stream second where it starts)
        self.stream_s = 0.0
        # records go out in the order the events ended, although clips are decided out of order
        # (a withheld clip at once, a written one later from the writer thread)
        self._lock = threading.Lock()
        self._order: deque = deque()
        self._decided: Dict[int, Dict] = {}
        self._closed = False

    def place(self, file: Optional[Tuple[str, float]], stream_s: float) -> None:
        self.file, self.stream_s = file, stream_s

    def running(self, ev: Event) -> None:
        """An open event: once it has its ``min_windows`` windows it counts, said once."""
        if ev.told or not ev.counts:
            return
        ev.told = True
        if self.file is not None:
            ev.file, ev.offset_s = self.file[0], round(ev.start - self.file[1], 3)
        if self.mqtt is not None:
            self.mqtt.state(ev.label, True)
        if self.clips is not None:
            self.clips.begin(ev)
        if not self.quiet:
            where = f" in {Path(ev.file).name} at {ev.offset_s:.1f} s" if ev.file is not None else ""
            self.echo(f"{time.strftime('%H:%M:%S')}  {ev.label}  {ev.peak:.2f}"
                      f"{'  (AudioSet)' if ev.source else ''}{where}")

    def ended(self, ev: Event) -> None:
        """An event is over: state OFF now; its record once its clip is decided."""
        if ev.file is None and self.file is not None:
            ev.file, ev.offset_s = self.file[0], round(ev.start - self.file[1], 3)
        if self.mqtt is not None:
            self.mqtt.state(ev.label, False)
        with self._lock:
            self._order.append(ev)
        if self.clips is not None:
            self.clips.finish(ev)
        else:
            self.emit(ev, {})

    def clips_ready(self, force: bool = False) -> None:
        """Events whose clip is decided without being written (withheld) go out now;
        written ones come back through ``emit`` from the clip writer."""
        if self.clips is not None:
            for ev, fields in self.clips.ready(force):
                self.emit(ev, fields)

    def emit(self, ev: Event, clip: Dict) -> None:
        """The event's clip is decided (from the loop or the clip writer): its record goes
        out once those of the events that ended before it have."""
        with self._lock:
            if self._closed:
                return
            self._decided[id(ev)] = clip
            while self._order and id(self._order[0]) in self._decided:
                first = self._order.popleft()
                self._send(first, self._decided.pop(id(first)))

    def close(self) -> None:
        """The run is over and the clip writer stopped: events whose clip was never decided
        (a writer that did not finish in time) still get their record, saying so."""
        with self._lock:
            while self._order:
                first = self._order.popleft()
                self._send(first, self._decided.pop(id(first), None) or
                           {"clip_withheld": "the run ended before its clip was written"})
            self._closed = True

    def _send(self, ev: Event, clip: Dict) -> None:
        rec = ev.record(self.device)
        rec.update(clip)
        self.writer.put("events", rec)
        if self.metrics is not None:
            self.metrics.event(ev.label)
        if self.mqtt is not None:
            now_s = self.stream_s
            start, end = time.time() - (now_s - ev.start), time.time() - (now_s - ev.end)
            msg = {"event_type": ev.label, "class": ev.label, "score": rec["peak"], "start": round(start, 3),
                   "end": round(end, 3), "duration_s": round(ev.end - ev.start, 3), "device": self.device,
                   "profile": self.profile}
            for k in ("source", "file", "offset_s", "clip", "clip_withheld"):
                if k in rec:
                    msg[k] = rec[k]
            if "clip" in msg:
                msg["clip"] = str(Path(self.log_dir) / msg["clip"])
            self.mqtt.event(msg)
