"""Log files: JSON Lines, one file per kind, written by one thread.

Kinds: ``windows`` (one record per window), ``events`` (detections), ``daemon``
(what the daemon did and why), ``stats`` (latency jitter, CPU, memory, power per
interval). Each record carries ``v`` (schema version) and ``type``.

What the writer promises (docs/logs.md):

- ``put`` never blocks and never raises on a record: it is encoded to one line at once
  (NaN and infinity become ``null``) and queued; when the queue is full (the disk has
  been failing for a while) the line is dropped and counted in ``dropped``.
- Lines wait in memory at most ``flush_interval`` seconds, then a batch of whole lines
  is written (short writes are continued) and fsync'ed. A write that fails (ENOSPC,
  EIO, EFBIG...) is retried with backoff, reported once per kind and error as a
  ``log_write_error`` record and on stderr, and nothing of the batch is lost or torn.
- ``close`` writes every queued line, however long a rotation takes.
- Every file the daemon creates is opened with O_NOFOLLOW (and O_EXCL where it is new),
  mode 0640: a symbolic link in the log folder is refused, never followed.
- A lock file (``.lock``) holds the folder for one daemon; a second one gets
  ``LogFolderBusy``.
- Rotation: the live file is renamed to ``<kind>.<UTC time to the microsecond>.jsonl``
  (one atomic rename), compressed to ``.jsonl.gz.tmp``, fsync'ed, renamed to
  ``.jsonl.gz``, then the plain file is unlinked. A crash anywhere in between is
  finished on the next start (``recover``), and readers never count a rotated file
  twice (``log_files`` prefers the ``.gz`` when both exist). Only the newest
  ``retention`` rotated files of each kind are kept.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

SCHEMA_VERSION = 1
KINDS = ("windows", "events", "daemon", "stats")
#: decisions of a window record that are not a class index (``d``; docs/logs.md)
FILE_MODE = 0o640
#: queued lines at most, all kinds together (about 4 MB of window records)
QUEUE_LINES = 20_000
#: waits between retries of a failing write, seconds (the last one repeats)
WRITE_BACKOFF = (0.05, 0.2, 1.0, 5.0)
#: at close, a write still failing after this long is given up (and said on stderr)
CLOSE_GIVE_UP_S = 30.0
LOCK_NAME = ".lock"


class LogFolderBusy(OSError):
    """Another process holds the log folder's lock."""


def encode(record: Dict) -> bytes:
    """One JSON line; NaN and infinities become null, numpy scalars and arrays plain values."""
    try:
        text = json.dumps(record, separators=(",", ":"), allow_nan=False, default=_jsonable)
    except ValueError:  # a non-finite float somewhere: clean the whole record once
        text = json.dumps(_finite(record), separators=(",", ":"), allow_nan=False, default=_jsonable)
    return (text + "\n").encode()


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if type(o).__module__ == "numpy":
        return _finite(_jsonable(o))
    return o


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def open_new(path: Path, flags: int = os.O_WRONLY) -> int:
    """Create ``path`` for writing, never through a link: a stale file of that name
    (a leftover temporary, or a link someone planted) is removed first."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a short write is continued, never left torn)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (temporary file, fsync, rename), never through a link."""
    tmp = path.with_name(path.name + ".tmp")
    fd = open_new(tmp)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _rotated(folder: Path, kind: str) -> List[Path]:
    """Rotated files of ``kind``, oldest first; where a crash left both X.jsonl and
    X.jsonl.gz, only the (complete) .gz."""
    files = {p.name: p for p in folder.glob(f"{kind}.*.jsonl*") if p.name.endswith((".jsonl", ".jsonl.gz"))}
    keep = [p for name, p in files.items() if not (name.endswith(".jsonl") and name + ".gz" in files)]
    return sorted(keep, key=lambda p: p.name)


class JsonlFile:
    """One kind's live file and its rotated files; used by the writer thread only."""

    def __init__(self, folder: Path, kind: str, rotate_bytes: int, rotate_age: float, retention: int, compress: bool):
        self.folder, self.kind = folder, kind
        self.rotate_bytes, self.rotate_age, self.retention, self.compress = rotate_bytes, rotate_age, retention, compress
        self.path = folder / f"{kind}.jsonl"
        self.fd: Optional[int] = None
        self.recover()
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                              FILE_MODE)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(f"log file {self.path} is a symbolic link; the daemon never writes "
                                       "through links: remove it or choose another log folder") from None
            raise
        st = os.fstat(self.fd)
        self.size = st.st_size
        # age for rotation: a file that already has lines counts from its last write
        self.opened = min(time.time(), st.st_mtime) if st.st_size else time.time()
        # a torn last line (power cut) would glue onto the next record: end it first
        if st.st_size and os.pread(self.fd, 1, st.st_size - 1) != b"\n":
            write_all(self.fd, b"\n")
            self.size += 1

    def recover(self) -> None:
        """Finish or roll back a rotation that a crash interrupted (idempotent)."""
        for tmp in self.folder.glob(f"{self.kind}.*.jsonl.gz.tmp"):
            tmp.unlink()  # never complete: its plain source is still there
        for plain in self.folder.glob(f"{self.kind}.*.jsonl"):
            gz = plain.with_name(plain.name + ".gz")
            if gz.exists() and not gz.is_symlink():
                plain.unlink()  # the .gz was published whole (fsync before rename)
            elif self.compress and not plain.is_symlink():
                self._compress(plain)

    def fitting(self, lines: List[bytes], start: int) -> int:
        """End of the run of ``lines`` from ``start`` that fits before the next rotation
        (at least one line)."""
        room = self.rotate_bytes - self.size if self.size else self.rotate_bytes
        end, total = start, 0
        while end < len(lines) and (end == start or total + len(lines[end]) <= room):
            total += len(lines[end])
            end += 1
        return end

    def due(self, incoming: int) -> bool:
        return bool(self.size) and (self.size + incoming > self.rotate_bytes or
                                    time.time() - self.opened > self.rotate_age)

    def write(self, data: bytes) -> None:
        """Append whole lines: on an error the file is cut back to where it was, so a
        retry neither tears nor repeats a line."""
        if self.fd is None:
            self._open()
        if self.due(len(data)):
            self.rotate()
        try:
            write_all(self.fd, data)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def rotate(self) -> None:
        self.sync()
        os.close(self.fd)
        self.fd = None
        # names sort in time order: UTC to the microsecond, then a counter on collision
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}"
        target = self.folder / f"{self.kind}.{stamp}.jsonl"
        n = 1
        while target.exists() or Path(str(target) + ".gz").exists():
            target = self.folder / f"{self.kind}.{stamp}{n:03d}.jsonl"
            n += 1
        os.replace(self.path, target)
        self._open()  # lines go on to the new live file even if compression fails below
        if self.compress:
            self._compress(target)
        for old in _rotated(self.folder, self.kind)[:-self.retention]:
            old.unlink()

    def _compress(self, plain: Path) -> None:
        gz = plain.with_name(plain.name + ".gz")
        tmp = plain.with_name(plain.name + ".gz.tmp")
        fd = open_new(tmp)
        try:
            with os.fdopen(os.dup(fd), "wb") as raw, gzip.GzipFile(filename=plain.name, mode="wb", fileobj=raw) as z:
                src = os.open(plain, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    while True:
                        block = os.read(src, 1 << 20)
                        if not block:
                            break
                        z.write(block)
                finally:
                    os.close(src)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, gz)
        plain.unlink()

    def close(self) -> None:
        if self.fd is not None:
            try:
                self.sync()
            finally:
                os.close(self.fd)
                self.fd = None


class LogWriter:
    """Owns the log files; ``put(kind, record)`` from any thread never blocks on disk.

    ``written`` / ``synced`` count lines per kind that reached the file / the disk,
    ``dropped`` lines that found the queue full, ``write_errors`` failed attempts.
    """

    def __init__(self, folder, flush_interval: float = 2.0, rotate_bytes: int = 20_000_000,
                 rotate_age: float = 86400.0, retention: int = 30, compress: bool = True,
                 queue_lines: int = QUEUE_LINES, warn: Optional[Callable[[str], None]] = None):
        self.folder = Path(folder)
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as e:
            raise OSError(f"log folder {self.folder} cannot be made ({e.strerror}); set logging.dir in "
                                   "the profile or --log-dir") from None
        self._lock_fd = self._lock()
        self.flush_interval = flush_interval
        self.files: Dict[str, JsonlFile] = {}
        try:
            for k in KINDS:
                self.files[k] = JsonlFile(self.folder, k, rotate_bytes, rotate_age, retention, compress)
        except OSError:
            self._release()
            raise
        self.q: "queue.Queue" = queue.Queue(maxsize=queue_lines)
        self.written = {k: 0 for k in KINDS}
        self.synced = {k: 0 for k in KINDS}
        self.dropped = {k: 0 for k in KINDS}
        self.write_errors = 0
        self.bytes = 0
        self._said: set = set()
        self._closing = False
        self._wake = threading.Event()  # the close, or a queue half full: write before the interval ends
        self._thread = threading.Thread(target=self._run, name="edgeqmoe-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ lock
    def _lock(self) -> int:
        path = self.folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            what = "is a symbolic link; remove it" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
            raise OSError(f"log folder {self.folder} is not usable: {path} {what}; set logging.dir in the "
                                   "profile or --log-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LogFolderBusy(f"another edgeqmoe daemon (pid {holder}) is writing to {self.folder}; stop it, or "
                                "give this one another --log-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ producer side
    def put(self, kind: str, record: Dict) -> bool:
        """Queue one record; False (and counted in ``dropped``) when the queue is full."""
        if kind not in self.dropped:
            raise ValueError(f"unknown log kind {kind!r}; one of {', '.join(KINDS)}")
        record.setdefault("v", SCHEMA_VERSION)
        try:
            self.q.put_nowait((kind, encode(record)))
        except queue.Full:
            self.dropped[kind] += 1
            return False
        if self.q.qsize() > self.q.maxsize // 2:  # a burst (files read as fast as they go): drain before the interval
            self._wake.set()
        return True

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    # ------------------------------------------------------------------ writer thread
    def _drain(self, pending: Dict[str, List[bytes]], first=False) -> bool:
        """Move what is queued into ``pending`` (``first``: one record already taken);
        True once the stop sentinel came."""
        item = first
        try:
            while True:
                if item is None:
                    return True
                if item is not False:
                    pending[item[0]].append(item[1])
                item = self.q.get_nowait()
        except queue.Empty:
            return False

    def _run(self) -> None:
        """With a flush interval the thread sleeps through it (a record does not wake it;
        a queue half full or the close does) and writes what came, one write per kind;
        without one it writes each record as it comes."""
        pending: Dict[str, List[bytes]] = {k: [] for k in KINDS}
        last = time.monotonic()
        stop = False
        while True:
            if not stop:
                if self.flush_interval > 0:
                    self._wake.wait(max(0.0, self.flush_interval - (time.monotonic() - last)))
                    self._wake.clear()
                    stop = self._drain(pending)
                else:
                    stop = self._drain(pending, self.q.get())
            if stop or self.flush_interval <= 0 or time.monotonic() - last >= self.flush_interval:
                self._flush(pending, giving_up_at=time.monotonic() + CLOSE_GIVE_UP_S if stop else None)
                last = time.monotonic()
            if stop:
                # records the flush itself queued (write errors, recoveries) go out too
                for _ in range(3):
                    try:
                        while True:
                            item = self.q.get_nowait()
                            if item is not None:
                                pending[item[0]].append(item[1])
                    except queue.Empty:
                        pass
                    if not any(pending.values()):
                        break
                    self._flush(pending, giving_up_at=time.monotonic() + CLOSE_GIVE_UP_S)
                return

    def _flush(self, pending: Dict[str, List[bytes]], giving_up_at: Optional[float]) -> None:
        """Write and sync each kind's batch, in pieces that respect the rotation size;
        retry a failing piece with backoff until it goes through (or, while closing,
        until ``giving_up_at``)."""
        for kind, lines in pending.items():
            f = self.files[kind]
            done = 0
            while done < len(lines):
                end = f.fitting(lines, done)
                if not self._write_piece(f, kind, b"".join(lines[done:end]), end - done, giving_up_at):
                    self.warn(f"edgeqmoe: gave up writing {len(lines) - done} {kind} lines to {f.path} at "
                              "shutdown")
                    break
                self.written[kind] += end - done
                self.bytes += sum(len(x) for x in lines[done:end])
                done = end
            if done:
                try:  # written lines are never written again: a failed fsync is reported, not retried
                    f.sync()
                    self.synced[kind] += done
                except OSError as e:
                    self.write_errors += 1
                    self._report(kind, e, 0.0, done)
            lines.clear()

    def _write_piece(self, f: JsonlFile, kind: str, data: bytes, n: int, giving_up_at: Optional[float]) -> bool:
        attempt = 0
        while True:
            try:
                f.write(data)
                break
            except OSError as e:
                self.write_errors += 1
                wait = WRITE_BACKOFF[min(attempt, len(WRITE_BACKOFF) - 1)]
                attempt += 1
                self._report(kind, e, wait, n)
                if giving_up_at is not None and time.monotonic() + wait > giving_up_at:
                    return False
                time.sleep(wait)
        if attempt:
            self._recovered(kind, attempt)
        return True

    def _report(self, kind: str, e: OSError, wait: float, n: int) -> None:
        name = errno.errorcode.get(e.errno, str(e.errno))
        if (kind, name) in self._said:
            return
        self._said.add((kind, name))
        msg = (f"edgeqmoe: cannot write {kind} log in {self.folder} ({name}: {e.strerror or e}); keeping {n} lines "
               f"in memory and retrying (every {WRITE_BACKOFF[-1]:g} s at most)")
        self.warn(msg)
        rec = {"type": "daemon", "event": "log_write_error", "t_wall": round(time.time(), 3), "kind": kind,
               "errno": name, "message": str(e.strerror or e), "retry_in_s": wait, "v": SCHEMA_VERSION}
        if kind != "daemon":  # the daemon file's own failure is said on stderr only
            try:
                self.q.put_nowait(("daemon", encode(rec)))
            except queue.Full:
                self.dropped["daemon"] += 1

    def _recovered(self, kind: str, attempts: int) -> None:
        self._said = {s for s in self._said if s[0] != kind}
        rec = {"type": "daemon", "event": "log_write_recovered", "t_wall": round(time.time(), 3), "kind": kind,
               "attempts": attempts, "v": SCHEMA_VERSION}
        try:
            self.q.put_nowait(("daemon", encode(rec)))
        except queue.Full:
            self.dropped["daemon"] += 1

    def close(self) -> None:
        """Write everything queued (a rotation in progress included), then close the files."""
        if self._closing:
            return
        self._closing = True
        while True:  # the sentinel must get in, however full the queue
            try:
                self.q.put(None, timeout=0.1)
                break
            except queue.Full:
                self._wake.set()
                if not self._thread.is_alive():
                    break
        self._wake.set()
        self._thread.join()
        for f in self.files.values():
            try:
                f.close()
            except OSError as e:
                self.warn(f"edgeqmoe: closing {f.path}: {e.strerror or e}")
        self._release()


def log_files(folder, kind: str) -> List[Path]:
    """Rotated files (oldest first) then the live one."""
    folder = Path(folder)
    live = folder / f"{kind}.jsonl"
    return _rotated(folder, kind) + ([live] if live.exists() else [])


def read_jsonl(paths, counts: Optional[Dict[str, int]] = None) -> Iterator[dict]:
    """Records of JSONL files (plain or .gz); a torn or unparsable line is counted in
    ``counts['bad_lines']`` and skipped, never fatal."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in paths:
        p = Path(p)
        opener = gzip.open if p.suffix == ".gz" else open
        try:
            with opener(p, "rt", encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        if counts is not None:
                            counts["bad_lines"] = counts.get("bad_lines", 0) + 1
                        continue
                    if isinstance(rec, dict):
                        yield rec
                    elif counts is not None:
                        counts["bad_lines"] = counts.get("bad_lines", 0) + 1
        except (OSError, EOFError) as e:  # truncated gzip: keep what was read
            if counts is not None:
                counts["bad_files"] = counts.get("bad_files", 0) + 1
                counts.setdefault("errors", []).append(f"{p}: {e}")
