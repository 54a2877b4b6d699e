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


def test_the_mel_stage_equals_the_dense_filterbank_and_checks_its_shapes():
    """The C stage (power, each filter over its non-zero bins, log) against the same
    maths with the whole filterbank as a matrix, on random spectra; bad shapes are refused."""
    from edgeqmoe.audio.frontend import _plan
    from edgeqmoe.kernels import _ckernels

    rng = np.random.default_rng(3)
    z = (rng.standard_normal((2, 9, 513)) + 1j * rng.standard_normal((2, 9, 513))).astype(np.complex64)
    _, _, start, length, weights = _plan(MN04_MEL)
    out = np.empty((2, 128, 9), np.float32)
    _ckernels.mel_from_spectrum(z.view(np.float32), 2, 9, 513, start, length, weights, MN04_MEL.log_offset,
                                MN04_MEL.shift, 1.0 / MN04_MEL.scale, out)
    banks = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0).astype(np.float64)
    dense = (np.abs(z.astype(np.complex128)) ** 2) @ banks.T
    want = ((np.log(dense + MN04_MEL.log_offset) + MN04_MEL.shift) / MN04_MEL.scale).transpose(0, 2, 1)
    assert np.abs(out - want).max() < 1e-5
    with pytest.raises(ValueError, match="shapes do not agree"):
        _ckernels.mel_from_spectrum(z.view(np.float32), 2, 9, 512, start, length, weights, 1e-5, 0.0, 1.0, out)


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
