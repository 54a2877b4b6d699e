"""Cutting audio into analysis windows, offline and streaming, identically.

A window of ``window`` samples starts every ``hop`` samples: window i covers samples
[i*hop, i*hop + window). Offline framing (``frame``) and the streaming ``Windower``
yield exactly the same windows whatever the chunk sizes fed to the latter. A tail
shorter than a window is not emitted (offline: a clip shorter than one window gives
one zero-padded window, see ``frame``).
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np


def window_starts(n: int, window: int, hop: int) -> List[int]:
    if n < window:
        return [0]
    return list(range(0, n - window + 1, hop))


def frame(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """(n_windows, window) float32 view/copy of ``x``; a clip shorter than one window
    gives one window, zero-padded at the end."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) < window:
        out = np.zeros((1, window), np.float32)
        out[0, :len(x)] = x
        return out
    starts = window_starts(len(x), window, hop)
    return np.lib.stride_tricks.sliding_window_view(x, window)[starts]


class Windower:
    """Streaming windows of a mono stream, with the absolute index of their first
    sample. One preallocated buffer of ``window + hop`` samples: feeding never
    allocates except for the windows it returns (copies, safe to keep)."""

    def __init__(self, window: int, hop: int):
        if window < 1 or hop < 1:
            raise ValueError(f"window ({window}) and hop ({hop}) must be positive sample counts")
        self.window, self.hop = int(window), int(hop)
        self._buf = np.zeros(self.window + self.hop, dtype=np.float32)
        self.reset()

    def reset(self, start: int = 0) -> None:
        """Forget buffered audio; the next sample fed is sample ``start``."""
        self._fill = 0          # samples in _buf
        self._skip = 0          # samples still to drop before the next window starts (hop > window)
        self._next_start = start  # absolute index of _buf[0]
        self._emitted = False   # a window was yielded since the reset

    def feed(self, chunk: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield (start_sample, window) for every window completed by ``chunk``."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        pos, n = 0, len(chunk)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                self._next_start += take
                continue
            take = min(len(self._buf) - self._fill, n - pos)
            self._buf[self._fill:self._fill + take] = chunk[pos:pos + take]
            self._fill += take
            pos += take
            while self._fill >= self.window:
                self._emitted = True
                yield self._next_start, self._buf[:self.window].copy()
                if self.hop < self.window:
                    keep = self._fill - self.hop
                    self._buf[:keep] = self._buf[self.hop:self._fill]
                    self._fill = keep
                    self._next_start += self.hop
                else:  # hop >= window: drop the rest of this hop
                    drop_buffered = min(self._fill, self.hop)
                    rest = self._fill - drop_buffered
                    self._buf[:rest] = self._buf[drop_buffered:self._fill]
                    self._fill = rest
                    self._skip = self.hop - drop_buffered
                    self._next_start += drop_buffered
                    if self._skip:
                        break

    def missing(self) -> int:
        """Samples still to be fed before the next window is complete."""
        return self.window - self._fill + self._skip

    def resized(self, window: int, hop: int) -> "Windower":
        """A windower of another window and hop that goes on from this one: the next
        sample fed keeps its absolute index, and the audio buffered (up to one new
        window of it) is kept, so a change of window neither loses nor repeats audio."""
        new = Windower(window, hop)
        pos = self._next_start + self._fill  # absolute index of the next sample to be fed
        k = min(self._fill, new.window)
        new._buf[:k] = self._buf[self._fill - k:self._fill]
        new._fill, new._next_start, new._emitted = k, pos - k, self._emitted
        return new

    def finish_short(self) -> Optional[Tuple[int, np.ndarray]]:
        """At the end of a clip: when it was shorter than one window (nothing yielded
        since the reset), its one window, zero-padded at the end, as ``frame`` gives."""
        if self._emitted or self._fill == 0:
            return None
        out = np.zeros(self.window, np.float32)
        out[:self._fill] = self._buf[:self._fill]
        self._emitted = True
        return self._next_start, out
