"""Tiny runs of the benchmarks, so they never rot."""
import json
import os
import re

import pytest
from typer.testing import CliRunner

from edgeqmoe.cli import app

ROW_KEYS = {"impl", "in_features", "out_features", "batch", "median_us", "p99_us", "ratio_vs_torch_fp32",
            "ratio_vs_torch_int8", "what"}


def test_bench_kernels_tiny(tmp_path):
    out = tmp_path / "k.json"
    res = CliRunner().invoke(app, ["bench", "kernels", "--in-features", "128", "--out-features", "64",
                                   "--hidden", "64", "--hidden", "32", "--rounds", "1", "--per-round", "3",
                                   "--format", "q4", "--format", "popcount", "--all-variants", "--json", str(out),
                                   "--markdown", str(tmp_path / "k.md")])
    assert res.exit_code == 0, res.output
    assert "torch_fp32" in res.output and "machine:" in res.output
    assert "| layer 128x64 | torch_fp32 |" in (tmp_path / "k.md").read_text()
    data = json.loads(out.read_text())
    assert data["machine"]["cpu"] and data["machine"]["cpu_features"] is not None
    rows = data["rows"]
    assert {r["what"] for r in rows} == {"layer", "head"}
    impls = {r["impl"] for r in rows}
    assert {"torch_fp32", "torch_int8_dynamic", "numpy_fp32", "q4", "popcount"} <= impls
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert r["median_us"] > 0 and r["p99_us"] >= r["median_us"]
        assert r["ratio_vs_torch_fp32"] > 0
    fp32 = [r for r in rows if r["impl"] == "torch_fp32" and r["what"] == "layer"][0]
    assert fp32["ratio_vs_torch_fp32"] == 1.0 and (fp32["in_features"], fp32["out_features"]) == (128, 64)


def test_bench_rejects_unknown_format():
    res = CliRunner().invoke(app, ["bench", "kernels", "--format", "q3", "--rounds", "1", "--per-round", "1"])
    assert res.exit_code != 0
    assert "unknown format 'q3'" in res.output


def test_x86_throughput_tool_builds_and_runs(tmp_path):
    import os
    import platform
    import shutil
    import subprocess

    import pytest

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 tool")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "x86_throughput.c")
    exe = str(tmp_path / "tp")
    subprocess.run([shutil.which("cc") or "gcc", "-O2", src, "-o", exe], check=True, timeout=120)
    out = subprocess.run([exe, "8000"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "vpdpbusd_zmm" in out.stdout or "nothing to measure" in out.stdout


def test_bench_embedders_tiny(tmp_path, monkeypatch):
    out = tmp_path / "e.json"
    res = CliRunner().invoke(app, ["bench", "embedders", "-e", "logmel-stats", "--rounds", "1", "--per-round", "3",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["embedder"] == "logmel-stats" and rows[0]["median_ms"] > 0 and rows[0]["n"] == 3


def test_bench_embedders_without_weights_times_what_it_can(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQMOE_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["bench", "embedders", "--rounds", "1", "--per-round", "2"])
    assert res.exit_code == 0, res.output
    assert "logmel-stats" in res.output and "mn04" in res.output and "not timed" in res.output


def test_bench_latency_tiny(tmp_path, monkeypatch, us8k):
    """Weight-free fallback (no weights here): also shows torch is never imported."""
    monkeypatch.setenv("EDGEQMOE_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import subprocess
    import sys

    out = tmp_path / "lat.json"
    r = subprocess.run([sys.executable, "-m", "edgeqmoe.cli", "bench", "latency", "--data",
                        os.path.join(us8k, "fold3"), "--windows", "20", "--profile", "stable", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    row = res["rows"][0]
    assert row["profile"] == "stable" and row["fallback"] and row["n"] == 20 and not row["torch_imported"]
    assert set(row["stages_ms"]) == {"embed", "head", "decision", "total"}
    # modelled energy per window: its median CPU time x the machine class's watts per core
    w = float(row["energy_model"].split(" x ")[1].split(" W/core")[0])
    assert row["energy_mj_p50"] == pytest.approx(row["cpu_ms"]["p50"] * w, rel=1e-3, abs=1e-4)
    # and per hour of listening: one window every hop
    assert row["hop_s"] == 1.0
    assert row["energy_j_per_hour"] == pytest.approx(row["energy_mj_p50"] * 3600 / row["hop_s"] / 1e3, rel=2e-3)
    assert "mJ per window" in r.stdout and "J per hour of listening (3600 windows)" in r.stdout
    assert "modelled: cpu-time x" in r.stdout


def test_bench_models_tiny(tmp_path):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["bench", "models", "--windows", "8", "--json", str(out),
                                   "--markdown", str(tmp_path / "m.md")])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert {r["name"] for r in rows} >= {"balanced", "stable", "latency-critical"}
    for r in rows:
        assert r["energy_method"] == "modelled" and r["size_kb"] > 0 and r["n"] == 8
    assert "| stable | moe" in (tmp_path / "m.md").read_text()


def test_routing_stability_compares_three_routings():
    """The stable bundle as configured (fixed work) against uniform routing and the
    router's top-k, on random embeddings: every number present, uniform routing draws
    every expert pair."""
    from types import SimpleNamespace

    import numpy as np

    from edgeqmoe.bench.latency import routing_stability
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.model.moe import load_model

    path = str(SHIPPED_BUNDLES / "stable.eqm")
    pipe = SimpleNamespace(model=load_model(path, evaluate_all=True), built=SimpleNamespace(bundle=path))
    embs = np.random.default_rng(0).standard_normal((60, pipe.model.in_features)).astype(np.float32)
    s = routing_stability(pipe, embs)
    assert s["n_each"] == 60 and s["repeats"] == 5 and s["routes_uniform"] == 3 and s["routes_curiosity"] >= 1
    for key in ("variance_reduction", "variance_reduction_vs_router", "variance_reduction_first"):
        # 1 - var(B)/var(A): a ratio of timings, whatever the machine's load (never asserted beyond that)
        assert np.isfinite(s[key]) and s[key] <= 1
    assert 0 <= s["levene_p"] <= 1 and 0 <= s["levene_p_vs_router"] <= 1
    assert s["curiosity_ms"]["p50"] > 0 and s["uniform_ms"]["p50"] > 0 and s["router_ms"]["p50"] > 0


def test_bench_embedders_times_mn04_on_each_runtime(tmp_path, weights_dir):
    """mn04 on our integer kernels, ONNX Runtime and torch, side by side in one run."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "e.json"
    res = CliRunner().invoke(app, ["bench", "embedders", "-e", "mn04", "--rounds", "1", "--per-round", "3",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {(r["embedder"], r["what"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(e, w) for e in ("mn04/int8", "mn04/onnxruntime", "mn04/torch") for w in ("whole", "network")}
    for r in rows.values():
        assert r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] and r["n"] == 3 and r["window_s"] == 1.0
    assert rows[("mn04/onnxruntime", "whole")]["impl"] == "mn04/onnxruntime-fp32"
    assert rows[("mn04/torch", "network")]["runtime"] == "torch-fp32"
    assert rows[("mn04/int8", "network")]["impl"] == "mn04/int8" and rows[("mn04/int8", "whole")]["version"] == "2-int8"
    for who in ("mn04/int8 whole", "mn04/int8 network", "mn04/onnxruntime network"):
        assert re.search(who + r": [0-9.]+x (faster|slower) than mn04/torch", res.output), res.output
    assert re.search(r"mn04/int8 network: [0-9.]+x (faster|slower) than mn04/onnxruntime", res.output)


def test_weights_convert_writes_the_onnx_file(tmp_path, weights_dir):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "mn04.onnx"
    res = CliRunner().invoke(app, ["weights", "convert", "--to", "onnx", "--out", str(out)])
    assert res.exit_code == 0 and out.stat().st_size > 1_000_000, res.output
    res = CliRunner().invoke(app, ["weights", "convert", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "missing.pt" in res.output


def test_bench_listening_tiny(tmp_path, us8k, weights_dir):
    """The daemon's steady-state CPU against its inference, on a real-time file: every
    figure measured and present (its size is the benchmark's business, never asserted)."""
    out = tmp_path / "l.json"
    res = CliRunner().invoke(app, ["bench", "listening", "-p", "balanced", "--data", os.path.join(us8k, "fold1"),
                                   "--warm", "0.5", "--span", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["rows"][0]
    assert row["profile"] == "balanced" and row["windows"] >= 1 and row["cpu_ms_per_s"] > 0
    assert row["inference_ms_per_s"] > 0 and row["ratio"] > 0 and row["rss_mb"] > 0
    assert "CPU / inference" in res.output and "balanced" in res.output
