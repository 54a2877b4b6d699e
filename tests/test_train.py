"""Training, quantization-aware layers, MoE-C, protocols, metrics, export, train/eval CLI."""
import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeqmoe.cli import app
from edgeqmoe.embed.cache import save_npz
from edgeqmoe.kernels import get_format
from edgeqmoe.train.config import config_from_dict
from edgeqmoe.train.data import load_data, splits, val_split
from edgeqmoe.stats import compare_samples
from edgeqmoe.train.metrics import cohens_d_paired, paired_tests, scores
from edgeqmoe.train.models import MoE
from edgeqmoe.train.quant import BitLinear, BitNetLinear, quant_act_int8
from edgeqmoe.settings import SettingsError


def synthetic_cache(path, n_clips=120, windows=3, dim=24, classes=3, seed=0):
    """Clusters per class, grouped recordings, three folds, windowed clips."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim)) * 2
    rows = {k: [] for k in ("embedding", "label", "fold", "group", "file", "clip", "start")}
    for c in range(n_clips):
        y = c % classes
        g = c // 4
        for w in range(windows):
            rows["embedding"].append(centers[y] + rng.standard_normal(dim) * 1.2)
            rows["label"].append(y)
            rows["fold"].append(1 + g % 3)
            rows["group"].append(f"g{g}")
            rows["file"].append(f"c{c}.wav")
            rows["clip"].append(c)
            rows["start"].append(w * 0.5)
    arrays = {k: np.array(v) for k, v in rows.items()}
    arrays["embedding"] = arrays["embedding"].astype(np.float32)
    arrays["group"] = arrays["group"].astype(str)
    arrays["file"] = arrays["file"].astype(str)
    arrays.update({"classes": np.array(["a", "b", "c"]), "window_s": np.array(1.0), "hop_s": np.array(0.5),
                   "embedder": np.array(json.dumps({"id": "synthetic", "version": "1", "sample_rate": 16000,
                                                    "dim": dim}))})
    save_npz(path, arrays)
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return synthetic_cache(tmp_path / "syn.npz")


def tiny(name, model, **kw):
    d = {"name": name, "model": {"hidden": [32, 16], **model}, "cv": "folds",
         "train": {"max_epochs": 30, "patience": 5, "batch_size": 32}}
    d.update(kw)
    return config_from_dict(d)


def test_bitlinear_forward_equals_packed_arithmetic():
    torch.manual_seed(0)
    for bits in (1, 2, 4, 8):
        lin = BitLinear(37, 11, bits)
        x = torch.randn(5, 37)
        y = lin(x).detach().numpy()
        f = get_format({1: "q1", 2: "q2", 4: "q4", 8: "q8"}[bits])
        W = lin.weight.detach().numpy()
        codes, scale = f.quantize(W)
        ref = f.ref_linear(f.pack(codes), scale, lin.bias.detach().numpy(), 11, 37, x.numpy())
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    bn = BitNetLinear(37, 11)
    t = bn.ternary()
    assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_ste_passes_gradients():
    lin = BitLinear(8, 4, 2)
    x = torch.randn(3, 8, requires_grad=True)
    lin(x).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    q = quant_act_int8(torch.tensor([[0.5, -1.0, 0.25]]))
    np.testing.assert_allclose(q.numpy(), np.round(np.array([[0.5, -1.0, 0.25]]) * 127) / 127, atol=1e-7)


@pytest.mark.parametrize("curiosity", [False, True])
def test_top1_router_learns_from_the_task_loss(curiosity):
    """Eq. 6 weights the chosen expert by its routing probability (not renormalised
    to 1), so with top-1 the task loss alone reaches the router."""
    torch.manual_seed(0)
    m = MoE(["bitnet", "q4"], 16, 3, top_k=1, curiosity=curiosity, hidden=(16,)).train()
    y = m(torch.randn(64, 16))
    torch.nn.functional.cross_entropy(y, torch.randint(0, 3, (64,))).backward()  # no balance term
    g = sum(p.grad.abs().sum() for p in m.router.parameters() if p.grad is not None)
    assert g > 0
    assert torch.all(m.last["p_router"].max(-1).values <= 1.0)


def test_moe_c_is_deterministic_and_curiosity_changes_routing():
    torch.manual_seed(0)
    m = MoE(["bitnet", "q4", "q8"], 16, 3, top_k=1, curiosity=True, curiosity_alpha=0.0, hidden=(16,)).eval()
    x = torch.randn(200, 16)
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x)
        chosen0 = m.last["experts"].clone()
        m.alpha = 50.0
        m(x)
        chosen50 = m.last["experts"].clone()
    assert torch.equal(y1, y2)  # fixed MC masks at inference
    assert (chosen0 != chosen50).any()  # the KL bonus changes which expert is used
    assert (m.last["uncertainty"] >= -1e-6).all()


def test_protocol_splits(cache):
    d = load_data(cache)
    folds = list(splits(d, "folds"))
    assert [f[0] for f in folds] == ["fold1", "fold2", "fold3"]
    for _, tr, te in folds:
        assert not set(d.group[tr]) & set(d.group[te])  # honest: no recording on both sides
    cv = list(splits(d, "5"))
    assert len(cv) == 5
    for _, tr, te in cv:
        assert not set(d.clip[tr]) & set(d.clip[te])  # clips never split
    covered = np.zeros(len(d.y), bool)
    for _, _, te in cv:
        covered |= te
    assert covered.all()
    a, v = val_split(d, 0.2)
    assert not set(d.group[a]) & set(d.group[v]) and v.any()


def test_metrics():
    s = scores(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    assert s["accuracy"] == 0.6
    # per class F1: c0 (p=.5,r=.5) .5; c1 (p=2/3, r=1) .8; c2 0 -> weighted (2*.5 + 2*.8)/5
    assert abs(s["weighted_f1"] - (2 * 0.5 + 2 * 0.8) / 5) < 1e-12 and abs(s["macro_f1"] - 1.3 / 3) < 1e-12
    t = paired_tests({"a": [0.9, 0.91, 0.92], "b": [0.8, 0.82, 0.81], "ref": [0.9, 0.9, 0.9]}, "ref")
    assert {r["model"] for r in t} == {"a", "b"} and all(r["p_bonferroni"] >= r["p"] for r in t)
    assert cohens_d_paired([1, 2, 3], [0, 0, 0]) > 0
    # clips from windows; with a mask, only kept windows count and a clip with none left is a miss
    from edgeqmoe.train.metrics import clip_scores

    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    y, clip = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])
    whole = clip_scores(proba, y, clip, 2)  # clip means [.55 .45] -> 0, [.45 .55] -> 1
    assert whole["accuracy"] == 1.0 and "missed" not in whole
    masked = clip_scores(proba, y, clip, 2, np.array([True, False, False, False]))
    assert masked["missed"] == 1 and masked["accuracy"] == 0.5 and abs(masked["weighted_f1"] - 0.5) < 1e-12
    c = compare_samples(np.random.default_rng(0).normal(0, 1, 200), np.random.default_rng(1).normal(0, 0.2, 200))
    assert c["variance_reduction"] > 0.9 and c["levene_p"] < 1e-10


def test_config_errors():
    with pytest.raises(SettingsError, match="model.experts\\[1\\]: 'q3' is not an expert kind"):
        config_from_dict({"model": {"experts": ["bitnet", "q3"]}})
    with pytest.raises(SettingsError, match="train.patience: 0 is outside"):
        config_from_dict({"train": {"patience": 0}})
    with pytest.raises(SettingsError, match="model.seeds: a seed ensemble is of heads"):
        config_from_dict({"model": {"kind": "moe", "seeds": 3}})
    c = config_from_dict({"model": {"kind": "moe", "experts": ["bitnet", 4, 8, 16]}})
    assert c.model.expert_kinds == ("bitnet", "q4", "q8", "q16")
    assert c.resolved_train()["lr"] == 1e-3 and config_from_dict({}).resolved_train()["lr"] == 5.79e-4


@pytest.mark.parametrize("model", [{"kind": "head", "expert": "q4"}, {"kind": "head", "expert": "popcount-ptq"},
                                   {"kind": "head", "expert": "q4", "seeds": 3},
                                   {"kind": "moe", "experts": ["bitnet", "q8-ptq", "q16"], "curiosity": True}])
def test_train_export_agree(tmp_path, cache, model):
    from edgeqmoe.train.run import run_training

    cfg = tiny("m", model, out=str(tmp_path / "runs"))
    s = run_training(cfg, cache=cache, log=lambda *_: None)
    # separable synthetic classes (chance: 0.33); binary activations lose more on a tiny net
    assert s["weighted_f1"]["mean"] > (0.45 if model.get("expert") == "popcount-ptq" else 0.7)
    assert s["min_agreement"] >= 0.995 and s["max_abs_proba_diff"] < 0.05
    assert os.path.isfile(s["bundle"]) and s["final_agreement"]["agreement"] >= 0.995
    assert s["export_ok"] and s["final_agreement"]["export_ok"]  # the export gate, checked and passed
    out = tmp_path / "runs" / "m"
    for f in ("folds.csv", "folds.json", "summary.json", "model_card.md"):
        assert (out / f).is_file()
    from edgeqmoe.model.moe import load_model

    m = load_model(s["bundle"])
    d = load_data(cache)
    p1, p2 = m.predict(d.X[:50]), m.predict(d.X[:50])
    np.testing.assert_array_equal(p1.proba, p2.proba)
    if model["kind"] == "moe":
        assert p1.experts.shape == (50, 2) and p1.uncertainty is not None
    if model.get("seeds", 1) > 1:  # the ensemble is the mean of its members, one window at a time too
        from edgeqmoe.model.runtime import softmax

        assert m.kind == "ensemble" and len(m.heads) == model["seeds"] and "seed ensemble of 3" in \
            (out / "model_card.md").read_text()
        xn = m._norm(d.X[:50])
        members = np.stack([softmax(h.forward(xn)) for h in m.heads])
        assert np.abs(members[0] - members[1]).max() > 1e-3  # the seeds made different members
        np.testing.assert_allclose(p1.proba, members.mean(0), atol=1e-6)
        one = np.concatenate([m.predict(d.X[i:i + 1]).proba for i in range(50)])
        np.testing.assert_allclose(one, p1.proba, atol=1e-6)


def test_train_cli(tmp_path, cache):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: cli\nout: {tmp_path / 'runs'}\ncv: '5'\nmodel:\n  expert: q8\n  hidden: [16]\n"
                   f"train:\n  max_epochs: 10\n  patience: 3\n")
    res = CliRunner().invoke(app, ["train", str(cfg), "--cache", cache])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "runs" / "cli" / "summary.json").read_text())
    assert summary["protocol"] == "5" and len(summary["folds"]) == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  expert: q3\n")
    res = CliRunner().invoke(app, ["train", str(bad)])
    assert res.exit_code == 2 and "not an expert kind" in res.output


def test_eval_cli_on_real_clips(tmp_path, us8k):
    """A bundle for the weight-free embedder, scored on shared clips by edgeqmoe eval."""
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES

    b = SHIPPED_BUNDLES / "balanced-weightfree.eqm"
    if not b.is_file():
        pytest.skip("shipped bundles not built")
    res = CliRunner().invoke(app, ["eval", str(b), "--data", us8k, "--fold", "3", "--cache", str(tmp_path / "c"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{"):])
    assert r["n"] == 387 and {"weighted_f1", "accuracy", "macro_f1", "confusion"} <= set(r)
    assert len(r["confusion"]) == 10 and r["weighted_f1"] > 0.3
    from edgeqmoe.kernels import available_variants

    assert r["kernel"] in available_variants()  # the variant actually used, for a single head too


def test_reproduce_paper_tiny(tmp_path, cache):
    import subprocess
    import sys

    out = tmp_path / "results.md"
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools",
                                                     "reproduce_paper.py"),
                        "--cache", cache, "--tiny", "--runs", str(tmp_path / "runs"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "| Q16-Base |" in text and "| BitNet-Q4/8-QMoE-C |" in text and "0.952" in text


def test_moe_single_window_path_equals_batch_path():
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.model.moe import load_model

    for name, routing in (("stable.eqm", "trained"), ("stable.eqm", "router"), ("stable.eqm", "uniform"),
                          ("energy.eqm", "trained")):
        m = load_model(SHIPPED_BUNDLES / name, routing=routing)
        X = np.random.default_rng(0).standard_normal((64, m.in_features)).astype(np.float32)
        batch = m.predict(X)
        m = load_model(SHIPPED_BUNDLES / name, routing=routing)  # uniform: the same seeded draws
        for i in range(64):
            one = m.predict(X[i:i + 1])
            np.testing.assert_allclose(one.proba[0], batch.proba[i], atol=1e-5)
            assert one.experts[0].tolist() == batch.experts[i].tolist()
            assert abs(float(one.uncertainty[0]) - float(batch.uncertainty[i])) < 1e-5
        if routing == "uniform":  # every pair of the three experts is drawn, equally weighted
            assert len({tuple(sorted(e)) for e in batch.experts.tolist()}) == 3
            assert np.allclose(batch.weights, 1 / 3)


def test_eval_of_some_folds_keeps_the_full_cache(tmp_path, us8k):
    """Regression: 'eval --fold 3' once overwrote the whole dataset's cache file."""
    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.embed.cache import embed_dataset, load_embeddings
    from edgeqmoe.embed.stats import LogMelStatsEmbedder
    from edgeqmoe.train.evaluate import evaluate

    cache = tmp_path / "c"
    full = embed_dataset(read_dataset(us8k), LogMelStatsEmbedder(), cache, window=2.0, hop=1.0)
    n = len(load_embeddings(full.output)["label"])
    r = evaluate(str(SHIPPED_BUNDLES / "balanced-weightfree.eqm"), us8k, str(cache), folds=[3])
    assert r["n"] == 387
    assert len(load_embeddings(full.output)["label"]) == n  # untouched
