"""Log-mel front ends (in C, eq_mel.h; no torch, no scipy), with filterbanks computed once and cached.

``MN04_MEL`` is the exact input the AudioSet-pretrained mn04 weights expect (see the
project's model notes): 32 kHz mono float32; pre-emphasis y[n] = x[n] - 0.97 x[n-1]
("valid", one sample shorter); STFT with n_fft 1024, a symmetric 800-sample Hann
window centred in the 1024 frame, hop 320, centre padding by reflection; power
re^2 + im^2; 128 triangular Kaldi-style mel filters (mel(f) = 1127 ln(1 + f/700),
edges equally spaced in mel from 0 to 15 kHz, evaluated at the mel of each FFT bin
centre k * 32000/1024 for k < 512, a zero column for bin 512); then
(log(mel + 1e-5) + 4.5) / 5. A 4 s clip gives 128 x 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class MelSpec:
    """Parameters of a log-mel front end. Frequencies in Hz, lengths in samples."""

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 800
    hop: int = 320
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 15000.0
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    shift: float = 4.5
    scale: float = 5.0

    def n_frames(self, n_samples: int) -> int:
        """Frames of a clip of ``n_samples`` (after pre-emphasis, centre padding)."""
        n = n_samples - (1 if self.preemphasis else 0)
        return 1 + n // self.hop


MN04_MEL = MelSpec()


def kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) float32 triangular filters, Kaldi style, last column 0."""
    n_bins = n_fft // 2
    mel_lo, mel_hi = kaldi_mel(fmin), kaldi_mel(fmax)
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    b = np.arange(n_mels)[:, None]
    left, center, right = mel_lo + b * delta, mel_lo + (b + 1) * delta, mel_lo + (b + 2) * delta
    mel = kaldi_mel(np.arange(n_bins) * (sample_rate / n_fft))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    out = np.zeros((n_mels, n_bins + 1), dtype=np.float32)
    out[:, :n_bins] = banks
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def padded_window(n_fft: int, win_length: int) -> np.ndarray:
    """Symmetric Hann of ``win_length`` centred in ``n_fft`` zeros (float64)."""
    w = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    n = np.arange(win_length)
    w[left:left + win_length] = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (win_length - 1))
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def _plan(spec: MelSpec):
    """What every call of ``log_mel`` with ``spec`` reuses: the window's non-zero span
    (float32), and each mel filter as its non-zero span of FFT bins (start, length) with
    its weights there, all filters' weights in one array."""
    left = (spec.n_fft - spec.win_length) // 2
    win = padded_window(spec.n_fft, spec.win_length)[left:left + spec.win_length].astype(np.float32)
    banks = kaldi_mel_banks(spec.n_mels, spec.n_fft, spec.sample_rate, spec.fmin, spec.fmax)
    start, length, weights = [], [], []
    for row in banks:
        nz = np.flatnonzero(row)
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        start.append(lo), length.append(hi - lo), weights.append(row[lo:hi])
    start, length = np.array(start, np.int32), np.array(length, np.int32)
    weights = np.ascontiguousarray(np.concatenate(weights), dtype=np.float32)
    for a in (win, start, length, weights):
        a.setflags(write=False)
    return left, win, start, length, weights


#: The 2x upsampler of 16 kHz input (``log_mel(..., sr=spec.sample_rate // 2)``): a
#: Kaiser-windowed sinc of 2 * UP2_HALF + 1 taps at the output rate, cut-off UP2_CUTOFF_HZ,
#: Kaiser beta UP2_BETA. Flat (to 0.0001 dB) to 7.2 kHz, -6 dB at 7.66 kHz, below -88 dB from
#: 8 kHz on. Chosen by measurement against the soxr 'HQ' resampling it replaces: mn04
#: embeddings of real windows keep cosine >= 0.99999 (a shorter filter's images above 8 kHz,
#: where the log-mel reads near-silence, cost more: 257 taps gave a minimum of 0.997).
UP2_HALF = 160
UP2_BETA = 8.75
UP2_CUTOFF_HZ = 7655.0


@lru_cache(maxsize=8)
def upsampler_taps(spec: MelSpec):
    """The upsampling filter h (2 * UP2_HALF + 1 taps at the spec's rate, symmetric, gain 2:
    x32[m] = sum_i h[m - 2i] x[i]) as its two phases' halves, float32: he[d] = h[2d] for
    d = 0..D and ho[d] = h[2d + 1] for d = 0..D-1, D = UP2_HALF / 2. So
    x32[2j] = he[0] x[j] + sum_{d>=1} he[d] (x[j-d] + x[j+d]) and
    x32[2j+1] = sum_{d>=0} ho[d] (x[j-d] + x[j+d+1])."""
    rate = spec.sample_rate
    m = np.arange(-UP2_HALF, UP2_HALF + 1)
    h = 2.0 * (2.0 * UP2_CUTOFF_HZ / rate) * np.sinc(2.0 * UP2_CUTOFF_HZ * m / rate) * np.kaiser(len(m), UP2_BETA)
    centre = h[UP2_HALF:]
    he, ho = np.ascontiguousarray(centre[0::2], np.float32), np.ascontiguousarray(centre[1::2], np.float32)
    for a in (he, ho):
        a.setflags(write=False)
    return he, ho


@lru_cache(maxsize=8)
def _engine(spec: MelSpec, n_in: int, up2: bool, variant: str):
    """The C front end for windows of ``n_in`` samples (its buffers are allocated here, once)."""
    from ..kernels import _ckernels

    _, win, start, length, weights = _plan(spec)
    he, ho = upsampler_taps(spec) if up2 else (np.zeros(2, np.float32), np.zeros(1, np.float32))
    return _ckernels.Mel(variant, n_in, int(up2), he, ho, float(spec.preemphasis), spec.n_fft, spec.hop,
                         win, start, length, weights, spec.log_offset, spec.shift, 1.0 / spec.scale)


def front_end_variant(choice: str | None = None) -> str:
    """The kernel variant whose front end runs for a kernel choice (a profile's
    ``model.kernel``: ref, generic, simd or a variant's name; None: EDGEQMOE_KERNEL,
    else simd; EDGEQMOE_ISA caps it): one choice picks every C path. The front end has
    no numpy twin in the hot path, so ``ref`` runs the portable C."""
    import os

    return _front_end_variant(choice, os.environ.get("EDGEQMOE_KERNEL"), os.environ.get("EDGEQMOE_ISA"))


@lru_cache(maxsize=16)
def _front_end_variant(choice: str | None, env_kernel: str | None, env_isa: str | None) -> str:
    """``front_end_variant``, once per choice and environment (it runs with every window)."""
    from ..kernels import resolve_variant

    v = resolve_variant(choice)
    return "generic" if v == "ref" else v


def implementation(variant: str | None = None) -> str:
    """The name of the C front end that a kernel variant runs (avx512vbmi runs avx512's;
    neon and dotprod the portable one)."""
    from ..kernels import _ckernels

    _, win, start, length, weights = _plan(MN04_MEL)
    return _ckernels.Mel(front_end_variant(variant), 2048, 0, np.zeros(2, np.float32), np.zeros(1, np.float32), 0.97,
                         1024, 320, win, start, length, weights, 1e-5, 0.0, 1.0).variant


def available_variants():
    """The distinct C front ends this CPU runs, best first (by the names ``implementation``
    gives)."""
    from ..kernels import available_variants as kernel_variants

    return list(dict.fromkeys(implementation(v) for v in kernel_variants()))


def log_mel(wave: np.ndarray, spec: MelSpec = MN04_MEL, sr: int | None = None,
            variant: str | None = None) -> np.ndarray:
    """Log-mel of a mono waveform at ``sr`` (default ``spec.sample_rate``): (n_mels, frames)
    float32. Accepts (n,) or (batch, n); a batch gives (batch, n_mels, frames).

    In C (``_ckernels.Mel``, eq_mel.h), one pass per window: at half the spec's rate (16 kHz
    for mn04) the 2x upsampling (``upsampler_taps``, applied by overlap-save FFT convolution,
    both phases in one inverse FFT) and the pre-emphasis; at the spec's rate the pre-emphasis;
    then reflection padding, the windowed frames, a real FFT batched across frames in SIMD
    lanes, the power, each triangular filter over its non-zero bins, the log.
    Any other rate is resampled to the spec's rate first (soxr 'HQ'). Non-finite samples are
    read as 0. ``variant``: a kernel choice (``front_end_variant``); None: the environment's
    choice, else the best this CPU runs.
    """
    x = np.asarray(wave, dtype=np.float32)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    sr = spec.sample_rate if sr is None else int(sr)
    up2 = 2 * sr == spec.sample_rate
    if sr != spec.sample_rate and not up2:
        from .resample import resample

        x, sr = resample(x, sr, spec.sample_rate), spec.sample_rate
    n = x.shape[1]
    n_out = 2 * n - 1 if up2 else n - (1 if spec.preemphasis else 0)
    if n_out <= spec.n_fft // 2:
        raise ValueError(f"audio of {n} samples is too short for a {spec.n_fft}-point STFT")
    eng = _engine(spec, n, up2, front_end_variant(variant))
    out = np.empty((x.shape[0], spec.n_mels, eng.frames), np.float32)
    eng.run(np.ascontiguousarray(x), out)
    return out[0] if single else out


def log_mel_reference(wave: np.ndarray, spec: MelSpec = MN04_MEL, sr: int | None = None) -> np.ndarray:
    """The same maths as ``log_mel`` in float64 numpy (the upsampler as a convolution, the
    FFT and the filterbank as a matrix): what the C front end is checked against. Slow."""
    x = np.nan_to_num(np.atleast_2d(np.asarray(wave, dtype=np.float64)), nan=0.0, posinf=0.0, neginf=0.0)
    sr = spec.sample_rate if sr is None else int(sr)
    p = float(spec.preemphasis)
    if 2 * sr == spec.sample_rate:
        he, ho = (a.astype(np.float64) for a in upsampler_taps(spec))
        h = np.zeros(4 * len(ho) + 1)  # the whole filter again, from its float32 halves
        h[2 * len(ho)::2], h[2 * len(ho) + 1::2] = he, ho
        h[:2 * len(ho)] = h[:2 * len(ho):-1]
        n = x.shape[1]
        up = np.zeros((x.shape[0], 2 * n))
        up[:, 0::2] = x
        x32 = np.stack([np.convolve(r, h)[2 * len(ho):2 * len(ho) + 2 * n] for r in up])
        y = x32[:, 1:] - p * x32[:, :-1]
    elif sr == spec.sample_rate:
        y = x[:, 1:] - p * x[:, :-1] if p else x
    else:
        raise ValueError("the reference takes the spec's rate or half of it")
    pad = spec.n_fft // 2
    y = np.concatenate([y[:, pad:0:-1], y, y[:, -2:-pad - 2:-1]], axis=1)
    n_frames = 1 + (y.shape[1] - spec.n_fft) // spec.hop
    win = padded_window(spec.n_fft, spec.win_length)
    frames = np.lib.stride_tricks.sliding_window_view(y, spec.n_fft, axis=1)[:, ::spec.hop][:, :n_frames]
    power = np.abs(np.fft.rfft(frames * win, axis=-1)) ** 2
    banks = kaldi_mel_banks(spec.n_mels, spec.n_fft, spec.sample_rate, spec.fmin, spec.fmax).astype(np.float64)
    mel = (np.log(power @ banks.T + spec.log_offset) + spec.shift) / spec.scale
    out = mel.transpose(0, 2, 1).astype(np.float32)
    return out[0] if np.asarray(wave).ndim == 1 else out
