"""Front end: log-mel against the golden mn04 input, streaming windows, file reading."""
import numpy as np
import pytest
import soundfile as sf

from edgeqmoe.audio.frontend import MN04_MEL, kaldi_mel_banks, log_mel
from edgeqmoe.audio.io import AudioReadError, decode, fix_length, load
from edgeqmoe.audio.windowing import Windower, frame, window_starts

MEL_TOL = 1e-4  # the golden mel's stated tolerance


def test_log_mel_matches_golden(golden):
    mel = log_mel(golden["wave32k"])
    assert mel.shape == golden["mel"].shape == (7, 128, 400)
    assert np.abs(mel - golden["mel"]).max() < MEL_TOL
    single = log_mel(golden["wave32k"][3])
    assert np.abs(single - golden["mel"][3]).max() < MEL_TOL


def test_filterbank_is_cached_and_kaldi_shaped():
    a = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    b = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert a is b and a.shape == (128, 513) and not a.flags.writeable
    assert (a[:, 512] == 0).all() and (a >= 0).all()
    assert MN04_MEL.n_frames(128000) == 400


@pytest.mark.parametrize("spec_name,sr,n", [("mn04", 16000, 16000), ("mn04", 16000, 8001), ("mn04", 32000, 32000),
                                             ("mn04", 32000, 12345), ("stats", 16000, 16000)])
def test_every_front_end_variant_equals_the_float64_reference(rng, spec_name, sr, n):
    """The C front end (2x upsampling with the pre-emphasis, reflection padding, frames,
    FFT batched across SIMD lanes, filters, log) against the same maths in float64 numpy,
    for every variant this CPU runs, odd lengths included; non-finite samples read as 0."""
    from edgeqmoe.audio.frontend import available_variants, log_mel_reference
    from edgeqmoe.embed.stats import STATS_MEL

    spec = MN04_MEL if spec_name == "mn04" else STATS_MEL
    x = (rng.standard_normal((2, n)) * np.array([[0.3], [0.003]])).astype(np.float32)
    x[1, 100], x[1, 2000], x[0, n - 1] = np.nan, np.inf, -np.inf
    want = log_mel_reference(x, spec, sr=sr)
    variants = available_variants()
    assert "generic" in variants
    for v in variants:
        got = log_mel(x, spec, sr=sr, variant=v)
        assert got.shape == want.shape and np.isfinite(got).all(), v
        # float32 sums against float64: up to 1e-4 where a loud window's bins above 8 kHz hold
        # only leakage (1e-9 of its loudest bin), far less elsewhere
        assert np.abs(got - want).max() < 3e-4, (v, float(np.abs(got - want).max()))
    with pytest.raises(ValueError, match="not available"):
        log_mel(x, spec, sr=sr, variant="sse9")


def test_the_16k_front_end_keeps_mn04_embeddings(mn04):
    """Windows of real 16 kHz clips: the C front end with its own upsampler against soxr 'HQ'
    followed by the same 32 kHz front end: mn04 (fp32) embeddings keep cosine >= 0.9999."""
    from conftest import one_clip_per_class

    from edgeqmoe.audio.io import load
    from edgeqmoe.audio.resample import resample
    from edgeqmoe.audio.windowing import frame

    _, clips = one_clip_per_class()
    wins = np.concatenate([frame(load(c.path, 16000), 16000, 16000) for c in clips])
    ours = log_mel(wins, sr=16000)
    soxr_path = log_mel(resample(wins, 16000, 32000))
    e1, _ = mn04.forward_mel(ours)
    e2, _ = mn04.forward_mel(soxr_path)
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    print(f"{len(wins)} windows: cosine min {cos.min():.7f} mean {cos.mean():.7f}")
    assert len(wins) >= 30 and cos.min() >= 0.9999


def test_short_audio_is_refused():
    with pytest.raises(ValueError, match="too short"):
        log_mel(np.zeros(100, np.float32))


@pytest.mark.parametrize("window,hop", [(16000, 8000), (16000, 16000), (16000, 4000), (1000, 3000)])
def test_windower_matches_offline_framing(rng, window, hop):
    x = rng.standard_normal(70000).astype(np.float32)
    ref = frame(x, window, hop)
    starts = window_starts(len(x), window, hop)
    for chunk in (160, 1000, 1600, 16000, 7, 70000):
        w = Windower(window, hop)
        got = []
        for i in range(0, len(x), chunk):
            got += list(w.feed(x[i:i + chunk]))
        assert [s for s, _ in got] == starts
        assert len(got) == len(ref)
        for (_, a), b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
        w.reset()
        assert list(w.feed(x[:window]))[0][0] == 0


def test_chunk_size_gives_identical_mels(rng):
    x = (rng.standard_normal(16000 * 5) * 0.1).astype(np.float32)
    mels = {}
    for chunk in (160, 1000, 1600, 16000):
        w = Windower(16000, 8000)
        wins = [win for i in range(0, len(x), chunk) for _, win in w.feed(x[i:i + chunk])]
        mels[chunk] = np.stack([log_mel(np.repeat(win, 2)) for win in wins])
    for chunk in (1000, 1600, 16000):
        np.testing.assert_array_equal(mels[chunk], mels[160])


def test_windower_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        Windower(0, 10)


def test_frame_pads_short_clip():
    f = frame(np.ones(10, np.float32), 16, 8)
    assert f.shape == (1, 16) and f[0, :10].sum() == 10 and f[0, 10:].sum() == 0


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_read_formats_mix_and_resample(tmp_path, rng, fmt, subtype):
    sr = 22050
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], 1).astype(np.float32) * 0.5
    p = tmp_path / f"a.{fmt.lower()}"
    sf.write(p, stereo, sr, format=fmt, subtype=subtype)
    x, got_sr = decode(str(p))
    assert got_sr == sr and x.ndim == 1 and len(x) == sr
    np.testing.assert_allclose(x, stereo.mean(1), atol=0.05)
    y = load(str(p), 16000, seconds=2.0)
    assert y.shape == (32000,) and np.abs(y[16100:]).max() == 0  # padded at the end with zeros
    # a 440 Hz tone stays at 440 Hz after resampling
    spec = np.abs(np.fft.rfft(y[:16000]))
    assert abs(np.argmax(spec) - 440) <= 1


def test_read_mp3_when_libsndfile_can(tmp_path):
    t = np.arange(16000) / 16000
    p = tmp_path / "a.mp3"
    try:
        sf.write(p, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format="MP3")
    except Exception:
        pytest.skip("this libsndfile cannot write mp3")
    x, sr = decode(str(p))
    assert sr == 16000 and len(x) > 15000


def test_bad_and_missing_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioReadError, match="bad.wav: cannot decode"):
        decode(str(bad))
    with pytest.raises(AudioReadError, match="missing.flac"):
        decode(str(tmp_path / "missing.flac"))


def test_fix_length():
    assert fix_length(np.ones(5, np.float32), 3).tolist() == [1, 1, 1]
    assert fix_length(np.ones(2, np.float32), 4).tolist() == [1, 1, 0, 0]
