"""The daemon: file and live sources, determinism, signals, crashes, reloads, errors."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES, load_profile
from edgeqmoe.daemon.run import Daemon
from edgeqmoe.daemon.sinks import log_files, read_jsonl
from edgeqmoe.settings import SettingsError

from conftest import US8K, one_clip_per_class
from helpers import daemon_records, run_cli

PY = sys.executable
WEIGHTFREE = "balanced-weightfree.eqm"


def cli(args, env=None, timeout=180, **kw):
    return run_cli(args, env=env, timeout=timeout, **kw)


def write_profile(tmp_path, bundle=WEIGHTFREE, extra="", name="p.yaml", fallback=None):
    logs = tmp_path / "logs"
    text = f"""version: 1
description: test profile
model:
  bundle: {bundle}
  {'fallback_bundle: ' + fallback if fallback else ''}
audio:
  window: 2.0
  hop: 1.0
logging:
  dir: {logs}
  flush_interval: 0.2
  stats_interval: 1.0
{extra}
"""
    p = tmp_path / name
    p.write_text(text)
    return p


def windows(log_dir):
    """Window records with readable names (edgeqmoe.inspect.logs), oldest first."""
    from edgeqmoe.inspect.logs import LogsError, load_logs

    try:
        return load_logs(log_dir)["windows"]
    except LogsError:
        return []


daemon_events = daemon_records


@pytest.fixture
def clip(us8k):
    return os.path.join(US8K, "fold1", "101415-3-0-2.flac")


def test_shipped_bundles_exist():
    for name in ("latency-critical", "balanced", "accuracy", "energy", "stable", "balanced-weightfree",
                 "latency-critical-weightfree"):
        assert (SHIPPED_BUNDLES / f"{name}.eqm").is_file(), name
    total = sum(p.stat().st_size for p in SHIPPED_BUNDLES.glob("*.eqm"))
    assert total < 8 * 2**20


def test_every_shipped_profile_runs_its_bundle_on_the_window_it_was_trained_on():
    from edgeqmoe.daemon.profiles import load_profile
    from edgeqmoe.model.bundle import load_bundle

    for name in ("latency-critical", "balanced", "accuracy", "energy", "stable", "home"):
        p = load_profile(name)
        for bundle in (p.model.bundle, p.model.fallback_bundle):  # the weight-free fallback too
            trained = load_bundle(p.model.bundle_path(bundle)).meta["window"]["window_s"]
            assert trained == p.audio.window, (name, bundle, trained, p.audio.window)


def test_fast_and_realtime_give_identical_predictions(tmp_path, clip):
    prof = write_profile(tmp_path)
    out = {}
    for mode in ("--fast", "--realtime"):
        logs = tmp_path / mode.strip("-")
        r = cli(["run", "--profile", str(prof), "--source", f"file:{clip}", mode, "--log-dir", str(logs)])
        assert r.returncode == 0, r.stderr
        out[mode] = [(w["class"], w["score"], w.get("topk")) for w in windows(logs)]
    assert len(out["--fast"]) == 3  # 4 s clip, 2 s windows, 1 s hop
    assert out["--fast"] == out["--realtime"]


def test_chunk_sizes_give_identical_predictions(tmp_path, clip):
    prof = write_profile(tmp_path)
    results = []
    for block in (0.01, 0.1, 0.37):
        p = load_profile(str(prof), {"audio": {"block": block}})
        assert p.audio.block == block
        logs = tmp_path / f"logs{block}"
        d = Daemon(p, source=f"dir:{os.path.dirname(clip)}", realtime=False, duration=20.0, log_dir=str(logs))
        assert d.run() == 0
        results.append([(w["class"], w["score"], w.get("topk")) for w in windows(logs)])
    assert len(results[0]) >= 15
    assert results[0] == results[1] == results[2]


def test_sigterm_finishes_the_window_flushes_and_exits_0(tmp_path, us8k):
    prof = write_profile(tmp_path)
    logs = tmp_path / "logs"
    e = dict(os.environ)
    proc = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source",
                             f"dir:{os.path.join(US8K, 'fold1')}", "--realtime", "--log-dir", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    deadline = time.time() + 60
    while time.time() < deadline and len(windows(logs)) < 2:
        time.sleep(0.2)
    assert len(windows(logs)) >= 2
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    print(f"\nSIGTERM to exit: {time.monotonic() - t0:.2f} s (measured, not asserted)")
    assert rc == 0
    ev = daemon_events(logs)
    assert ev[0]["event"] == "start" and ev[-1]["event"] == "stop" and ev[-1]["reason"] == "signal"
    assert ev[-1]["windows"] == len(windows(logs))


def test_kill9_then_restart_keeps_every_file_readable(tmp_path, us8k):
    prof = write_profile(tmp_path)
    logs = tmp_path / "logs"
    args = [PY, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source",
            f"dir:{os.path.join(US8K, 'fold2')}", "--realtime", "--log-dir", str(logs)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(windows(logs)) < 4:
        time.sleep(0.1)
    before = (logs / "windows.jsonl").read_bytes()
    proc.kill()
    proc.wait(timeout=10)
    after_kill = (logs / "windows.jsonl").read_bytes()
    assert after_kill.startswith(before)  # nothing flushed before was lost
    counts = {}
    recs = list(read_jsonl(logs / "windows.jsonl", counts))
    assert counts.get("bad_lines", 0) == 0 and len(recs) >= 4
    r = cli(["run", "--profile", str(prof), "--source", f"file:{os.path.join(US8K, 'fold1', '101415-3-0-2.flac')}",
             "--fast", "--log-dir", str(logs)])
    assert r.returncode == 0, r.stderr
    counts = {}
    recs2 = list(read_jsonl(logs / "windows.jsonl", counts))
    assert counts.get("bad_lines", 0) == 0 and len(recs2) == len(recs) + 3
    for kind in ("daemon", "events", "stats"):
        for rec in read_jsonl(log_files(logs, kind)):
            assert rec["v"] == 1


def test_bad_inputs_exit_2_with_one_clear_paragraph(tmp_path, clip):
    r = cli(["run", "--profile", "nope"])
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr and "balanced" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodel: [unclosed\n")
    r = cli(["run", "--profile", str(bad)])
    assert r.returncode == 2 and str(bad) in r.stderr and "invalid YAML at line" in r.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("version: 1\nmodel:\n  bundle: balanced.eqm\naudio:\n  windw: 2\n")
    r = cli(["run", "--profile", str(wrong)])
    assert r.returncode == 2 and "audio.windw: unknown setting; allowed here:" in r.stderr
    corrupt = tmp_path / "corrupt.eqm"
    data = bytearray((SHIPPED_BUNDLES / WEIGHTFREE).read_bytes())
    data[-5] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    prof = write_profile(tmp_path, bundle=str(corrupt), name="c.yaml")
    r = cli(["run", "--profile", str(prof), "--source", f"file:{clip}"])
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and str(corrupt) in r.stderr
    r = cli(["run", "--profile", str(prof), "--source", "file:/nonexistent.wav"])  # the source is checked first
    assert r.returncode == 2 and "file '/nonexistent.wav' not found" in r.stderr
    for stderr in (r.stderr,):
        assert "Traceback" not in stderr


def test_missing_weights_without_and_with_fallback(tmp_path, clip):
    env = {"EDGEQMOE_WEIGHTS_DIR": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    prof = write_profile(tmp_path, bundle="balanced.eqm", name="nofb.yaml")
    r = cli(["run", "--profile", str(prof), "--source", f"file:{clip}", "--fast"], env=env)
    assert r.returncode == 2 and "mn04 weights not found" in r.stderr and "edgeqmoe weights fetch mn04" in r.stderr
    prof = write_profile(tmp_path, bundle="balanced.eqm", name="fb.yaml", fallback=WEIGHTFREE)
    logs = tmp_path / "fb-logs"
    r = cli(["run", "--profile", str(prof), "--source", f"file:{clip}", "--fast", "--log-dir", str(logs)], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("edgeqmoe weights fetch mn04") == 1 and "weight-free fallback" in r.stderr
    assert any(e["event"] == "fallback" for e in daemon_events(logs))
    assert not any(e["event"] == "window_mismatch" for e in daemon_events(logs))  # both on 2 s windows
    assert len(windows(logs)) == 3


def test_a_bundle_on_windows_it_was_not_trained_on_is_reported(tmp_path, clip):
    prof = tmp_path / "short.yaml"
    prof.write_text(f"version: 1\nmodel: {{bundle: {WEIGHTFREE}}}\naudio: {{window: 1.0, hop: 0.5}}\n")
    logs = tmp_path / "logs"
    r = cli(["run", "--profile", str(prof), "--source", f"file:{clip}", "--fast", "--log-dir", str(logs)])
    assert r.returncode == 0, r.stderr
    msg = [e["message"] for e in daemon_events(logs) if e["event"] == "window_mismatch"]
    assert len(msg) == 1 and "trained on 2 s windows and the profile cuts 1 s ones" in msg[0], msg
    assert "set audio.window: 2" in r.stderr
    assert len(windows(logs)) == 7  # it still runs: 4 s, 1 s windows every 0.5 s


def test_no_microphone(tmp_path):
    """No sound card and no sound server (this kind of machine): no input devices."""

    env = {"PULSE_SERVER": f"unix:{tmp_path}/no-such-socket"}
    probe = subprocess.run([PY, "-c", "import sounddevice as sd; print(sum(d['max_input_channels'] > 0 for d in "
                                      "sd.query_devices()))"], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **env))
    if probe.stdout.strip() != "0":
        pytest.skip("this machine has an input device")
    prof = write_profile(tmp_path)
    r = cli(["run", "--profile", str(prof), "--source", "mic"], env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "no microphone" in r.stderr and "edgeqmoe devices" in r.stderr and "--source file:" in r.stderr


def test_a_profile_edit_made_while_the_daemon_starts_is_not_missed(tmp_path, us8k):
    """The profile is edited after it was read but before the window loop begins (the
    daemon still starting: building its model, connecting to a broker): the loop still
    sees the edit and reloads."""
    from edgeqmoe.daemon.run import LoopState

    prof = write_profile(tmp_path)
    p = load_profile(str(prof))
    assert p.source_mtime == os.stat(prof).st_mtime
    prof.write_text(prof.read_text().replace("version: 1", "version: 1\ndecision:\n  threshold: 0.3"))
    os.utime(prof, (time.time() + 5, time.time() + 5))
    assert LoopState(p).prof_mtime != os.stat(prof).st_mtime  # so the first check reloads
    logs = tmp_path / "logs"
    d = Daemon(p, source=f"dir:{os.path.join(US8K, 'fold1')}", realtime=True, log_dir=str(logs))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not any(e["event"] == "reload" for e in daemon_events(logs)):
            time.sleep(0.1)
        assert any(e["event"] == "reload" for e in daemon_events(logs))
        assert d.profile.decision.threshold == 0.3
    finally:
        d.stop()
        t.join(timeout=10)
    with pytest.raises(SettingsError, match="source_mtime"):
        prof.write_text(prof.read_text() + "source_mtime: 1.0\n")
        load_profile(str(prof))


def test_profile_reload_applies_valid_edits_and_rejects_bad_ones(tmp_path, us8k):
    prof = write_profile(tmp_path)
    logs = tmp_path / "logs"
    d = Daemon(load_profile(str(prof)), source=f"dir:{os.path.join(US8K, 'fold1')}", realtime=True,
               log_dir=str(logs))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and len(windows(logs)) < 2:
            time.sleep(0.1)
        text = prof.read_text()
        prof.write_text(text.replace("version: 1", "version: 1\ndecision:\n  threshold: 0.3"))
        os.utime(prof, (time.time() + 5, time.time() + 5))
        d._reload.set()
        deadline = time.time() + 15
        while time.time() < deadline and not any(e["event"] == "reload" for e in daemon_events(logs)):
            time.sleep(0.1)
        assert any(e["event"] == "reload" for e in daemon_events(logs))
        assert d.profile.decision.threshold == 0.3
        prof.write_text(text.replace("window: 2.0", "window: -1"))
        d._reload.set()
        deadline = time.time() + 15
        while time.time() < deadline and not any(e["event"] == "reload_rejected" for e in daemon_events(logs)):
            time.sleep(0.1)
        rej = [e for e in daemon_events(logs) if e["event"] == "reload_rejected"]
        assert rej and "audio.window" in rej[0]["message"]
        assert d.profile.decision.threshold == 0.3  # still the last good settings
        n = len(windows(logs))
        deadline = time.time() + 30
        while time.time() < deadline and len(windows(logs)) <= n:
            time.sleep(0.1)
        assert len(windows(logs)) > n  # kept classifying throughout
    finally:
        d.stop()
        t.join(timeout=10)


def test_profiles_cli(tmp_path):
    r = cli(["profiles", "list"])
    assert r.returncode == 0 and all(n in r.stdout for n in ("latency-critical", "balanced", "accuracy", "energy", "stable"))
    r = cli(["profiles", "show", "stable"])
    assert r.returncode == 0 and "evaluate_all_experts: true" in r.stdout
    for name in ("latency-critical", "balanced", "accuracy", "energy", "stable"):
        r = cli(["profiles", "validate", os.path.join(os.path.dirname(SHIPPED_BUNDLES), "profiles", f"{name}.yaml")])
        assert r.returncode == 0, r.stderr
    wrong = tmp_path / "w.yaml"
    wrong.write_text("version: 1\nmodel:\n  bundle: balanced.eqm\ndecision:\n  smoothing: 0\n")
    r = cli(["profiles", "validate", str(wrong)])
    assert r.returncode == 2 and "decision.smoothing: 0 is outside 1..100" in r.stderr


def test_live_audio_through_the_virtual_microphone(tmp_path, virtual_mic, weights_dir):
    """Ten shared clips, one per class, played into the virtual microphone while
    'edgeqmoe run --profile stable' listens."""
    ds, clips = one_clip_per_class()
    logs = tmp_path / "live"
    env = dict(virtual_mic, EDGEQMOE_WEIGHTS_DIR=weights_dir)
    r = cli(["devices"], env=env)
    assert r.returncode == 0 and "pulse" in r.stdout
    r = cli(["run", "--profile", "stable", "--source", "mic:99", "--log-dir", str(tmp_path / "bad")], env=env)
    assert r.returncode == 2 and "input device 99 does not exist" in r.stderr
    e = dict(os.environ)
    e.update(env)
    proc = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", "stable", "--log-dir", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(ev["event"] == "source_open" for ev in daemon_events(logs)):
            time.sleep(0.2)
        time.sleep(2.5)
        spans = []
        for c in clips:
            t0 = time.time()
            subprocess.run(["paplay", "--device=edgeqmoe_sink", "--latency-msec=20", c.path], env=e, check=True,
                           timeout=30)
            spans.append((t0, time.time(), ds.classes[c.label]))
            time.sleep(0.5)
        time.sleep(3.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0, proc.stderr.read().decode()
    ws = windows(logs)
    assert len(ws) >= 30
    recognised = 0
    for t0, t1, label in spans:
        inside = [w for w in ws if t0 + 1.9 <= w["t_wall"] - w["capture_lag_ms"] / 1e3 <= t1 + 0.3]
        if not inside:
            continue
        from edgeqmoe.inspect.logs import window_probabilities

        mean = {}
        for w in inside:
            for cls, p in window_probabilities(w).items():
                mean[cls] = mean.get(cls, 0.0) + p
        recognised += max(mean, key=mean.get) == label
    lag_max = max(w["capture_lag_ms"] for w in ws)
    print(f"\nlive: recognised {recognised} of 10, {len(ws)} windows, capture lag max {lag_max:.1f} ms")
    assert recognised >= 8, f"recognised {recognised} of 10"
    stop = [ev for ev in daemon_events(logs) if ev["event"] == "stop"][0]
    assert stop["dropped_samples"] == 0


def test_survives_the_microphone_going_away_and_coming_back(tmp_path, virtual_mic):
    """The sound server (our 'microphone') dies mid-run: the daemon logs it, keeps
    running, reopens with backoff, and classifies again once it is back."""
    prof = write_profile(tmp_path, extra="watchdog:\n  silence_timeout: 1.0\n  backoff: [0.5, 0.5, 1.0]\n")
    logs = tmp_path / "logs"
    e = dict(os.environ)
    e.update(virtual_mic)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "virtual_mic.sh")
    proc = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--log-dir", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(windows(logs)) < 2:
            time.sleep(0.2)
        assert len(windows(logs)) >= 2
        subprocess.run([script, "down"], env=e, timeout=30)            # unplugged
        deadline = time.time() + 30
        while time.time() < deadline and not any(ev["event"] == "source_lost" for ev in daemon_events(logs)):
            time.sleep(0.2)
        assert any(ev["event"] == "source_lost" for ev in daemon_events(logs))
        time.sleep(2.0)
        assert proc.poll() is None                                       # still running
        subprocess.run([script, "up"], env=e, timeout=60, capture_output=True)  # plugged back in
        opened = lambda: sum(ev["event"] == "source_open" for ev in daemon_events(logs))
        deadline = time.time() + 60
        while time.time() < deadline and opened() < 2:
            time.sleep(0.2)
        assert opened() >= 2
        n = len(windows(logs))
        deadline = time.time() + 30
        while time.time() < deadline and len(windows(logs)) < n + 2:
            time.sleep(0.2)
        assert len(windows(logs)) >= n + 2                               # classifying again
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0
