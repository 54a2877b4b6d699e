"""Dataset layouts and the resumable embedding cache."""
import json
import os

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from edgeqmoe.audio.datasets import DatasetError, read_dataset
from edgeqmoe.audio.io import decode
from edgeqmoe.cli import app
from edgeqmoe.embed.cache import embed_dataset, load_embeddings
from edgeqmoe.embed.stats import LogMelStatsEmbedder


def tone(freq, seconds=1.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    for c, f in (("beep", 440), ("hum", 120)):
        (root / c).mkdir(parents=True)
        for i in range(3):
            sf.write(root / c / f"{c}{i}.wav", tone(f * (1 + i / 10)), 16000)
    return root


@pytest.fixture
def esc(tmp_path):
    root = tmp_path / "ESC-50"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (cat, tgt) in enumerate((("dog", 0), ("rain", 1), ("dog", 0))):
        name = f"{i + 1}-{100 + i}-A-{tgt}.wav"
        sf.write(root / "audio" / name, tone(300 + 100 * i), 16000)
        rows.append(f"{name},{i + 1},{tgt},{cat},False,{100 + i},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_urbansound_layout(us8k):
    ds = read_dataset(us8k)
    assert len(ds) == 2148 and ds.layout == "urbansound8k" and len(ds.classes) == 10
    c = ds.clips[0]
    assert c.file_id == "fold1/101415-3-0-2.flac" and c.group == "101415" and c.fold == 1 and c.label == 3
    assert ds.classes[3] == "dog_bark" and os.path.isfile(c.path)
    assert read_dataset(os.path.join(us8k, "metadata.csv")).clips[5] == ds.clips[5]


def test_esc50_layout(esc):
    ds = read_dataset(esc)
    assert ds.layout == "esc50" and ds.classes == ["dog", "rain"]
    assert [c.fold for c in ds.clips] == [1, 2, 3] and ds.clips[1].group == "101"
    assert ds.clips[0].file_id == "audio/1-100-A-0.wav" and os.path.isfile(ds.clips[0].path)


def test_folder_layout(tree):
    ds = read_dataset(tree)
    assert ds.layout == "folders" and ds.classes == ["beep", "hum"] and len(ds) == 6
    assert ds.clips[3].file_id == "hum/hum0.wav" and ds.clips[3].fold == -1


def test_bad_datasets(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nothing")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="unknown columns"):
        read_dataset(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no metadata CSV and no class folders"):
        read_dataset(tmp_path / "empty")


def test_embed_cache_resumes_and_reports(tree, tmp_path):
    ds = read_dataset(tree)
    emb = LogMelStatsEmbedder()
    out = tmp_path / "cache"
    s1 = embed_dataset(ds, emb, out)
    assert (s1.computed, s1.reused, len(s1.failed), s1.rows) == (6, 0, 0, 6)
    z = load_embeddings(s1.output)
    assert z["embedding"].shape == (6, 320) and z["embedding"].dtype == np.float32
    assert list(z["label"]) == [0, 0, 0, 1, 1, 1] and z["file"][0] == "beep/beep0.wav"
    assert list(z["classes"]) == ["beep", "hum"] and json.loads(str(z["embedder"]))["id"] == "logmel-stats"
    np.testing.assert_allclose(z["embedding"][0], emb.embed(decode(str(tree / "beep" / "beep0.wav"))[0], 16000),
                               rtol=1e-6)
    # a rerun computes nothing
    s2 = embed_dataset(ds, emb, out)
    assert (s2.computed, s2.reused) == (0, 6)
    np.testing.assert_array_equal(load_embeddings(s2.output)["embedding"], z["embedding"])
    # a changed file is recomputed; a broken one is reported, skipped and counted
    sf.write(tree / "beep" / "beep1.wav", tone(1000), 16000)
    (tree / "hum" / "hum2.wav").write_bytes(b"garbage")
    s3 = embed_dataset(read_dataset(tree), emb, out)
    assert (s3.computed, s3.reused, s3.rows) == (1, 4, 5)
    assert s3.failed and s3.failed[0][0] == "hum/hum2.wav" and "cannot decode" in s3.failed[0][1]
    z3 = load_embeddings(s3.output)
    np.testing.assert_allclose(z3["embedding"][1], emb.embed(decode(str(tree / "beep" / "beep1.wav"))[0], 16000),
                               rtol=1e-6)
    assert "hum/hum2.wav" not in list(z3["file"])


def test_embed_cache_windows(tree, tmp_path):
    ds = read_dataset(tree)
    s = embed_dataset(ds, LogMelStatsEmbedder(), tmp_path / "c", window=0.5, hop=0.25)
    z = load_embeddings(s.output)
    assert s.output.endswith(".w0.5-h0.25.npz")
    assert len(z["label"]) == 6 * 3  # 1 s clips: windows at 0, 0.25, 0.5 s
    assert list(z["start"][:3]) == [0.0, 0.25, 0.5] and list(z["clip"][:3]) == [0, 0, 0]
    assert float(z["window_s"]) == 0.5


def test_embed_cli(tree, tmp_path):
    res = CliRunner().invoke(app, ["embed", str(tree), "-e", "logmel-stats", "-o", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["rows"] == 6 and summary["failed"] == 0
    bad = CliRunner().invoke(app, ["embed", str(tmp_path / "nope"), "-o", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "no such file or folder" in bad.output


def test_embed_cli_missing_weights(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEQMOE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    res = CliRunner().invoke(app, ["embed", str(tree), "-e", "mn04", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2
    assert "mn04 weights not found" in res.output and "edgeqmoe weights fetch mn04" in res.output
