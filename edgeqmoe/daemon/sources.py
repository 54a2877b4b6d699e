"""Audio sources feeding one preallocated ring buffer.

``RingBuffer``: one producer (the audio callback or a file thread), one consumer (the
inference thread). The producer only copies samples in and counts what did not fit;
it never allocates, logs or waits. Positions are absolute sample counts since the
source started, so the consumer can say how far behind real time it is.

Sources (``open_source``): ``mic`` / ``mic:DEVICE`` (sounddevice InputStream; DEVICE
is an index or part of a name), ``file:PATH`` and ``dir:PATH`` (decoded, resampled,
replayed at real time or as fast as possible without dropping anything).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import List, Optional

import numpy as np


class SourceError(Exception):
    """A source that cannot be opened; the message says what to do."""


class Wakeup:
    """One sleeping consumer, woken by whichever producer has something for it first
    (the audio that completes a window, a stop). ``wake`` never waits (a lock released,
    or already released), so an audio callback may call it."""

    def __init__(self):
        self._gate = threading.Lock()
        self._gate.acquire()

    def wake(self) -> None:
        try:
            self._gate.release()
        except RuntimeError:  # woken already, not yet slept on
            pass

    def sleep(self, timeout: float) -> None:
        """Until woken or ``timeout`` s; a wake that came before returns at once."""
        self._gate.acquire(timeout=max(0.0, timeout))


class RingBuffer:
    def __init__(self, capacity: int, wakeup: Optional[Wakeup] = None):
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self.written = 0    # samples ever written (absolute position of the next one)
        self.read_pos = 0   # samples ever consumed
        self.dropped = 0    # samples that did not fit (since the start: a reopen does not reset it)
        self.callback_lag = 0.0  # seconds from ADC to callback, last block (mic only)
        self.wakeup = wakeup  # woken when ``written`` reaches ``want``
        self.want: Optional[int] = None

    def reset(self) -> None:
        """A reopened source starts at position 0 again; what was dropped stays counted."""
        self.written = self.read_pos = 0

    @property
    def available(self) -> int:
        return self.written - self.read_pos

    @property
    def free(self) -> int:
        return self.capacity - self.available

    def write(self, x: np.ndarray) -> None:
        """Producer side: copy in what fits, count the rest as dropped."""
        n = len(x)
        room = self.capacity - (self.written - self.read_pos)
        if n > room:
            self.dropped += n - room
            x = x[:room]
            n = room
        if n:
            start = self.written % self.capacity
            first = min(n, self.capacity - start)
            self._buf[start:start + first] = x[:first]
            if first < n:
                self._buf[:n - first] = x[first:]
            self.written += n  # publish after the copy (one producer, one consumer)
        want = self.want
        if want is not None and self.written >= want and self.wakeup is not None:
            self.want = None
            self.wakeup.wake()

    def read(self, out: np.ndarray) -> int:
        """Consumer side: copy up to len(out) samples into ``out``; returns the count."""
        n = min(len(out), self.written - self.read_pos)
        if n:
            start = self.read_pos % self.capacity
            first = min(n, self.capacity - start)
            out[:first] = self._buf[start:start + first]
            if first < n:
                out[first:n] = self._buf[:n - first]
            self.read_pos += n
        return n


# --------------------------------------------------------------------------- mic


def list_devices() -> List[dict]:
    """Input devices as sounddevice sees them."""
    import sounddevice as sd

    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] > 0:
            out.append({"index": i, "name": d["name"], "channels": d["max_input_channels"],
                        "default_samplerate": d["default_samplerate"],
                        "default": i == sd.default.device[0]})
    return out


class MicSource:
    """sounddevice InputStream into the ring; the callback mixes to mono into a
    preallocated block buffer and copies it into the ring."""

    kind = "mic"

    def __init__(self, ring: RingBuffer, sample_rate: int, channels: int, block: int, device=None):
        self.ring, self.sample_rate, self.channels, self.block, self.device = ring, sample_rate, channels, block, device
        self._mono = np.zeros(block * 4, dtype=np.float32)
        self.stream = None
        self.name = ""  # the device's name once open
        self.finished = False
        self.callbacks = 0

    def _callback(self, indata, frames, time_info, status):
        n = frames
        mono = self._mono if n <= len(self._mono) else np.empty(n, np.float32)
        if indata.shape[1] == 1:
            mono[:n] = indata[:, 0]
        else:
            np.mean(indata, axis=1, out=mono[:n])
        self.ring.write(mono[:n])
        self.callbacks += 1
        try:  # PortAudio over PulseAudio never reports overflows: measure lag instead
            self.ring.callback_lag = max(0.0, time_info.currentTime - time_info.inputBufferAdcTime)
        except AttributeError:
            pass

    def resolve_device(self):

        devs = list_devices()
        if not devs:
            raise SourceError("no microphone found: there is no audio input device. Run 'edgeqmoe devices' to "
                              "see what sounddevice sees, or use --source file:PATH or --source dir:PATH to "
                              "classify recordings instead")
        if self.device is None or self.device == "":
            return None
        if isinstance(self.device, int) or str(self.device).isdigit():
            idx = int(self.device)
            if not any(d["index"] == idx for d in devs):
                raise SourceError(f"input device {idx} does not exist; 'edgeqmoe devices' lists the input devices "
                                  f"({', '.join(str(d['index']) + ': ' + d['name'] for d in devs)})")
            return idx
        matches = [d for d in devs if str(self.device).lower() in d["name"].lower()]
        if not matches:
            raise SourceError(f"no input device matches {self.device!r}; 'edgeqmoe devices' lists them "
                              f"({', '.join(d['name'] for d in devs)})")
        return matches[0]["index"]

    def start(self) -> None:
        import sounddevice as sd

        dev = self.resolve_device()
        try:
            self.stream = sd.InputStream(samplerate=self.sample_rate, channels=self.channels, dtype="float32",
                                         blocksize=self.block, device=dev, callback=self._callback)
            self.stream.start()
            self.name = sd.query_devices(self.stream.device)["name"]
        except Exception as e:  # PortAudioError and friends
            self.stream = None
            raise SourceError(f"cannot open input device {dev if dev is not None else 'default'} at "
                              f"{self.sample_rate} Hz, {self.channels} channel(s): {e}. Check 'edgeqmoe devices' "
                              "or use --source file:PATH") from None

    @property
    def active(self) -> bool:
        return bool(self.stream is not None and self.stream.active)

    def describe(self) -> str:
        return f"microphone {self.name!r} at {self.sample_rate} Hz"

    def stop(self) -> None:
        if self.stream is not None:
            try:
                self.stream.abort()
                self.stream.close()
            except Exception:
                pass
            self.stream = None


# --------------------------------------------------------------------------- files


class FileSource:
    """Audio files replayed into the ring, one after another, at real time or as fast
    as possible (waiting for room, never dropping). Files are decoded a block at a time
    (``audio.io.stream``), so memory does not grow with their length.

    ``files`` lists (absolute sample where a file starts, its name), published before
    its first sample is written, so the reader can start each file's windows afresh
    (a window never straddles two files) and say which file and offset it came from.
    A file that cannot be decoded is skipped and its error kept in ``errors``; an
    unexpected failure of the reader, or no readable file at all, sets ``fatal``."""

    kind = "file"

    def __init__(self, ring: RingBuffer, paths: List[str], sample_rate: int, block: int, realtime: bool = True):
        self.ring, self.paths, self.sample_rate, self.block, self.realtime = ring, paths, sample_rate, block, realtime
        self.finished = False
        self.errors: List[str] = []
        self.fatal: Optional[str] = None
        self.files: List[tuple] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgeqmoe-file-source", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def describe(self) -> str:
        return f"{len(self.paths)} file(s) ({'real time' if self.realtime else 'as fast as possible'})"

    def file_starting_at(self, pos: int, after: int) -> Optional[int]:
        """Index of a file (later than ``after``) that starts at sample ``pos``."""
        for i in range(after + 1, len(self.files)):
            if self.files[i][0] == pos:
                return i
            if self.files[i][0] > pos:
                break
        return None

    def next_start(self, pos: int) -> Optional[int]:
        """The first file start after sample ``pos``, if already known."""
        for start, _ in self.files:
            if start > pos:
                return start
        return None

    def _run(self) -> None:
        from ..audio.io import STREAM_BLOCK_S, AudioReadError, display_name, stream

        try:
            t0 = time.monotonic()
            for path in self.paths:
                if self._stop.is_set():
                    break
                try:
                    # decoded a block at a time, a second at least: one hand-over per block
                    blocks = stream(path, self.sample_rate, max(STREAM_BLOCK_S, self.block / self.sample_rate))
                    self._play(blocks, display_name(path), t0)
                except AudioReadError as e:
                    self.errors.append(str(e))
            if not self.files and not self._stop.is_set():
                self.fatal = "none of the input files could be read: " + "; ".join(self.errors)
        except Exception as e:  # noqa: BLE001 - said to the daemon, which ends the run with exit 2
            self.fatal = f"reading {self.paths[len(self.files) - 1] if self.files else self.paths[0]} failed: " \
                         f"{type(e).__name__}: {e}"
        finally:
            self.finished = True

    def _play(self, blocks, name: str, t0: float) -> None:
        announced = False
        for x in blocks:
            for i in range(0, len(x), self.block):
                if self._stop.is_set():
                    return
                chunk = x[i:i + self.block]
                if not announced:  # only once a first block decoded: a file that fails at once is never listed
                    self.files.append((self.ring.written, name))
                    announced = True
                if self.realtime:
                    due = t0 + (self.ring.written + len(chunk)) / self.sample_rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # a block at most: a stop is seen right after (cheaper than an Event)
                else:
                    while self.ring.free < len(chunk) and not self._stop.is_set():
                        time.sleep(0.001)
                if self._stop.is_set():
                    return
                self.ring.write(chunk)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


def parse_source(spec: str):
    """('mic', device or None) | ('file', [path]) | ('dir', [paths])."""
    from ..audio.datasets import AUDIO_EXT

    spec = spec or "mic"
    kind, _, arg = spec.partition(":")
    if kind == "mic":
        return "mic", (arg or None)
    if kind == "file":
        if arg and os.path.isdir(arg):
            raise SourceError(f"--source {spec}: {arg!r} is a folder; use --source dir:{arg} for the audio files in it")
        if not arg or not os.path.isfile(arg):
            raise SourceError(f"--source {spec}: file {arg!r} not found")
        return "file", [arg]
    if kind == "dir":
        if arg and os.path.isfile(arg):
            raise SourceError(f"--source {spec}: {arg!r} is a file; use --source file:{arg}")
        if not arg or not os.path.isdir(arg):
            raise SourceError(f"--source {spec}: folder {arg!r} not found")
        files = sorted(str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in AUDIO_EXT and p.is_file())
        if not files:
            raise SourceError(f"--source {spec}: no audio files ({', '.join(AUDIO_EXT)}) in {arg}")
        return "dir", files
    raise SourceError(f"unknown source {spec!r}; use mic, mic:DEVICE, file:PATH or dir:PATH")
