"""Reading audio files: decode, mix to mono, resample, fix the length.

Decoding: soundfile (libsndfile: wav, flac, ogg/vorbis, and mp3 with libsndfile >=
1.1), falling back to librosa (audioread/ffmpeg) for what libsndfile cannot read.
Mono: the mean of the channels. Resampling: soxr, high quality.

Fixed length (``fix_length``): a clip shorter than the target is zero-padded at the
end; a longer one is cropped to its first ``n`` samples. Zero padding (not looping)
keeps silence honest: the model is never shown a repetition the microphone did not
hear.
"""

from __future__ import annotations

import io
import os
from typing import Tuple, Union

import numpy as np

from .resample import resample


class AudioReadError(Exception):
    """A file that cannot be decoded; the message names it and says why."""


def decode(data_or_path: Union[str, bytes, os.PathLike], name: str | None = None) -> Tuple[np.ndarray, int]:
    """Decode to (mono float32 samples, sample rate) at the file's own rate."""
    name = name or str(data_or_path if not isinstance(data_or_path, bytes) else "<bytes>")
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    try:
        import soundfile as sf

        x, sr = sf.read(src, dtype="float32", always_2d=True)
    except Exception as sf_err:  # libsndfile cannot read it: try librosa's decoders
        try:
            import warnings

            import librosa

            if isinstance(data_or_path, bytes):
                raise AudioReadError(f"{name}: cannot decode ({sf_err})") from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, sr = librosa.load(data_or_path, sr=None, mono=False)
            x = np.atleast_2d(y).T.astype(np.float32)
        except AudioReadError:
            raise
        except Exception as e:
            raise AudioReadError(f"{name}: cannot decode ({sf_err}; {type(e).__name__}: {e})") from None
    if x.size == 0:
        raise AudioReadError(f"{name}: no audio samples")
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if not np.isfinite(mono).all():
        raise AudioReadError(f"{name}: contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


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
