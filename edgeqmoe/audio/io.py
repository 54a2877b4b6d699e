"""Reading audio files: decode, mix to mono, resample, fix the length.

Decoding: soundfile (libsndfile: wav, flac, ogg/vorbis, and mp3 with libsndfile >=
1.1), falling back to librosa (audioread/ffmpeg) for what libsndfile cannot read.
Mono: the mean of the channels. Resampling: soxr, high quality.

Streaming (``stream``): a file is read in blocks and resampled by soxr's streaming
resampler, so memory stays that of one block whatever the file's length (the daemon's
file and dir sources use it). A file whose header declares a rate outside
``MIN_RATE``..``MAX_RATE`` is refused before anything is allocated.

Fixed length (``fix_length``): a clip shorter than the target is zero-padded at the
end; a longer one is cropped to its first ``n`` samples. Zero padding (not looping)
keeps silence honest: the model is never shown a repetition the microphone did not
hear.
"""

from __future__ import annotations

import io
import os
from typing import Iterator, Tuple, Union

import numpy as np

from .resample import resample

#: sample rates a file may declare (Hz); outside them the header is wrong
MIN_RATE, MAX_RATE = 1000, 768_000
#: seconds of audio decoded at a time by ``stream``
STREAM_BLOCK_S = 1.0


class AudioReadError(Exception):
    """A file that cannot be decoded; the message names it and says why."""


def display_name(path) -> str:
    """A file name fit to print and log, whatever bytes the file system gave it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_rate(name: str, sr: int) -> None:
    if not MIN_RATE <= sr <= MAX_RATE:
        raise AudioReadError(f"{name}: the file declares {sr} Hz; a sample rate from {MIN_RATE} to {MAX_RATE} Hz "
                             "is expected (a damaged or mislabelled header)")


def _check_not_empty(path, name: str) -> None:
    try:
        if os.path.getsize(path) == 0:
            raise AudioReadError(f"{name}: the file is empty (0 bytes)")
    except OSError as e:
        raise AudioReadError(f"{name}: cannot read it ({e.strerror})") from None


def _undecodable(name: str, sf_err: Exception, other: Exception | None = None) -> AudioReadError:
    """What a user is told of a file no decoder reads: the file, and why in words, not
    the decoders' internals."""
    why = str(sf_err).split(": ", 1)[-1].strip() if sf_err else ""
    if "not recognised" in why.lower() or type(other).__name__ == "NoBackendError":
        why = "not a recognised audio format (WAV, FLAC, OGG, MP3, or what ffmpeg reads)"
    return AudioReadError(f"{name}: cannot decode it: {why or type(sf_err).__name__}")


def stream(path, sr: int, block_s: float = STREAM_BLOCK_S) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``path`` resampled to ``sr``, decoded a block at a time."""
    import soundfile as sf
    import soxr

    name = display_name(path)
    _check_not_empty(path, name)
    try:
        f = sf.SoundFile(os.fsencode(path))
    except Exception:  # not for libsndfile: decode whole with the fallback decoders
        yield load(path, sr)
        return
    with f:
        _check_rate(name, f.samplerate)
        rs = soxr.ResampleStream(f.samplerate, sr, 1, dtype="float32", quality="HQ") if f.samplerate != sr else None
        frames = max(1, int(f.samplerate * block_s))
        seen = 0
        while True:
            try:
                x = f.read(frames, dtype="float32", always_2d=True)
            except Exception as e:
                raise AudioReadError(f"{name}: cannot decode after {seen / f.samplerate:.1f} s ({e})") from None
            last = len(x) < frames
            if len(x):
                mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
                mono = full_scale(mono, name, f" after {seen / f.samplerate:.1f} s")
                seen += len(x)
            else:
                mono = np.zeros(0, np.float32)
            out = rs.resample_chunk(np.ascontiguousarray(mono), last=last) if rs is not None else mono
            if len(out):
                yield np.ascontiguousarray(out, dtype=np.float32)
            if last:
                break
        if seen == 0:
            raise AudioReadError(f"{name}: no audio samples")


def decode(data_or_path: Union[str, bytes, os.PathLike], name: str | None = None) -> Tuple[np.ndarray, int]:
    """Decode to (mono float32 samples, sample rate) at the file's own rate."""
    name = name or (display_name(data_or_path) if not isinstance(data_or_path, bytes) else "<bytes>")
    if not isinstance(data_or_path, bytes):
        _check_not_empty(data_or_path, name)
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else os.fsencode(data_or_path)
    try:
        import soundfile as sf

        with sf.SoundFile(src) as f:
            _check_rate(name, f.samplerate)
            x, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except AudioReadError:
        raise
    except Exception as sf_err:  # libsndfile cannot read it: try librosa's decoders
        try:
            import warnings

            import librosa

            if isinstance(data_or_path, bytes):
                raise _undecodable(name, sf_err) from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, sr = librosa.load(data_or_path, sr=None, mono=False)
            x = np.atleast_2d(y).T.astype(np.float32)
        except AudioReadError:
            raise
        except Exception as e:
            raise _undecodable(name, sf_err, e) from None
    if x.size == 0:
        raise AudioReadError(f"{name}: no audio samples")
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(full_scale(mono, name), dtype=np.float32), int(sr)


def full_scale(x: np.ndarray, name: str, where: str = "") -> np.ndarray:
    """``x`` checked and clipped in one pass: NaN or infinity is an AudioReadError naming
    the file; finite samples beyond full scale (a float file may hold any) are clipped
    to [-1, 1], as a converter would, so levels and features stay finite."""
    top = float(np.max(np.abs(x))) if x.size else 0.0  # NaN or inf anywhere makes it so
    if not np.isfinite(top):
        raise AudioReadError(f"{name}: contains NaN or infinite samples{where}")
    return np.clip(x, -1.0, 1.0) if top > 1.0 else x


def fix_length(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end or crop to the first ``n`` samples."""
    if len(x) >= n:
        return x[:n]
    out = np.zeros(n, dtype=np.float32)
    out[:len(x)] = x
    return out


def load(path, sr: int, seconds: float | None = None) -> np.ndarray:
    """Mono float32 at ``sr``, optionally fixed to ``seconds``."""
    x, file_sr = decode(path)
    x = resample(x, file_sr, sr)
    if seconds is not None:
        x = fix_length(x, int(round(seconds * sr)))
    return x
