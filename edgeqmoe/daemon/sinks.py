"""Log files: JSON Lines, one file per kind, written by one thread.

Kinds: ``windows`` (one record per window), ``events`` (detections), ``daemon``
(what the daemon did and why), ``stats`` (latency jitter, CPU, memory, power per
interval). Each record carries ``v`` (schema version) and ``type``.

Durability: records wait in memory at most ``flush_interval`` seconds (fewer writes
for SD cards), then a batch of whole lines goes to the file in one ``os.write`` on an
O_APPEND descriptor and is fsync'ed. A kill -9 loses at most the unflushed batch and
never leaves half a line from a finished write; a power cut can leave a torn last
line, which the readers skip (``read_jsonl``).

Rotation: a file past ``rotate_bytes`` or older than ``rotate_age`` is renamed to
``<kind>.<UTC time to the microsecond>.jsonl`` and gzipped (``compress``); only the newest
``retention`` rotated files of each kind are kept.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

SCHEMA_VERSION = 1
KINDS = ("windows", "events", "daemon", "stats")


class JsonlFile:
    def __init__(self, folder: Path, kind: str, rotate_bytes: int, rotate_age: float, retention: int, compress: bool):
        self.folder, self.kind = folder, kind
        self.rotate_bytes, self.rotate_age, self.retention, self.compress = rotate_bytes, rotate_age, retention, compress
        self.path = folder / f"{kind}.jsonl"
        self.fd: Optional[int] = None
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        st = os.fstat(self.fd)
        self.size = st.st_size
        # age for rotation: a file that already has lines counts from its last write
        self.opened = min(time.time(), st.st_mtime) if st.st_size else time.time()
        # a torn last line (power cut) would glue onto the next record: end it first
        if st.st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(self.fd, b"\n")
                    self.size += 1

    def write(self, data: bytes) -> None:
        if self.size and (self.size + len(data) > self.rotate_bytes or time.time() - self.opened > self.rotate_age):
            self.rotate()
        os.write(self.fd, data)
        self.size += len(data)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def rotate(self) -> None:
        self.sync()
        os.close(self.fd)
        # names sort in time order: UTC to the microsecond, then a counter on collision
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}"
        target = self.folder / f"{self.kind}.{stamp}.jsonl"
        n = 1
        while target.exists() or Path(str(target) + ".gz").exists():
            target = self.folder / f"{self.kind}.{stamp}{n:03d}.jsonl"
            n += 1
        os.replace(self.path, target)
        if self.compress:
            with open(target, "rb") as src, gzip.open(str(target) + ".gz.tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(str(target) + ".gz.tmp", str(target) + ".gz")
            os.unlink(target)
        rotated = sorted(p for p in self.folder.glob(f"{self.kind}.*.jsonl*") if not p.name.endswith(".tmp"))
        for old in rotated[:-self.retention]:
            old.unlink()
        self._open()

    def close(self) -> None:
        if self.fd is not None:
            self.sync()
            os.close(self.fd)
            self.fd = None


class LogWriter:
    """Owns the log files; ``put(kind, record)`` from any thread never blocks on disk."""

    def __init__(self, folder, flush_interval: float = 2.0, rotate_bytes: int = 20_000_000,
                 rotate_age: float = 86400.0, retention: int = 30, compress: bool = True):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise OSError(f"log folder {self.folder} is not writable ({e.strerror}); set logging.dir in the "
                          "profile or --log-dir") from None
        self.flush_interval = flush_interval
        self.files = {k: JsonlFile(self.folder, k, rotate_bytes, rotate_age, retention, compress) for k in KINDS}
        self.q: "queue.Queue" = queue.Queue()
        self.written = {k: 0 for k in KINDS}
        self.bytes = 0
        self._thread = threading.Thread(target=self._run, name="edgeqmoe-writer", daemon=True)
        self._thread.start()

    def put(self, kind: str, record: Dict) -> None:
        record.setdefault("v", SCHEMA_VERSION)
        self.q.put((kind, record))

    def _run(self) -> None:
        pending: Dict[str, List[bytes]] = {k: [] for k in KINDS}
        last = time.monotonic()
        stop = False
        while not stop:
            timeout = max(0.0, self.flush_interval - (time.monotonic() - last))
            try:
                item = self.q.get(timeout=timeout if self.flush_interval > 0 else None)
                if item is None:
                    stop = True
                else:
                    kind, rec = item
                    pending[kind].append((json.dumps(rec, separators=(",", ":"), allow_nan=False,
                                                     default=_jsonable) + "\n").encode())
            except queue.Empty:
                pass
            if stop or self.flush_interval <= 0 or time.monotonic() - last >= self.flush_interval:
                for kind, lines in pending.items():
                    if lines:
                        data = b"".join(lines)
                        self.files[kind].write(data)
                        self.files[kind].sync()
                        self.written[kind] += len(lines)
                        self.bytes += len(data)
                        lines.clear()
                last = time.monotonic()

    def close(self, timeout: float = 1.5) -> None:
        self.q.put(None)
        self._thread.join(timeout=timeout)
        for f in self.files.values():
            f.close()


def _jsonable(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def log_files(folder, kind: str) -> List[Path]:
    """Rotated files (oldest first) then the live one."""
    folder = Path(folder)
    rotated = sorted(p for p in folder.glob(f"{kind}.*.jsonl*") if not p.name.endswith(".tmp"))
    live = folder / f"{kind}.jsonl"
    return rotated + ([live] if live.exists() else [])


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
