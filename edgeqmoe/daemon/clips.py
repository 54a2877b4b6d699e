"""Event clips: the audio of each event, with pre- and post-roll, as FLAC beside the logs.

The window loop copies every chunk it reads into ``History`` (the last
``max_length + pre_roll + post_roll`` seconds, by absolute sample position: the ring
between capture and inference may reuse what was read, this may not). An event that
starts counting opens a clip at ``start - pre_roll``; the clip is cut when the audio up
to ``end + post_roll`` has been read (or ``max_length`` is reached, or the input ends
or changes file), then written by a thread of its own (``soundfile``, 16-bit FLAC,
replaced atomically) and the folder is trimmed to ``max_count``, ``max_age_days`` and
``max_mb``, oldest first.

Privacy (``clips.privacy``, on by default): a clip is kept only when no window it spans
heard speech, by mn04's AudioSet speech classes (``profiles.SPEECH_LABELS``) at
``speech_threshold``; with an embedder that has no AudioSet output no clip is kept. A
withheld clip is never written; the event record says ``clip_withheld`` and why.

File names: ``YYYYmmddTHHMMSS.mmmZ_CLASS.flac``, the wall-clock time of the clip's first
sample in UTC, so that a folder listing is in time order.

The folder is the daemon's own: retention deletes only files named as it names clips
(``CLIP_NAME``), never follows a link (a ``clips`` that is a symbolic link is refused
at start), and a ``.NAME.flac.tmp`` left by a crash is removed at the next start. An
event's record is written once its clip is on disk (or could not be written, said in
``clip_withheld``): a record never names a clip that does not exist.
"""

from __future__ import annotations

import os
import queue
import re
import stat
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .mqtt import slug

CLIP_SUFFIX = ".flac"
#: the names this module gives clips (and their temporary files): nothing else in the
#: folder is ever deleted
CLIP_NAME = re.compile(r"^\d{8}T\d{6}\.\d{3}Z_[A-Za-z0-9_\-]+\.flac$")
CLIP_TMP = re.compile(r"^\.(\d{8}T\d{6}\.\d{3}Z_[A-Za-z0-9_\-]+\.flac)\.tmp$")


class History:
    """The last ``capacity`` samples read, addressed by absolute position."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.buf = np.zeros(self.capacity, np.float32)
        self.end = 0  # absolute position after the last sample written

    def reset(self, pos: int = 0) -> None:
        self.end = pos

    def write(self, x: np.ndarray, pos: int) -> None:
        """``x`` starts at absolute position ``pos`` (a jump forward leaves zeros)."""
        if pos != self.end:
            self.end = pos
        n = len(x)
        if n >= self.capacity:
            x, pos, n = x[-self.capacity:], pos + n - self.capacity, self.capacity
        start = pos % self.capacity
        first = min(n, self.capacity - start)
        self.buf[start:start + first] = x[:first]
        if first < n:
            self.buf[:n - first] = x[first:]
        self.end = pos + n

    def span(self, a: int, b: int) -> np.ndarray:
        """A copy of [a, b) clipped to what is still held."""
        a, b = max(a, self.end - self.capacity, 0), min(b, self.end)
        if b <= a:
            return np.zeros(0, np.float32)
        idx = np.arange(a, b) % self.capacity
        return self.buf[idx]


class ClipKeeper:
    """Clips of the daemon's events (module doc)."""

    def __init__(self, settings, log_dir: str, sr: int, say: Callable[..., None], echo: Callable[[str], None],
                 emit: Optional[Callable[[Dict, Dict], None]] = None):
        """``emit(event, fields)`` receives each event once its clip is decided: written
        (from the writer thread), withheld or failed; without it ``ready`` returns them all."""
        self.s, self.sr, self.emit = settings, sr, emit
        self.folder = Path(log_dir) / settings.dir
        self.rel = settings.dir
        self.say, self.echo = say, echo
        self.history = History(int((settings.max_length + settings.pre_roll + settings.post_roll + 5.0) * sr))
        self.open: Dict[int, Dict] = {}  # id(event) -> {"ev", "a", "b", "audio", "t_wall"}
        self.speech: deque = deque()  # (start s, end s, speech probability or None) of recent windows
        self.floor = 0  # the first sample of the current file (file sources): clips start no earlier
        self.kept = self.withheld = self.failed = self.deleted = self.shared = 0
        self.recent: deque = deque(maxlen=16)  # (first sample, end sample, name, fields) of recent clips
        self._outcomes: Dict[str, Optional[str]] = {}  # name -> None (written) or why not, recent clips
        self.q: "queue.Queue" = queue.Queue(maxsize=8)
        self._thread: Optional[threading.Thread] = None
        if self.folder.is_symlink():
            raise OSError(f"clips.dir {self.folder} is a symbolic link; the daemon writes and deletes clips only in "
                          "a folder of its own: remove the link or choose another clips.dir")
        try:
            self.folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"clips.dir {self.folder}: cannot create it ({e}); choose another clips.dir") from None
        if not self.folder.is_dir():
            raise OSError(f"clips.dir {self.folder} is not a folder; choose another clips.dir")
        self.stale = self._remove_stale()
        self.trim()

    # ------------------------------------------------------------------ the loop's side
    def audio(self, x: np.ndarray, pos: int) -> None:
        self.history.write(x, pos)

    def window(self, t0: float, t1: float, speech: Optional[float]) -> None:
        self.speech.append((t0, t1, speech))
        horizon = t1 - (self.history.capacity / self.sr)
        while self.speech and self.speech[0][1] < horizon:
            self.speech.popleft()

    def new_file(self, pos: int) -> None:
        """A file source begins its next file at sample ``pos``: no clip reaches back
        before it, and the speech heard in the file before never vetoes its clips."""
        self.floor = pos
        self.speech.clear()
        self.recent.clear()  # a reopened stream counts positions from 0 again: no sharing across it

    def begin(self, ev) -> None:
        """An event that counts: its clip starts ``pre_roll`` before it (never before the
        start of its file)."""
        if id(ev) not in self.open:
            a = max(self.floor, int(round((ev.start - self.s.pre_roll) * self.sr)))
            self.open[id(ev)] = {"ev": ev, "a": a, "b": None, "audio": None,
                                 "t_wall": time.time() - (self.history.end - a) / self.sr}

    def finish(self, ev) -> None:
        """The event is over: the clip ends ``post_roll`` after it."""
        self.begin(ev)
        c = self.open[id(ev)]
        c["b"] = int(round((ev.end + self.s.post_roll) * self.sr))

    def ready(self, force: bool = False) -> List[Tuple[Dict, Dict]]:
        """Events whose clip is decided: [(event, fields for its record)]. ``force``: the
        audio that follows does not belong to them (end of input, a new file, a stop)."""
        out = []
        longest = int(self.s.max_length * self.sr)
        for key, c in list(self.open.items()):
            if c["audio"] is None and (self.history.end >= c["a"] + longest or
                                       (c["b"] is not None and (force or self.history.end >= c["b"]))):
                b = min(c["a"] + longest, c["b"] if c["b"] is not None else self.history.end, self.history.end)
                c["audio"], c["b_cut"] = self.history.span(c["a"], b), b
            if c["b"] is None and not force:
                continue
            if c["audio"] is None:  # forced before any audio of it was read
                c["audio"], c["b_cut"] = self.history.span(c["a"], self.history.end), self.history.end
            del self.open[key]
            fields = self._decide(c)
            if fields is not None:
                out.append((c["ev"], fields))
        return out

    def _decide(self, c: Dict) -> Dict:
        ev, audio = c["ev"], c["audio"]
        a_s, b_s = c["a"] / self.sr, c["b_cut"] / self.sr
        if len(audio) == 0:
            return {"clip_withheld": "no audio of it was held"}
        if self.s.privacy:
            probs = [p for t0, t1, p in self.speech if t1 > a_s and t0 < b_s]
            if any(p is None for p in probs):
                self.withheld += 1
                return {"clip_withheld": "privacy: no speech detector (the embedder has no AudioSet output)"}
            speech = max(probs, default=0.0)
            if speech >= self.s.speech_threshold:
                self.withheld += 1
                return {"clip_withheld": f"privacy: speech heard (p={speech:.2f})"}
        for a0, b0, name0, fields0 in self.recent:  # one sound, two events (a class and a listen group): one clip
            if min(b0, c["b_cut"]) - max(a0, c["a"]) >= 0.5 * min(b0 - a0, c["b_cut"] - c["a"]):
                self.shared += 1
                try:
                    self.q.put_nowait((name0, None, ev, fields0))  # after the first one's write: its outcome
                except queue.Full:
                    return dict(fields0)
                self._start()
                return None if self.emit is not None else dict(fields0)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(c["t_wall"])) + f".{int(c['t_wall'] * 1000) % 1000:03d}Z"
        name = f"{stamp}_{slug(ev.label)}{CLIP_SUFFIX}"
        fields = {"clip": f"{self.rel}/{name}", "clip_s": round(len(audio) / self.sr, 2)}
        try:
            self.q.put_nowait((name, audio, ev, fields))
        except queue.Full:
            self.failed += 1
            return {"clip_withheld": "the clip writer is behind (8 clips waiting); this one was not kept"}
        self.recent.append((c["a"], c["b_cut"], name, fields))
        self._start()
        if self.emit is None:  # no one to tell later: said now, written soon
            return fields
        return None  # emitted by the writer thread once written

    # ------------------------------------------------------------------ the writer thread
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgeqmoe-clips", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            name, audio, ev, fields = item
            if audio is None:  # a clip shared with an earlier event: its outcome
                error = self._outcomes.get(name)
            else:
                error = self._write(name, audio)
                self._outcomes[name] = error
                while len(self._outcomes) > 64:
                    self._outcomes.pop(next(iter(self._outcomes)))
            if self.emit is not None:
                self.emit(ev, fields if error is None else {"clip_withheld": f"cannot write the clip: {error}"})

    def _write(self, name: str, audio: np.ndarray) -> Optional[str]:
        """Write one clip; returns None, or why it could not be written."""
        import soundfile as sf

        path = self.folder / name
        tmp = path.with_name(f".{name}.tmp")
        try:
            pcm = np.clip(audio, -1.0, 1.0)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o640)
            with open(fd, "wb") as f:
                sf.write(f, pcm, self.sr, format="FLAC", subtype="PCM_16")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self.kept += 1
            size = path.stat().st_size
            deleted = self.trim()
            self.say("clip", path=str(path), seconds=round(len(audio) / self.sr, 2), bytes=size,
                     **({"deleted": deleted} if deleted else {}))
            return None
        except Exception as e:  # noqa: BLE001 - a full disk (libsndfile may assert), a bad folder: never fatal
            self.failed += 1
            try:
                tmp.unlink()
            except OSError:
                pass
            why = str(e) or type(e).__name__
            if isinstance(e, AssertionError) or not isinstance(e, (OSError, RuntimeError, ValueError)):
                why = f"the FLAC encoder failed ({type(e).__name__}{': ' + str(e) if str(e) else ''}; a full disk?)"
            self.say("clip_error", path=str(path), message=why)
            if self.failed == 1:
                self.echo(f"edgeqmoe: cannot write the clip {path}: {why}")
            return why

    def _ours(self, pattern) -> List[Tuple[os.stat_result, Path]]:
        """Regular files of the folder named by ``pattern`` (never a link: lstat)."""
        out = []
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    if pattern.match(e.name):
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            out.append((st, Path(e.path)))
        except OSError:
            pass
        return out

    def _remove_stale(self) -> int:
        """Temporary files of clips whose writing a crash or kill interrupted."""
        n = 0
        for _, p in self._ours(CLIP_TMP):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        if n:
            self.say("clips_stale_removed", count=n)
        return n

    def trim(self) -> int:
        """Oldest first, until count, age and size are within the settings; returns the
        number of clips deleted. Only the daemon's own clips count and go (``CLIP_NAME``)."""
        s = self.s
        files = sorted((st.st_mtime, st.st_size, p) for st, p in self._ours(CLIP_NAME))
        total = sum(size for _, size, _ in files)
        now, n, deleted = time.time(), len(files), 0
        for mtime, size, p in files:
            if not (n > s.max_count or total > s.max_mb * 1e6 or now - mtime > s.max_age_days * 86400):
                break
            try:
                p.unlink()
            except OSError:
                continue
            n, total, deleted = n - 1, total - size, deleted + 1
        self.deleted += deleted
        return deleted

    def stats(self) -> Dict:
        return {"clips_kept_total": self.kept, "clips_withheld_total": self.withheld,
                "clips_failed_total": self.failed, "clips_deleted_total": self.deleted,
                "clips_shared_total": self.shared}

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (the last clips of a run are kept too)."""
        if self._thread is not None:
            try:
                self.q.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)
