"""What a year-long deployment meets: write errors, links, a second daemon, crashes
mid-rotation, hostile profile edits, bundles replaced under a running model, and the
C objects used from several threads or the wrong way."""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from edgeqmoe.daemon.sinks import LogFolderBusy, LogWriter, encode, log_files, read_jsonl
from edgeqmoe.settings import SettingsError

from helpers import daemon_records, run_cli, wait_for

PY = sys.executable


# --------------------------------------------------------------------------- log writer

def test_non_finite_numbers_become_null_and_numpy_is_plain():
    line = encode({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32("nan"), "d": np.arange(2),
                   "e": {"f": -float("inf")}, "g": np.int64(3)})
    assert json.loads(line) == {"a": None, "b": [1.0, None], "c": None, "d": [0, 1], "e": {"f": None}, "g": 3}


WRITE_ERRORS_CHILD = textwrap.dedent("""
    import json, resource, signal, sys, time
    from edgeqmoe.daemon.sinks import LogWriter
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # writes past the limit fail with EFBIG instead
    folder, limit = sys.argv[1], int(sys.argv[2])
    w = LogWriter(folder, flush_interval=0.0)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))   # the disk is 'full' at limit bytes
    for i in range(300):
        w.put("windows", {"i": i, "pad": "x" * 40, "bad": float("nan")})
    time.sleep(1.5)                                             # a few failed retries
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))     # room again
    w.close()
    print(json.dumps({"written": w.written, "dropped": w.dropped, "errors": w.write_errors}))
""")


def test_write_errors_are_retried_reported_and_lose_nothing(tmp_path):
    """A real EFBIG (RLIMIT_FSIZE) mid-batch: the short write is cut back, the batch
    retried with backoff, reported once, and every line arrives whole and once."""
    r = subprocess.run([PY, "-c", WRITE_ERRORS_CHILD, str(tmp_path), "3000"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    counts = {}
    recs = list(read_jsonl(log_files(tmp_path, "windows"), counts))
    assert [x["i"] for x in recs] == list(range(300)) and counts.get("bad_lines", 0) == 0
    assert all(x["bad"] is None for x in recs)
    assert out["errors"] >= 1 and out["dropped"]["windows"] == 0
    assert r.stderr.count("cannot write windows log") == 1 and "EFBIG" in r.stderr
    events = [d["event"] for d in read_jsonl(log_files(tmp_path, "daemon"))]
    assert "log_write_error" in events and "log_write_recovered" in events
    print(f"\nEFBIG: {out['errors']} failed attempts, 300 of 300 lines written once")


def test_full_queue_counts_its_drops(tmp_path):
    w = LogWriter(tmp_path, flush_interval=3600.0, queue_lines=10)
    accepted = sum(w.put("events", {"i": i}) for i in range(25))
    w.close()
    assert accepted == 10 and w.dropped["events"] == 15
    assert [r["i"] for r in read_jsonl(tmp_path / "events.jsonl")] == list(range(10))


def test_links_in_the_log_folder_are_never_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("keep me\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "windows.jsonl").symlink_to(secret)
    with pytest.raises(OSError, match="symbolic link"):
        LogWriter(logs)
    os.unlink(logs / "windows.jsonl")
    # leftovers of a crash that point elsewhere: replaced, never written through
    (logs / "edgeqmoe.prom.tmp").symlink_to(secret)
    from edgeqmoe.daemon.sinks import replace_file

    replace_file(logs / "edgeqmoe.prom", b"x 1\n")
    assert secret.read_text() == "keep me\n" and (logs / "edgeqmoe.prom").read_text() == "x 1\n"
    w = LogWriter(logs, flush_interval=0.0)
    w.put("windows", {"i": 1})
    w.close()
    for f in logs.iterdir():
        assert f.is_symlink() or oct(f.stat().st_mode & 0o777) == "0o640", f
    assert secret.read_text() == "keep me\n"


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path):
    w = LogWriter(tmp_path)
    try:
        with pytest.raises(LogFolderBusy, match=f"pid {os.getpid()}"):
            LogWriter(tmp_path)
    finally:
        w.close()
    LogWriter(tmp_path).close()  # free again once the first has closed


def test_interrupted_rotation_is_finished_and_never_counted_twice(tmp_path):
    lines = [json.dumps({"i": i, "v": 1}) + "\n" for i in range(10)]
    # crash after publishing the .gz, before unlinking its source
    (tmp_path / "windows.20260101T000000000000.jsonl").write_text("".join(lines[:5]))
    with gzip.open(tmp_path / "windows.20260101T000000000000.jsonl.gz", "wt") as f:
        f.write("".join(lines[:5]))
    # crash while compressing: a partial .gz.tmp beside its source
    (tmp_path / "windows.20260102T000000000000.jsonl").write_text("".join(lines[5:]))
    (tmp_path / "windows.20260102T000000000000.jsonl.gz.tmp").write_bytes(b"\x1f\x8b partial")
    assert [r["i"] for r in read_jsonl(log_files(tmp_path, "windows"))] == list(range(10))  # readers: no doubles
    LogWriter(tmp_path).close()
    names = sorted(p.name for p in tmp_path.glob("windows.2*"))
    assert names == ["windows.20260101T000000000000.jsonl.gz", "windows.20260102T000000000000.jsonl.gz"]
    assert [r["i"] for r in read_jsonl(log_files(tmp_path, "windows"))] == list(range(10))
    LogWriter(tmp_path).close()  # idempotent
    assert sorted(p.name for p in tmp_path.glob("windows.2*")) == names


def test_close_writes_everything_however_long_the_rotation(tmp_path):
    w = LogWriter(tmp_path, flush_interval=0.5, rotate_bytes=2_000_000, compress=True)
    for i in range(60_000):  # about three rotations' worth, most of it still queued at close
        if not w.put("windows", {"i": i, "pad": "y" * 30}):
            break
    w.put("daemon", {"type": "daemon", "event": "stop"})
    w.close()
    got = [r["i"] for r in read_jsonl(log_files(tmp_path, "windows"))]
    assert got == list(range(len(got))) and len(got) + w.dropped["windows"] == min(60_000, len(got) + w.dropped["windows"])
    assert len(got) == w.written["windows"]
    assert [r["event"] for r in read_jsonl(tmp_path / "daemon.jsonl")] == ["stop"]


KILL_CHILD = textwrap.dedent("""
    import sys, threading, time
    from edgeqmoe.daemon.sinks import LogWriter
    folder, start = sys.argv[1], int(sys.argv[2])
    w = LogWriter(folder, flush_interval=0.0, rotate_bytes=10_000, retention=100000, compress=True)
    def report():
        last = -1
        while True:
            n = w.synced["windows"]
            if n != last:
                print(start + n - 1, flush=True)   # every line up to here is on disk
                last = n
            time.sleep(0.0005)
    threading.Thread(target=report, daemon=True).start()
    i = start
    while True:
        w.put("windows", {"i": i})
        i += 1
        time.sleep(0.0002)
""")


def test_kill9_at_random_moments_loses_nothing_flushed_and_repeats_nothing(tmp_path):
    """100 times: start a writer that rotates and compresses often, kill -9 it at a
    random moment, start the next where the logs end."""
    rnd = random.Random(7)
    synced_max = -1
    for _ in range(100):
        have = [r["i"] for r in read_jsonl(log_files(tmp_path, "windows"))]
        start = have[-1] + 1 if have else 0
        p = subprocess.Popen([PY, "-c", KILL_CHILD, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True)
        first = p.stdout.readline()  # the writer is up
        assert first, "child did not start"
        threading.Event().wait(rnd.uniform(0.0, 0.08))
        p.send_signal(signal.SIGKILL)
        out = first + p.stdout.read()
        p.wait()
        reported = [int(x) for x in out.split()]
        synced_max = max([synced_max] + reported)
        got = [r["i"] for r in read_jsonl(log_files(tmp_path, "windows"))]
        assert got == list(range(len(got))), "a line repeated or missing"
        assert len(got) - 1 >= synced_max, "a line reported on disk was lost"
    counts = {}
    list(read_jsonl(log_files(tmp_path, "windows"), counts))
    print(f"\nkill -9 x100: {synced_max + 1} lines synced, {len(log_files(tmp_path, 'windows'))} files, "
          f"{counts.get('bad_lines', 0)} torn lines skipped")


# --------------------------------------------------------------------------- profiles

def load(tmp_path, text, name="p.yaml", mode="w"):
    from edgeqmoe.daemon.profiles import load_profile

    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return load_profile(str(p))


@pytest.mark.parametrize("text,message", [
    ("model: {bundle: balanced.eqm}\naudio: {window: .nan}\n", "audio.window: nan is not a finite number"),
    ("model: {bundle: balanced.eqm}\naudio: {hop: .nan}\n", "audio.hop: nan is not a finite number"),
    ("model: {bundle: balanced.eqm}\nlogging: {flush_interval: .nan}\n", "logging.flush_interval: nan"),
    ("model: {bundle: balanced.eqm}\npower: {grid_intensity: .inf}\n", "power.grid_intensity: inf"),
    ("model: {bundle: balanced.eqm}\ndecision: {threshold: .nan}\n", "decision.threshold: nan"),
    ("model: {bundle: balanced.eqm}\naudio: {window: 1.0, hop: 2.0}\n", "audio.hop: 2.0 s is longer than the window"),
    ("model: {bundle: balanced.eqm}\ndecision: {thresholds: {siren: 1.5}}\n", "decision.thresholds.siren: 1.5"),
    ("model: {bundle: balanced.eqm}\nwatchdog: {backoff: [1.0, .nan]}\n", "watchdog.backoff[1]: nan"),
    ("model: {bundle: balanced.eqm}\nwatchdog: {backoff: [-1.0]}\n", "watchdog.backoff: -1.0 is outside"),
])
def test_non_finite_and_inconsistent_values_are_refused(tmp_path, text, message):
    with pytest.raises(SettingsError) as e:
        load(tmp_path, text)
    assert message in str(e.value)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    with pytest.raises(SettingsError) as e:
        load(tmp_path, "model: {bundle: balanced.eqm, kernal: simd}\naudio: {window: -1}\n"
                       "decision: {smoothing: 0}\nlogging: {stats_interval: .nan}\n")
    msg = str(e.value)
    assert "4 problems" in msg and "model.kernal: unknown setting" in msg and "audio.window: -1" in msg
    assert "decision.smoothing: 0 is outside" in msg and "logging.stats_interval: nan" in msg


@pytest.mark.parametrize("data,message", [
    (b"model:\n  bundle: caf\xe9.eqm\n", "not UTF-8 text"),
    (("a: &a [" + ",".join(["1"] * 9) + "]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))).encode(),
     "aliases"),
    (("model: " + "[" * 3000 + "]" * 3000 + "\n").encode(), "nested deeper"),
    (b"x: " + b"y" * 300_000, "larger than"),
])
def test_hostile_yaml_fails_fast_with_a_message(tmp_path, data, message):
    with pytest.raises(SettingsError, match=message):
        load(tmp_path, data)


def test_bundles_resolve_in_the_documented_order_never_the_working_directory(tmp_path, monkeypatch):
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES

    monkeypatch.chdir(tmp_path)
    (tmp_path / "balanced.eqm").write_bytes(b"not a bundle")      # a stray file in the working directory
    prof_dir = tmp_path / "etc"
    prof_dir.mkdir()
    (prof_dir / "balanced.eqm").write_bytes(b"not a bundle")       # and beside the profile
    p = load(prof_dir, "model: {bundle: balanced.eqm}\n")
    assert p.model.bundle_path() == str(SHIPPED_BUNDLES / "balanced.eqm")
    p = load(prof_dir, "model: {bundle: mine/own.eqm}\n")
    assert p.model.bundle_path() == str(prof_dir / "mine" / "own.eqm")
    p = load(prof_dir, "model: {bundle: own.eqm}\n")
    assert p.model.bundle_path() == str(prof_dir / "own.eqm")


def test_validate_checks_that_the_bundle_is_a_bundle_and_show_round_trips(tmp_path):
    from typer.testing import CliRunner

    from edgeqmoe.cli import app

    prof = tmp_path / "p.yaml"
    prof.write_text("model: {bundle: /etc/passwd}\n")
    r = CliRunner().invoke(app, ["profiles", "validate", str(prof)])
    assert r.exit_code == 2 and "model.bundle" in r.output and "/etc/passwd" in r.output
    for name in ("balanced", "stable", "energy", "latency-critical", "accuracy", "home"):
        shown = CliRunner().invoke(app, ["profiles", "show", name])
        assert shown.exit_code == 0
        out = tmp_path / f"{name}.yaml"
        out.write_text(shown.output)
        r = CliRunner().invoke(app, ["profiles", "validate", str(out)])
        assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- bundles

def test_a_bundle_replaced_in_place_never_reaches_the_running_model(tmp_path):
    import shutil

    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.model.moe import load_model

    path = tmp_path / "m.eqm"
    shutil.copy(SHIPPED_BUNDLES / "energy.eqm", path)
    m = load_model(str(path))
    x = np.random.default_rng(0).standard_normal((1, m.in_features)).astype(np.float32)
    before = m.predict(x).proba.copy()
    with open(path, "r+b") as f:  # 'cp new.eqm model.eqm': truncated, then written again
        f.truncate(0)
    np.testing.assert_array_equal(m.predict(x).proba, before)
    shutil.copy(SHIPPED_BUNDLES / "latency-critical.eqm", path)
    np.testing.assert_array_equal(m.predict(x).proba, before)


def edit_bundle(src, dst, edit_meta=None, edit_tensor=None):
    """A copy of bundle ``src`` with its metadata or one float tensor changed (checksum kept valid)."""
    import hashlib
    import struct

    data = bytearray(open(src, "rb").read())
    hlen = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + hlen])
    meta = json.loads(header["__metadata__"]["edgeqmoe"])
    body = data[8 + hlen:]
    if edit_tensor:
        name, value = edit_tensor
        b, _ = header[name]["data_offsets"]
        body[b:b + 4] = np.float32(value).tobytes()
    if edit_meta:
        edit_meta(meta, header)
    meta["data_sha256"] = hashlib.sha256(bytes(body)).hexdigest()
    header["__metadata__"]["edgeqmoe"] = json.dumps(meta)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    dst.write_bytes(struct.pack("<Q", len(h)) + h + bytes(body))
    return dst


def _first_scale(meta, header):
    return meta["graph"]["steps"][0]["scale"]


@pytest.mark.parametrize("edit,message", [
    (lambda m, h: m.update(classes=m["classes"][:-1]), "gives 10 outputs; the bundle has 9 classes"),
    (lambda m, h: m.update(graph=[1, 2]), "'graph' must be a mapping"),
    (lambda m, h: m.update(classes="dog"), "'classes' must be a non-empty list"),
    (lambda m, h: h[_first_scale(m, h)].update(shape=[-1]), "negative dimension"),
    (lambda m, h: h[_first_scale(m, h)].update(shape=[2**32, 2**32]), "spans"),
    (lambda m, h: m["graph"]["steps"][0].update(out=10**9), "is not a layer"),
    (lambda m, h: m["graph"]["steps"][0].pop("w"), "lacks 'w'"),
    (lambda m, h: m["graph"]["steps"].insert(1, "relu"), "step 1: not a mapping"),
    # a seed ensemble (balanced)
    (lambda m, h: m["graph"].update(members=[]), "non-empty list of members"),
    (lambda m, h: m["graph"]["members"][2]["steps"][-1].pop("scale"), "member 2: step 6: lacks 'scale'"),
    (lambda m, h: m["graph"]["members"][1]["steps"][0].update(**{"in": 100}), "member 1: step 0: takes 100 inputs"),
])
def test_malformed_bundle_fields_are_clear_errors(tmp_path, edit, message):
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.model import BundleError
    from edgeqmoe.model.moe import load_model

    src = "balanced.eqm" if "member" in message or "takes 100" in message else "latency-critical.eqm"
    bad = edit_bundle(SHIPPED_BUNDLES / src, tmp_path / "bad.eqm", edit_meta=edit)
    with pytest.raises(BundleError, match=message):
        load_model(str(bad))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scales_are_refused_at_load(tmp_path, value):
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.model import BundleError, load_bundle

    b = load_bundle(SHIPPED_BUNDLES / "balanced.eqm")
    name = b.meta["graph"]["members"][-1]["steps"][0]["scale"]
    bad = edit_bundle(SHIPPED_BUNDLES / "balanced.eqm", tmp_path / "bad.eqm", edit_tensor=(name, value))
    with pytest.raises(BundleError, match="NaN or infinite"):
        load_bundle(bad)


# --------------------------------------------------------------------------- C objects

def test_c_objects_give_the_same_answers_from_four_threads():
    from edgeqmoe.daemon.profiles import SHIPPED_BUNDLES
    from edgeqmoe.model.moe import load_model

    for name in ("energy.eqm", "stable.eqm", "balanced.eqm"):
        m = load_model(str(SHIPPED_BUNDLES / name))
        x = np.random.default_rng(1).standard_normal((192, m.in_features)).astype(np.float32)
        one = np.stack([m.predict(x[i:i + 1]).proba[0] for i in range(len(x))])
        got = np.zeros_like(one)

        def work(rows, m=m, x=x, got=got):
            for i in rows:
                got[i] = m.predict(x[i:i + 1]).proba[0]

        threads = [threading.Thread(target=work, args=(range(t, len(x), 4),)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        np.testing.assert_array_equal(got, one, err_msg=name)


def test_c_objects_refuse_misuse_with_python_errors(rng):
    from edgeqmoe.kernels import _ckernels, available_variants
    from edgeqmoe.kernels.formats import FORMATS

    f = FORMATS["q4"]
    variant = available_variants()[-1]
    W = rng.standard_normal((16, 64)).astype(np.float32)
    codes, scale = f.quantize(W)
    packed = f.pack(codes)
    scale = np.asarray(scale, np.float32).reshape(-1)
    with pytest.raises(ValueError, match="not initialised"):
        _ckernels.Program.__new__(_ckernels.Program).run(np.zeros(64, np.float32), np.zeros(16, np.float32))
    with pytest.raises(ValueError, match="not initialised"):
        _ckernels.Program(variant, [("linear", _ckernels.Layer.__new__(_ckernels.Layer))])
    with pytest.raises(ValueError, match="not initialised"):
        _ckernels.MoE.__new__(_ckernels.MoE).run(np.zeros(1, np.float32), np.zeros(1, np.float32),
                                                  np.zeros(1, np.int32), np.zeros(1, np.float32))
    assert _ckernels.Program.__new__(_ckernels.Program).variant is None
    layer = _ckernels.Layer(f.code, 16, 64, packed, scale, None)
    with pytest.raises(TypeError, match="initialised twice"):
        layer.__init__(f.code, 16, 64, packed, scale, None)
    with pytest.raises(TypeError, match="scale must be float32"):
        _ckernels.Layer(f.code, 16, 64, packed, scale.astype(np.float64)[:1].repeat(1), None)
    prog = _ckernels.Program(variant, [("linear", layer)])
    with pytest.raises(TypeError, match="initialised twice"):
        prog.__init__(variant, [("linear", layer)])
    with pytest.raises(TypeError, match="run: x must be float32"):
        prog.run(np.zeros(32, np.float64), np.zeros(16, np.float32))
    with pytest.raises(TypeError, match="run: out must be float32"):
        prog.run(np.zeros(64, np.float32), np.zeros(8, np.float64))
    out = np.zeros(16, np.float32)
    prog.run(np.ones(64, np.float32), out)
    assert np.isfinite(out).all()


# --------------------------------------------------------------------------- audio files

def wav_bytes(rate: int, samples: np.ndarray) -> bytes:
    """A plain 16-bit mono WAV, header written by hand (any rate it claims)."""
    import struct

    data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)




WEIGHTFREE_PROFILE = "version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n"


def test_a_file_that_declares_1_hz_ends_the_run_with_exit_2(tmp_path):
    bad = tmp_path / "one-hertz.wav"
    bad.write_bytes(wav_bytes(1, np.zeros(50_000)))
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE)
    r = run_cli(["run", "--profile", str(prof), "--source", f"file:{bad}", "--fast", "--log-dir", str(tmp_path / "l")])
    assert r.returncode == 2 and "declares 1 Hz" in r.stderr, r.stderr
    stop = [d for d in read_jsonl(tmp_path / "l" / "daemon.jsonl") if d["event"] == "stop"]
    assert stop and stop[0]["reason"] == "input failed"


def test_odd_file_names_are_read_and_named(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    rng = np.random.default_rng(0)
    name = os.path.join(os.fsencode(d), b"caf\xe9-\xff.wav")  # not UTF-8
    with open(name, "wb") as f:
        f.write(wav_bytes(16000, rng.standard_normal(16000 * 3) * 0.1))
    (d / "plain.wav").write_bytes(wav_bytes(22050, rng.standard_normal(22050 * 3) * 0.1))
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE)
    r = run_cli(["run", "--profile", str(prof), "--source", f"dir:{d}", "--fast", "--log-dir", str(tmp_path / "l")])
    assert r.returncode == 0, r.stderr
    files = [x["path"] for x in read_jsonl(tmp_path / "l" / "daemon.jsonl") if x["event"] == "file"]
    assert len(files) == 2 and any("caf\\xe9-\\xff.wav" in f for f in files), files
    ws = list(read_jsonl(tmp_path / "l" / "windows.jsonl"))
    assert [(w["fi"], w["fo"]) for w in ws] == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]


RSS_CHILD = textwrap.dedent("""
    import resource, sys
    from edgeqmoe.cli import main
    sys.argv = ["edgeqmoe"] + sys.argv[1:]
    try:
        main()
    except SystemExit:
        pass
    print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_an_hour_long_file_is_read_in_bounded_memory(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    long_wav, short_wav = tmp_path / "hour.wav", tmp_path / "five.wav"
    with sf.SoundFile(long_wav, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        block = (rng.standard_normal(8000 * 60) * 0.1).astype(np.float32)
        for _ in range(60):
            f.write(block)
    sf.write(short_wav, block[:8000 * 5], 8000, subtype="PCM_16")
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE)
    rss = {}
    for name, path in (("5 s", short_wav), ("1 h", long_wav)):
        r = subprocess.run([PY, "-c", RSS_CHILD, "run", "--profile", str(prof), "--source", f"file:{path}", "--fast",
                            "--duration", "4", "--log-dir", str(tmp_path / name.replace(" ", ""))],
                           capture_output=True, text=True, timeout=300)
        rss[name] = int(r.stdout.split("MAXRSS")[-1]) / 1024
    print(f"\npeak RSS: 5 s file {rss['5 s']:.1f} MB, 1 h file {rss['1 h']:.1f} MB")
    assert rss["1 h"] <= rss["5 s"] * 1.1 + 5  # the whole hour would add 115 MB of float32 at 8 kHz alone


def test_a_clip_shorter_than_a_window_gets_one_padded_window_as_offline():
    from edgeqmoe.audio.windowing import Windower, frame

    x = np.arange(1, 701, dtype=np.float32)
    w = Windower(1000, 500)
    assert list(w.feed(x[:300])) == [] and list(w.feed(x[300:])) == []
    start, win = w.finish_short()
    np.testing.assert_array_equal(win, frame(x, 1000, 500)[0])
    assert start == 0 and w.finish_short() is None
    w.reset(5000)
    got = list(w.feed(np.ones(1500, np.float32)))
    assert [s for s, _ in got] == [5000, 5500] and w.finish_short() is None  # long clips: tails dropped, as offline


# --------------------------------------------------------------------------- reading logs back

def test_summary_survives_odd_records_and_says_where_logs_are(tmp_path):
    from edgeqmoe.inspect.logs import LogsError, format_summary, summary

    d = tmp_path / "site" / "pi1"
    d.mkdir(parents=True)
    recs = {
        "daemon": [{"v": 1, "type": "daemon", "event": "start", "t_wall": 100.0, "classes": ["a", "b"]},
                   {"v": 1, "type": "daemon", "event": "start", "t_wall": 100.0, "classes": ["a", "b"]},  # same time
                   {"v": 1, "type": "daemon", "event": "stop", "t_wall": 150.0, "dropped_samples": "many"},
                   {"v": "1", "type": "daemon", "event": "stop", "t_wall": 160.0},                       # v a string
                   {"v": 1, "type": "daemon", "t_wall": 170.0}],                                        # no event
        "windows": [{"v": 1, "class": 0, "score": 0.9, "stages_ms": {"embed": 1.0, "head": 0.1}, "t_wall": 101.0},
                    {"v": 1, "class": 1, "score": "high", "stages_ms": {}, "t_wall": 102.0},            # mistyped
                    {"v": 1, "class": 1, "score": 0.5, "t_wall": 103.0},                                # no stages
                    {"v": 1, "class": 1, "score": 0.5, "stages_ms": {"embed": 1.0}}],                   # no time
        "events": [{"v": 1, "type": "event", "t_wall": 101.0}],                                        # no class
        "stats": [{"v": 1, "type": "stats", "t_wall": 120.0, "power_w": "1 W"}],
    }
    for kind, rows in recs.items():
        (d / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = summary(d)
    assert s["windows"] == 1 and s["runs"] == 2 and s["invalid_records"] == 6 and s["unknown_records"] == 1
    assert "wrong type" in format_summary(s)
    with pytest.raises(LogsError, match=f"one level down: {d}"):
        summary(tmp_path / "site")


def test_compare_says_undefined_without_baseline_variance(tmp_path):
    from typer.testing import CliRunner

    from edgeqmoe.cli import app

    for name, ms in (("a", lambda i: 1.0), ("b", lambda i: 1.0 + (i % 3) * 0.1)):
        d = tmp_path / name
        d.mkdir()
        (d / "daemon.jsonl").write_text(json.dumps({"v": 1, "type": "daemon", "event": "start", "t_wall": 1.0,
                                                    "classes": ["x"]}) + "\n")
        (d / "windows.jsonl").write_text("".join(json.dumps(
            {"v": 1, "class": 0, "score": 1.0, "stages_ms": {"embed": 1.0, "head": ms(i), "decision": 0.0},
             "t_wall": 2.0 + i}) + "\n" for i in range(30)))
    r = CliRunner().invoke(app, ["logs", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0 and "variance reduction undefined" in r.output and "%," not in r.output.split("latency")[1]


# --------------------------------------------------------------------------- the daemon: reload, signals, lock

_daemon_records, _wait = daemon_records, wait_for


def test_reload_and_stats_run_while_the_ring_is_never_empty(tmp_path, us8k):
    """--fast reads files as fast as the daemon takes them, so audio is always waiting:
    stats and reloads must still happen on time; an unreadable edit is rejected."""
    from conftest import US8K

    from edgeqmoe.daemon.profiles import load_profile
    from edgeqmoe.daemon.run import Daemon

    prof = tmp_path / "p.yaml"
    text = ("version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n"
            "logging: {flush_interval: 0.1, stats_interval: 1.0}\n")
    prof.write_text(text)
    logs = tmp_path / "logs"
    d = Daemon(load_profile(str(prof)), source=f"dir:{US8K}", realtime=False, log_dir=str(logs))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        assert _wait(lambda: (logs / "windows.jsonl").exists() and len((logs / "windows.jsonl").read_bytes()) > 2000)
        prof.write_text(text + "decision: {threshold: 0.35}\n")  # noticed by the file check alone
        assert _wait(lambda: any(r["event"] == "reload" for r in _daemon_records(logs)))
        assert d.profile.decision.threshold == 0.35
        prof.write_bytes(b"version: 1\nmodel: {bundle: caf\xe9.eqm}\n")
        d._reload.set()
        assert _wait(lambda: any(r["event"] == "reload_rejected" for r in _daemon_records(logs)))
        assert _wait(lambda: (logs / "stats.jsonl").exists() and len(list(read_jsonl(logs / "stats.jsonl"))) >= 2)
        assert t.is_alive()  # still reading the folder: all of it happened mid-stream
    finally:
        d.stop()
        t.join(timeout=60)
    rej = [r for r in _daemon_records(logs) if r["event"] == "reload_rejected"][0]
    assert "UTF-8" in rej["message"] and d.profile.decision.threshold == 0.35
    assert _daemon_records(logs)[-1]["event"] == "stop"


def test_reload_to_another_model_names_the_windows_after_it(tmp_path, us8k, weights_dir):
    from conftest import US8K

    from edgeqmoe.daemon.profiles import load_profile
    from edgeqmoe.daemon.run import Daemon
    from edgeqmoe.inspect.logs import load_logs

    prof = tmp_path / "p.yaml"
    text = ("version: 1\nmodel: {bundle: latency-critical.eqm}\naudio: {window: 2.0, hop: 1.0}\n"
            "logging: {flush_interval: 0.1}\n")
    prof.write_text(text)
    logs = tmp_path / "logs"
    d = Daemon(load_profile(str(prof)), source=f"dir:{os.path.join(US8K, 'fold1')}", realtime=False,
               log_dir=str(logs))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        assert _wait(lambda: (logs / "windows.jsonl").exists() and (logs / "windows.jsonl").stat().st_size > 500)
        prof.write_text(text.replace("latency-critical.eqm", "energy.eqm"))
        d._reload.set()
        assert _wait(lambda: any(r["event"] == "reload" for r in _daemon_records(logs)))
        n = d.windows
        assert _wait(lambda: d.windows > n + 5)
    finally:
        d.stop()
        t.join(timeout=60)
    recs = _daemon_records(logs)
    start = [r for r in recs if r["event"] == "start"][0]
    reload = [r for r in recs if r["event"] == "reload"][-1]  # the file check and the flag may both reload
    assert reload["bundle"].endswith("energy.eqm") and reload["model"] == "moe"
    assert reload["experts"] != start["experts"] and reload["classes"] == start["classes"]
    ws = load_logs(logs)["windows"]
    after = [w for w in ws if w["t_wall"] > reload["t_wall"]]
    assert after and all(set(w["expert_names"]) <= set(reload["experts"]) for w in after)


def test_sighup_while_starting_is_kept_for_later(tmp_path, us8k):
    from conftest import US8K

    prof = tmp_path / "p.yaml"
    prof.write_text("version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n"
                    "logging: {flush_interval: 0.1}\n")
    logs = tmp_path / "logs"
    p = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source",
                          f"dir:{os.path.join(US8K, 'fold1')}", "--realtime", "--log-dir", str(logs)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the lock appears once the model is built: before warm-up and before the source opens
        assert _wait(lambda: (logs / ".lock").exists() or p.poll() is not None, 120)
        p.send_signal(signal.SIGHUP)
        # the file is unchanged: the reload is looked at and said to change nothing
        assert _wait(lambda: any(r["event"] == "reload_unchanged" for r in _daemon_records(logs))
                     or p.poll() is not None)
        assert p.poll() is None, p.stderr.read()
        assert _wait(lambda: (logs / "windows.jsonl").exists() and (logs / "windows.jsonl").stat().st_size > 0)
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
    assert rc == 0
    events = [r["event"] for r in _daemon_records(logs)]
    assert events[0] == "start" and "reload_unchanged" in events and events[-1] == "stop"


def run_on_silence(tmp_path, extra: str = ""):
    """'edgeqmoe run' of the weight-free profile (plus ``extra``) on 3 s of silence, logs in tmp_path/l."""
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE + extra)
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(16000, np.zeros(16000 * 3)))
    return run_cli(["run", "--profile", str(prof), "--source", f"file:{wav}", "--fast", "--log-dir",
                    str(tmp_path / "l")])


def test_a_second_daemon_on_the_same_log_folder_exits_2(tmp_path):
    first = LogWriter(tmp_path / "l")
    try:
        r = run_on_silence(tmp_path)
    finally:
        first.close()
    assert r.returncode == 2 and f"another edgeqmoe daemon (pid {os.getpid()})" in r.stderr
    assert not (tmp_path / "l" / "windows.jsonl").stat().st_size  # the second wrote nothing


def test_an_offline_fetch_says_what_to_do(tmp_path):
    import dataclasses

    from edgeqmoe.embed import weights as W

    spec = next(s for s in vars(W).values() if isinstance(s, W.WeightsSpec))
    unreachable = dataclasses.replace(spec, url="http://127.0.0.1:9/weights.pt")  # nothing listens on port 9
    with pytest.raises(W.WeightsError) as e:
        W.fetch(unreachable, str(tmp_path), timeout=5)
    msg = str(e.value)
    assert "Without internet here" in msg and str(tmp_path) in msg and "EDGEQMOE_WEIGHTS_DIR" in msg
    assert "urlopen error" not in msg and not list(tmp_path.iterdir())  # nothing half-written left


# --------------------------------------------------------------------------- the level gate

def test_quiet_windows_run_no_model_and_decide_nothing(tmp_path):
    """Digital silence and noise at -70 and -60 dBFS are quiet (no embedder, no head,
    nothing decided, less energy); noise at -30 dBFS is not."""
    from edgeqmoe.inspect.logs import format_summary, summary

    rng = np.random.default_rng(3)
    d = tmp_path / "rec"
    d.mkdir()
    noise = rng.standard_normal(16000 * 4)
    noise /= np.sqrt(np.mean(noise ** 2))
    for name, x in (("a-silence", np.zeros(16000 * 4)), ("b-70", noise * 10 ** (-70 / 20)),
                    ("c-60", noise * 10 ** (-60 / 20)), ("d-30", noise * 10 ** (-30 / 20))):
        import soundfile as sf

        sf.write(d / f"{name}.wav", x.astype(np.float32), 16000, subtype="FLOAT")
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE + "decision: {threshold: 0.0}\nlogging: {stats_interval: 1.0}\n")
    r = run_cli(["run", "--profile", str(prof), "--source", f"dir:{d}", "--fast", "--log-dir", str(tmp_path / "l")])
    assert r.returncode == 0, r.stderr
    ws = list(read_jsonl(tmp_path / "l" / "windows.jsonl"))
    by_file = {}
    for w in ws:
        by_file.setdefault(w["fi"], []).append(w)
    assert len(by_file) == 4 and all(len(v) == 3 for v in by_file.values())
    for fi in (0, 1, 2):  # silence, -70, -60: quiet
        for w in by_file[fi]:
            assert w["d"] == -2 and "class" not in w and w["stages_ms"]["embed"] == 0.0 and w["lv"][0] < -57
    assert [round(w["lv"][0]) for w in by_file[1]] == [-70] * 3 and by_file[0][0]["lv"] == [-200, -200]
    for w in by_file[3]:  # -30 dBFS: the model ran and (threshold 0) decided a class
        assert w["d"] >= 0 and "class" in w and w["stages_ms"]["embed"] > 0 and abs(w["lv"][0] + 30) <= 1
    quiet_mj = np.mean([w["mj"] for fi in (0, 1, 2) for w in by_file[fi]])
    loud_mj = np.mean([w["mj"] for w in by_file[3]])
    print(f"\nenergy per window: quiet {quiet_mj:.3f} mJ, classified {loud_mj:.3f} mJ (modelled)")
    assert quiet_mj < loud_mj
    s = summary(tmp_path / "l")
    assert s["quiet"] == 9 and s["windows"] == 12 and sum(s["detections"].values()) == 3
    assert "quiet 9" in format_summary(s)
    stats = list(read_jsonl(tmp_path / "l" / "stats.jsonl"))
    assert sum(x["quiet_windows"] for x in stats) == 9


# --------------------------------------------------------------------------- the terminal

def test_terminal_says_what_listens_prints_events_and_pipes_json(tmp_path, us8k):
    from conftest import US8K

    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE + "decision: {threshold: 0.0, event_min_windows: 2}\n")
    clip = os.path.join(US8K, "fold1", "101415-3-0-2.flac")
    r = run_cli(["run", "--profile", str(prof), "--source", f"file:{clip}", "--fast", "--json", "--log-dir",
                 str(tmp_path / "l"), "--device", "test-box"])
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("edgeqmoe: test-box listening to 1 file(s) (as fast as possible); profile p (2 s "
                               "windows, a decision every 1 s), model balanced-weightfree.eqm")
    assert f"logs in {tmp_path / 'l'}" in lines[0]
    told = [x for x in lines if " in 101415-3-0-2.flac at " in x]
    events = list(read_jsonl(tmp_path / "l" / "events.jsonl"))
    assert events and len(told) == len(events) and told[0].split()[1] == events[0]["class"]
    assert all(e["device"] == "test-box" for e in events)
    piped = [json.loads(x) for x in r.stdout.splitlines()]
    logged = list(read_jsonl(tmp_path / "l" / "windows.jsonl"))
    assert piped == logged and len(piped) == 3
    r = run_cli(["run", "--profile", str(prof), "--source", f"file:{clip}", "--fast", "--quiet", "--log-dir",
                 str(tmp_path / "l2")])
    assert r.returncode == 0 and r.stdout == "" and "listening to" not in r.stderr and " at 0.0 s" not in r.stderr


# --------------------------------------------------------------------------- systemd's notify protocol

def _notify_socket(tmp_path):
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(0.05)
    return s, path


def _drain(sock, into):
    import socket
    import time

    while True:
        try:
            into.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            return


def test_notify_ready_watchdog_and_stopping_over_a_real_socket(tmp_path, us8k):
    """The daemon as systemd starts it (NOTIFY_SOCKET, WATCHDOG_USEC): READY once the
    input is open, watchdog pings while the loop runs, STOPPING at the end."""
    import time

    from conftest import US8K

    sock, path = _notify_socket(tmp_path)
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE)
    p = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source",
                          f"file:{os.path.join(US8K, 'fold1', '101415-3-0-2.flac')}", "--realtime", "--log-dir",
                          str(tmp_path / "l")], env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got = []
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        _drain(sock, got)
    _drain(sock, got)
    assert p.returncode == 0, p.stderr.read()
    msgs = [m for _, m in got]
    ready = next(i for i, m in enumerate(msgs) if m.startswith("READY=1"))
    pings = [t for t, m in got[ready:] if m == "WATCHDOG=1"]
    assert f"MAINPID={p.pid}" in msgs[ready] and "STATUS=p: listening to file:" in msgs[ready]
    assert len(pings) >= 8 and msgs[-1] == "STOPPING=1"  # 4 s of audio at real time, a ping every 0.1 s
    gaps = np.diff(pings)
    print(f"\nwatchdog pings: {len(pings)}, largest gap {gaps.max():.3f} s (period 0.3 s)")


def test_a_hung_loop_stops_pinging_the_watchdog(tmp_path, us8k, monkeypatch):
    """A window that never finishes (simulated by a step that blocks): no ping reaches
    the socket for longer than the watchdog period, so systemd would restart the daemon."""
    import time

    from conftest import US8K

    from edgeqmoe.daemon.profiles import load_profile
    from edgeqmoe.daemon.run import Daemon

    sock, path = _notify_socket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE)
    d = Daemon(load_profile(str(prof)), source=f"dir:{os.path.join(US8K, 'fold1')}", realtime=True,
               log_dir=str(tmp_path / "l"), quiet=True)
    hang = threading.Event()
    step = d._step

    def hanging_step(*a, **k):
        if d.windows == 3:
            hang.wait(2.0)  # the loop is stuck here for 2 s
        return step(*a, **k)

    d._step = hanging_step
    t = threading.Thread(target=d.run)
    t.start()
    got = []
    try:
        deadline = time.monotonic() + 60
        while d.windows < 6 and time.monotonic() < deadline:
            _drain(sock, got)
    finally:
        d.stop()
        t.join(timeout=30)
    _drain(sock, got)
    pings = [tm for tm, m in got if m == "WATCHDOG=1"]
    gaps = np.diff(pings)
    print(f"\nlongest silence of the watchdog: {gaps.max():.2f} s (period 0.3 s)")
    assert gaps.max() >= 1.9  # the 2 s hang: systemd would have restarted us after 0.3 s
    print(f"gaps outside the hang: median {np.median(gaps):.3f} s (measured, not asserted)")


# --------------------------------------------------------------------------- the metrics endpoint

def test_metrics_endpoint_counts_windows_events_and_latency(tmp_path, us8k):
    import urllib.request

    from conftest import US8K

    from edgeqmoe.daemon.profiles import load_profile
    from edgeqmoe.daemon.run import Daemon

    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE_PROFILE + "decision: {threshold: 0.0}\nmetrics: {http_port: 0}\n")
    logs = tmp_path / "l"
    d = Daemon(load_profile(str(prof)), source=f"dir:{os.path.join(US8K, 'fold1')}", realtime=True,
               log_dir=str(logs), quiet=True)
    t = threading.Thread(target=d.run)
    t.start()
    try:
        assert _wait(lambda: d.windows >= 5 and (logs / "daemon.jsonl").exists())
        url = next(r for r in _daemon_records(logs) if r["event"] == "start")["metrics_url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        d.stop()
        t.join(timeout=30)
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["edgeqmoe_windows_total"] >= 5 and values["edgeqmoe_window_seconds_count"] >= 5
    assert values['edgeqmoe_window_seconds_bucket{le="+Inf"}'] == values["edgeqmoe_window_seconds_count"]
    assert "edgeqmoe_dropped_samples_total" in values and "edgeqmoe_deadline_misses_total" in values
    events = [r for r in read_jsonl(logs / "events.jsonl")]
    import urllib.error

    with pytest.raises(urllib.error.URLError):  # closed with the daemon
        urllib.request.urlopen(url, timeout=2)
    print(f"\nmetrics: {values['edgeqmoe_windows_total']:.0f} windows, {len(events)} events logged at the end")


def test_a_busy_metrics_port_is_a_clear_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        r = run_on_silence(tmp_path, f"metrics: {{http_port: {port}}}\n")
    finally:
        s.close()
    assert r.returncode == 2 and f"metrics endpoint 127.0.0.1:{port} cannot listen" in r.stderr


def test_runtime_threads_caps_blas_as_well_as_torch(tmp_path, us8k):
    """runtime.threads reaches every thread pool of the daemon (numpy's BLAS included),
    and the start record says what each one got."""
    from conftest import US8K

    clip = os.path.join(US8K, "fold1", "101415-3-0-2.flac")
    for n in (1, 2):
        prof = tmp_path / f"p{n}.yaml"
        prof.write_text(WEIGHTFREE_PROFILE + f"runtime: {{threads: {n}}}\n")
        r = run_cli(["run", "--profile", str(prof), "--source", f"file:{clip}", "--fast", "--quiet", "--log-dir",
                     str(tmp_path / f"l{n}")])
        assert r.returncode == 0, r.stderr
        start = next(d for d in read_jsonl(tmp_path / f"l{n}" / "daemon.jsonl") if d["event"] == "start")
        assert start["threads"] and set(start["threads"].values()) == {n}, start["threads"]
