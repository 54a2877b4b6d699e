"""Reading logs back (summary, plot, compare) and the power methods."""
import gzip
import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeqmoe.cli import app
from edgeqmoe.daemon.power import PowerMeter, RaplCounters
from edgeqmoe.daemon.sinks import LogWriter, read_jsonl
from edgeqmoe.inspect.logs import compare, summary

CLASSES = ["dog", "siren", "rain"]


def write_known_log(folder, n=100, head_ms=lambda i: 0.5, t0=1_800_000_000.0, decided_every=2, clean=True,
                    hop_s=1.0):
    """A log with known content: n windows, one a second."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "daemon.jsonl"), "w") as f:
        f.write(json.dumps({"v": 1, "type": "daemon", "event": "start", "t_wall": t0, "classes": CLASSES,
                            "experts": ["bitnet", "q4"], "window_schema": {"energy_method": "modelled"},
                            "hop_s": hop_s}) + "\n")
        if clean:
            f.write(json.dumps({"v": 1, "type": "daemon", "event": "stop", "t_wall": t0 + n + 1, "windows": n,
                                "dropped_samples": 7}) + "\n")
    with open(os.path.join(folder, "windows.jsonl"), "w") as f:
        for i in range(n):
            rec = {"class": i % 3, "score": 0.9, "k": [[(i + 1) % 3, 0.05]],
                   "stages_ms": {"embed": 3.0, "head": head_ms(i), "decision": 0.05},
                   "t_wall": t0 + 1 + i, "t_mono": 100.0 + i, "capture_lag_ms": float(i % 10), "mj": 2.0, "v": 1}
            if i % decided_every == 0:
                rec["d"] = i % 3
            if i == 5:
                rec["deadline_miss"] = True
            f.write(json.dumps(rec) + "\n")
    with open(os.path.join(folder, "events.jsonl"), "w") as f:
        f.write(json.dumps({"v": 1, "type": "event", "class": "dog", "start_s": 1, "end_s": 3, "windows": 3,
                            "peak": 0.9, "t_wall": t0 + 5}) + "\n")
    with open(os.path.join(folder, "stats.jsonl"), "w") as f:
        f.write(json.dumps({"v": 1, "type": "stats", "t_wall": t0 + 60, "power_w": 1.5, "power_method": "modelled",
                            "dropped_samples_total": 3}) + "\n")


def test_summary_numbers_of_a_known_log(tmp_path):
    write_known_log(tmp_path / "a")
    s = summary(tmp_path / "a")
    assert s["windows"] == 100 and s["runs"] == 1 and s["restarts"] == 0 and s["unclean_stops"] == 0
    assert s["uptime_s"] == 101.0
    # decided every other window, classes cycling 0,1,2: 50 decisions
    assert sum(s["detections"].values()) == 50 and set(s["detections"]) == set(CLASSES)
    assert s["events"] == {"dog": 1} and s["deadline_misses"] == 1 and s["dropped_samples"] == 7
    assert s["latency_ms"]["head"]["p50"] == 0.5 and s["latency_ms"]["total"]["p50"] == 3.55
    assert s["capture_lag_ms"]["max"] == 9.0 and s["energy_per_inference_mj"]["mean"] == 2.0
    assert s["energy_method"] == ["modelled"] and s["power_method"] == ["modelled"]
    assert s["bad_lines"] == 0 and s["unknown_records"] == 0
    # per hour of listening: 2 mJ a window, a window a hop (1 s): 7.2 J
    assert s["energy_per_hour_j"] == 7.2 and s["listened_s"] == 100 and s["energy_total_mj"] == 200


def test_energy_per_hour_follows_each_devices_hop(tmp_path):
    """A window stands for one hop of audio: the hop of its run (start) or of the reload
    before it; in a fleet each device's own."""
    write_known_log(tmp_path / "a", hop_s=2.0)
    assert summary(tmp_path / "a")["energy_per_hour_j"] == 3.6
    # a reload halfway that halves the hop: 50 windows of 2 s, 50 of 1 s
    with open(tmp_path / "a" / "daemon.jsonl", "a") as f:
        f.write(json.dumps({"v": 1, "type": "daemon", "event": "reload", "t_wall": 1_800_000_000.0 + 50.5,
                            "hop_s": 1.0}) + "\n")
    s = summary(tmp_path / "a")
    assert s["listened_s"] == 150 and s["energy_per_hour_j"] == 4.8
    # a fleet: device b (hop 1) started after a, which is still at hop 2 for its windows
    write_known_log(tmp_path / "c", hop_s=2.0, t0=1_800_000_000.0)
    write_known_log(tmp_path / "b", hop_s=1.0, t0=1_800_000_010.0)
    for name, dev in (("c", "dev-c"), ("b", "dev-b")):
        p = tmp_path / name / "daemon.jsonl"
        p.write_text("".join(json.dumps({**json.loads(line), "device": dev}) + "\n" for line in p.read_text().splitlines()))
    fleet = summary([tmp_path / "c", tmp_path / "b"])
    assert fleet["devices"]["dev-c"]["energy_per_hour_j"] == 3.6 and fleet["devices"]["dev-b"]["energy_per_hour_j"] == 7.2
    assert fleet["listened_s"] == 300 and fleet["energy_per_hour_j"] == 4.8
    text = CliRunner().invoke(app, ["logs", "summary", str(tmp_path / "c")]).output
    assert "energy per hour of listening: 3.600 J" in text
    # no hop recorded (an older log): no figure, no line
    write_known_log(tmp_path / "old", hop_s=None)
    assert summary(tmp_path / "old")["energy_per_hour_j"] is None
    assert "per hour" not in CliRunner().invoke(app, ["logs", "summary", str(tmp_path / "old")]).output


def test_summary_time_filter(tmp_path):
    write_known_log(tmp_path / "a")
    s = summary(tmp_path / "a", since=str(1_800_000_000 + 51), until=str(1_800_000_000 + 60))
    assert s["windows"] == 10


def test_damaged_logs_are_read(tmp_path):
    write_known_log(tmp_path / "a")
    d = tmp_path / "damaged"
    shutil.copytree(tmp_path / "a", d)
    # a rotated, compressed older file
    with gzip.open(d / "windows.20261101T000000.jsonl.gz", "wt") as f:
        for i in range(20):
            f.write(json.dumps({"class": 0, "score": 0.5, "k": [], "stages_ms": {"embed": 1, "head": 1, "decision": 0},
                                "t_wall": 1_800_000_000.5 + i * 0.01, "t_mono": 1.0, "v": 1}) + "\n")
    # a torn last line, an unknown record type and a newer schema version
    with open(d / "windows.jsonl", "a") as f:
        f.write('{"class":1,"score":0.8,"stages_ms":{"emb')
    with open(d / "events.jsonl", "a") as f:
        f.write(json.dumps({"v": 1, "type": "mystery"}) + "\n" + json.dumps({"v": 9, "type": "event"}) + "\n")
    s = summary(d)
    assert s["windows"] == 120 and s["bad_lines"] == 1 and s["unknown_records"] == 2
    # a compressed file cut short keeps what it had
    data = (d / "windows.20261101T000000.jsonl.gz").read_bytes()
    (d / "windows.20261101T000000.jsonl.gz").write_bytes(data[: len(data) // 2])
    s = summary(d)
    assert s["bad_files"] == 1 and 100 <= s["windows"] < 120


def test_compare_reports_variance_reduction(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.normal(1.0, 0.3, 300)
    calm = rng.normal(1.0, 0.05, 300)
    write_known_log(tmp_path / "a", n=300, head_ms=lambda i: float(abs(noisy[i])))
    write_known_log(tmp_path / "b", n=300, head_ms=lambda i: float(abs(calm[i])))
    r = compare(tmp_path / "a", tmp_path / "b")
    lat = r["latency_ms"]
    assert lat["variance_reduction"] > 0.9 and lat["levene_p"] < 1e-6
    assert "B is significantly more stable" in r["verdict"]
    res = CliRunner().invoke(app, ["logs", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0 and "variance reduction" in res.output and "verdict:" in res.output


def test_plot_and_cli(tmp_path):
    pytest.importorskip("matplotlib")
    write_known_log(tmp_path / "a")
    out = tmp_path / "r.png"
    res = CliRunner().invoke(app, ["logs", "plot", str(tmp_path / "a"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(app, ["logs", "summary", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["windows"] == 100
    res = CliRunner().invoke(app, ["logs", "summary", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such log folder" in res.output


def test_writer_rotates_compresses_and_keeps_lines_whole(tmp_path):
    w = LogWriter(tmp_path, flush_interval=0.0, rotate_bytes=10_000, retention=3, compress=True)
    for i in range(1000):
        w.put("windows", {"class": 1, "score": 0.5, "i": i, "t_wall": 1.0})
    w.close()
    rotated = sorted(tmp_path.glob("windows.*.jsonl.gz"))
    assert 1 <= len(rotated) <= 3
    counts = {}
    recs = list(read_jsonl(rotated + [tmp_path / "windows.jsonl"], counts))
    assert counts.get("bad_lines", 0) == 0
    idx = [r["i"] for r in recs]
    assert idx == sorted(idx) and idx[-1] == 999  # the newest survive, in order


def test_torn_line_is_ended_before_appending(tmp_path):
    (tmp_path / "windows.jsonl").write_text('{"i":1,"v":1}\n{"i":2,"v"')
    w = LogWriter(tmp_path, flush_interval=0.0)
    w.put("windows", {"i": 3})
    w.close()
    counts = {}
    recs = list(read_jsonl(tmp_path / "windows.jsonl", counts))
    assert [r["i"] for r in recs] == [1, 3] and counts["bad_lines"] == 1


def make_powercap(root, energy_uj, max_uj=1_000_000):
    z = root / "intel-rapl:0"
    z.mkdir(parents=True, exist_ok=True)
    (z / "energy_uj").write_text(str(energy_uj))
    (z / "max_energy_range_uj").write_text(str(max_uj))
    (root / "intel-rapl:0:0").mkdir(exist_ok=True)  # a sub-zone, not counted
    return z


def test_power_measured_from_rapl_with_wraparound(tmp_path):
    z = make_powercap(tmp_path, 900_000)
    pm = PowerMeter("auto", "desktop", powercap_root=str(tmp_path), supply_root=str(tmp_path / "none"))
    assert pm.method == "measured" and "RAPL" in pm.describe()["source"]
    (z / "energy_uj").write_text("950000")
    assert abs(pm.rapl.joules_since_last() - 0.05) < 1e-9
    (z / "energy_uj").write_text("30000")  # wrapped: 50,000 to the top, then 30,000
    assert abs(pm.rapl.joules_since_last() - 0.08) < 1e-9
    rec = pm.interval()
    assert rec["power_method"] == "measured" and rec["energy_j"] == 0.0


def test_power_modelled_without_counters(tmp_path):
    pm = PowerMeter("auto", "rpi4", powercap_root=str(tmp_path / "none"), supply_root=str(tmp_path / "none"))
    d = pm.describe()
    assert d["method"] == "modelled" and d["model"]["name"] == "cpu-time x watts-per-busy-core"
    assert d["model"]["watts_per_core"] == 0.9
    x = 0
    for i in range(200000):
        x += i
    rec = pm.interval()
    assert rec["power_method"] == "modelled" and rec["power_w"] >= 0
    w = pm.window_energy_mj(0.01)
    assert w["energy_method"] == "modelled" and abs(w["energy_mj"] - 9.0) < 1e-9
    assert abs(w["co2_ug"] - 9.0 / 1e3 / 3.6e6 * 300 * 1e6) < 1e-9


def test_this_machine_without_rapl_says_modelled():
    rapl = RaplCounters()
    pm = PowerMeter()
    if rapl.zones:
        pytest.skip("this machine exposes RAPL")
    assert pm.method in ("modelled", "measured")  # a laptop battery would be measured
    if pm.method == "modelled":
        assert pm.describe()["model"]["device_class"] in ("laptop", "desktop", "server", "rpi4", "rpi5")


def test_real_runs_summary_plot_compare_and_size(tmp_path, us8k, weights_dir):
    """Logs of real 'edgeqmoe run's (file source): the stable profile against the same
    bundle with uniform routing; summary, plot and compare on them and on a damaged
    copy; the bytes a day at one window a second."""
    import subprocess
    import sys

    from conftest import US8K

    src = os.path.join(US8K, "fold3")
    runs = {}
    for name, extra in (("stable", False), ("uniform", True)):
        prof = tmp_path / f"{name}.yaml"
        prof.write_text("version: 1\nmodel:\n  bundle: stable.eqm\n  evaluate_all_experts: "
                        f"{'false' if extra else 'true'}\n  routing: {'uniform' if extra else 'trained'}\n"
                        "audio:\n  window: 2.0\n  hop: 1.0\nlogging:\n  stats_interval: 60\n")
        logs = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source",
                            f"dir:{src}", "--fast", "--duration", "240", "--log-dir", str(logs)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        runs[name] = logs
    s = summary(runs["stable"])
    # 240 s of 4 s clips, each file windowed on its own (no window straddles two files): 3 windows a clip
    n = s["windows"]
    files = [d for d in read_jsonl(runs["stable"] / "daemon.jsonl") if d.get("event") == "file"]
    assert n == 180 and len(files) == 60 and s["runs"] == 1 and s["energy_method"] == ["modelled"]
    wl = [json.loads(line) for line in open(runs["stable"] / "windows.jsonl")]
    assert [w["fo"] for w in wl[:4]] == [0.0, 1.0, 2.0, 0.0] and [w["fi"] for w in wl[:4]] == [0, 0, 0, 1]
    prom = (runs["stable"] / "edgeqmoe.prom").read_text().splitlines()
    assert "# TYPE edgeqmoe_windows_total counter" in prom and f"edgeqmoe_windows_total {n}" in prom
    assert any(line.startswith('edgeqmoe_stage_seconds{stage="head",quantile="0.99"}') for line in prom)
    stats = [json.loads(line) for line in open(runs["stable"] / "stats.jsonl")]
    assert stats[-1]["power_method"] == "modelled" and "W/core" in stats[-1]["power_model"]
    assert stats[-1]["co2_ug_per_inference"] > 0 and "p99" in stats[-1]["stages_ms"]["head"]
    assert s["latency_ms"]["head"]["p50"] > 0 and sum(s["detections"].values()) > 0
    # bytes a day at one window a second, windows and stats (one a minute) together
    # (a microphone's records carry no file index and offset: count them without those keys)
    wbytes = sum(len(json.dumps({k: v for k, v in w.items() if k not in ("fi", "fo")}, separators=(",", ":"))) + 1
                 for w in wl) / n
    sbytes = max(len(line) for line in open(runs["stable"] / "stats.jsonl"))
    per_day = wbytes * 86400 + sbytes * 1440
    print(f"\nbytes a day at one window a second: {per_day / 1e6:.2f} MB (windows {wbytes:.0f} B each)")
    assert per_day < 20e6, f"{per_day / 1e6:.1f} MB a day"
    r = compare(runs["uniform"], runs["stable"])
    assert r["latency_ms"]["n_a"] == r["latency_ms"]["n_b"] == n
    assert "variance_reduction" in r["latency_ms"] and 0 <= r["latency_ms"]["levene_p"] <= 1
    assert "Levene p=" in r["verdict"]
    pytest.importorskip("matplotlib")
    res = CliRunner().invoke(app, ["logs", "plot", str(runs["stable"]), "-o", str(tmp_path / "r.png")])
    assert res.exit_code == 0 and (tmp_path / "r.png").stat().st_size > 10_000
    # a damaged copy: the live file cut mid-line, the rest rotated and compressed
    d = tmp_path / "damaged"
    shutil.copytree(runs["stable"], d)
    data = (d / "windows.jsonl").read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    with gzip.open(d / "windows.20261101T000000000000.jsonl.gz", "wb") as f:
        f.write(data[:half])
    (d / "windows.jsonl").write_bytes(data[half:-40])
    s2 = summary(d)
    assert s2["windows"] == n - 1 and s2["bad_lines"] == 1
    res = CliRunner().invoke(app, ["logs", "summary", str(d), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["windows"] == n - 1


def test_power_measured_from_the_pi5_pmic(tmp_path):
    from edgeqmoe.daemon.power import read_pmic_watts

    fake = tmp_path / "vcgencmd"
    fake.write_text("#!/bin/sh\ncat <<'X'\n VDD_CORE_A current(7)=2.00000000A\n VDD_CORE_V volt(15)=0.80000000V\n"
                    " EXT5V_A current(0)=0.50000000A\n EXT5V_V volt(8)=5.00000000V\n HDMI_A current(1)=0.1A\nX\n")
    fake.chmod(0o755)
    assert abs(read_pmic_watts(str(fake)) - (2.0 * 0.8 + 0.5 * 5.0)) < 1e-9  # HDMI has no voltage: not counted
    pm = PowerMeter("auto", "rpi5", powercap_root=str(tmp_path / "none"), supply_root=str(tmp_path / "none"),
                    vcgencmd=str(fake))
    assert pm.method == "measured" and "PMIC" in pm.describe()["source"]
    rec = pm.interval()
    assert rec["power_method"] == "measured" and abs(rec["power_w"] - 4.1) < 1e-9
    assert read_pmic_watts(str(tmp_path / "absent")) is None
