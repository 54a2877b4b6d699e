"""Reliability round two: each attack that once crashed, hung, lost data or touched files
that were not the daemon's, run again against the fixed daemon."""
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf

from conftest import MODELS, US8K, need
from helpers import daemon_records, run_cli, wait_for
from test_mqtt import Broker, Subscriber

from edgeqmoe.daemon.clips import ClipKeeper
from edgeqmoe.daemon.profiles import ClipSettings
from edgeqmoe.daemon.records import Event
from edgeqmoe.daemon.sinks import read_jsonl

SR = 16000
DOG = os.path.join(US8K, "fold1", "101415-3-0-2.flac")


# --------------------------------------------------------------------------- 1: a hostile retained message

def test_a_hostile_retained_discovery_message_neither_kills_the_link_nor_loses_events(tmp_path, weights_dir, us8k):
    """200,000 '[' retained on a discovery topic the daemon subscribes to: every event still
    reaches the broker, and a second run (the message still retained) does as well."""
    broker = Broker(tmp_path / "broker").start()
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        topic = "homeassistant/binary_sensor/edgeqmoe_pi-attack/evil/config"
        pub.publish(topic, b"[" * 200_000, qos=1, retain=True).wait_for_publish(10)
        pub.publish("homeassistant/binary_sensor/edgeqmoe_pi-attack/nested/config",
                    json.dumps({"state_topic": {"a": [1] * 10}}).encode(), qos=1, retain=True).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        prof = tmp_path / "p.yaml"
        prof.write_text("version: 1\nmodel: {bundle: stable.eqm}\naudio: {window: 2.0, hop: 1.0}\ndevice: pi-attack\n"
                        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, backoff: [1, 1]}}\n")
        for run in range(2):
            sub = Subscriber(broker.port)
            logs = tmp_path / f"logs{run}"
            r = run_cli(["run", "--profile", str(prof), "--source", f"file:{DOG}", "--fast", "--log-dir", str(logs)])
            assert r.returncode == 0, r.stderr
            records = list(read_jsonl(logs / "events.jsonl"))
            sub.wait(lambda s=sub: (b"offline", False) in s.on("edgeqmoe/pi-attack/availability"), "offline")
            sub.close()
            sent = [json.loads(p) for p, _ in sub.on("edgeqmoe/pi-attack/event")]
            assert records and [e["class"] for e in sent] == [e["class"] for e in records], (run, r.stderr)
            assert not any(d["event"] == "mqtt_disconnected" for d in read_jsonl(logs / "daemon.jsonl"))
            print(f"\nrun {run}: {len(records)} event(s) logged, {len(sent)} reached the broker")
    finally:
        broker.stop()


# --------------------------------------------------------------------------- 2-5: clips

def _keeper(tmp_path, emitted=None, **kw):
    said = []
    k = ClipKeeper(ClipSettings(enabled=True, privacy=False, **kw), str(tmp_path), SR,
                   lambda ev, **f: said.append((ev, f)), lambda m: said.append(("echo", m)),
                   emit=(lambda ev, f: emitted.append((ev, f))) if emitted is not None else None)
    return k, said


def _one_event(k, t0=0.0, seconds=1.0):
    """Feed ``seconds`` of a tone and an event over all of it; the clip is queued."""
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int((seconds + 2) * SR)) / SR)).astype(np.float32)
    start = int(t0 * SR)
    ev = Event("dog_bark", t0, t0 + seconds, 0.9, windows=2)
    k.audio(x[:SR // 2], start)
    k.begin(ev)
    k.audio(x[SR // 2:], start + SR // 2)
    k.finish(ev)
    return ev, k.ready()


def test_a_full_disk_fails_each_clip_alone_and_no_record_names_a_clip_never_written(tmp_path):
    """RLIMIT_FSIZE makes every clip write fail (libsndfile asserts on the second): the
    writer thread lives on, no .tmp is left, and each event is emitted with why its clip
    is missing; once the disk has room again, clips are written."""
    code = f"""
import resource, sys, time, json
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_attacks import _keeper, _one_event
from pathlib import Path
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
emitted = []
k, said = _keeper(Path({str(tmp_path)!r}), emitted)
for i in range(4):
    _one_event(k, t0=10.0 * i, seconds=3.0)
    time.sleep(0.3)
k.close()
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(json.dumps([f for _, f in emitted]))
print(json.dumps(k.stats()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fields, stats = [json.loads(x) for x in r.stdout.strip().splitlines()[-2:]]
    assert len(fields) == 4 and all("clip" not in f and "cannot write" in f["clip_withheld"] for f in fields), fields
    assert stats["clips_failed_total"] == 4 and stats["clips_kept_total"] == 0
    folder = tmp_path / "clips"
    assert sorted(os.listdir(folder)) == []  # no half file, no .tmp
    emitted = []
    k, _ = _keeper(tmp_path, emitted)
    _one_event(k, seconds=3.0)
    k.close()
    assert len(emitted) == 1 and (tmp_path / emitted[0][1]["clip"]).is_file()
    print(f"\nfull disk: 4 events, 4 said 'cannot write' ({fields[1]['clip_withheld'][:60]}...), then 1 clip written")


def test_retention_deletes_only_the_daemons_own_clips(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    tone = np.zeros(SR, np.float32)
    old = time.time() - 400 * 86400
    mine = folder / "20250101T000000.000Z_dog_bark.flac"
    theirs = [folder / "holiday.flac", folder / "20250101T000000.000Z dog.flac", folder / "notes.txt"]
    for p in [mine] + theirs:
        sf.write(str(p), tone, SR, format="FLAC") if p.suffix == ".flac" else p.write_text("x")
        os.utime(p, (old, old))
    k, _ = _keeper(tmp_path, max_age_days=30)
    assert not mine.exists() and all(p.exists() for p in theirs) and k.deleted == 1


def test_a_clips_folder_that_is_a_link_is_refused_and_nothing_behind_it_touched(tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    keep = other / "20250101T000000.000Z_dog_bark.flac"
    sf.write(str(keep), np.zeros(SR, np.float32), SR, format="FLAC")
    os.utime(keep, (0, 0))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "clips").symlink_to(other)
    with pytest.raises(OSError, match="symbolic link"):
        _keeper(logs, max_age_days=1)
    assert keep.exists()
    # a link to a file inside the folder is never followed by retention either
    real = tmp_path / "real"
    real.mkdir()
    (real / "clips").mkdir()
    victim = tmp_path / "victim.flac"
    sf.write(str(victim), np.zeros(SR, np.float32), SR, format="FLAC")
    (real / "clips" / "20250101T000000.000Z_dog_bark.flac").symlink_to(victim)
    _keeper(real, max_count=1, max_age_days=1)
    assert victim.exists()
    # through the daemon: exit 2 with the folder named
    prof = tmp_path / "p.yaml"
    prof.write_text("version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n"
                    "clips: {enabled: true}\n")
    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(SR * 3, np.float32), SR)
    r = run_cli(["run", "--profile", str(prof), "--source", f"file:{wav}", "--fast", "--log-dir", str(logs)])
    assert r.returncode == 2 and "symbolic link" in r.stderr and "clips" in r.stderr, r.stderr
    assert keep.exists()


def test_a_temporary_clip_left_by_a_kill_is_removed_at_the_next_start(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    stale = folder / ".20250101T000000.000Z_dog_bark.flac.tmp"
    stale.write_bytes(b"half a clip")
    user = folder / ".my.flac.tmp"
    user.write_bytes(b"not ours")
    k, said = _keeper(tmp_path)
    assert not stale.exists() and user.exists() and k.stale == 1
    assert any(ev == "clips_stale_removed" and f["count"] == 1 for ev, f in said)


# --------------------------------------------------------------------------- 6: a damaged converted embedder

def test_a_nan_in_the_converted_embedder_is_caught_and_converted_anew(tmp_path, weights_dir, monkeypatch):
    from edgeqmoe.embed import mn04_int8 as M

    monkeypatch.setenv("EDGEQMOE_CACHE_DIR", str(tmp_path / "cache"))
    e = M.MN04Int8Embedder(weights=weights_dir)
    path = e.model_path
    meta, arrays = M._map_safetensors(path)
    header_len = int.from_bytes(open(path, "rb").read(8), "little")
    header = json.loads(open(path, "rb").read(8 + header_len)[8:])
    name = next(k for k in header if k.endswith(".bias") or k.endswith(".fb"))
    off = 8 + header_len + header[name]["data_offsets"][0]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<f", float("nan")))
    said = []
    e2 = M.MN04Int8Embedder(weights=weights_dir, say=said.append)
    assert e2.converted and said and "do not match" in said[0] and "anew" in said[0]
    x = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    np.testing.assert_array_equal(e2.embed(x, SR), e.embed(x, SR))
    # the C kernels themselves: NaN squeeze-excitation biases give numbers, not a crash
    ops, gate = M.build_ops(os.path.join(weights_dir, "mn04_as_mAP_432.pt"))
    for op in ops:
        if op["kind"] == "se":
            op["fb"] = np.full_like(op["fb"], np.nan)
    for variant in ("generic", e.variant):
        emb, logits = M.Engine(ops, gate, variant).forward_mel(np.zeros((1, 128, 101), np.float32))
        assert np.isfinite(emb).all() and np.isfinite(logits).all()


# --------------------------------------------------------------------------- 7: a crafted checkpoint

def _crafted_checkpoint(path, size, storage_bytes=16, stride=1, offset=0):
    """A torch-format zip whose one tensor claims ``size`` floats over a storage of
    ``storage_bytes``: the pickle written opcode by opcode (no torch needed)."""
    def uni(t):
        b = t.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def i4(v):
        return pickle.dumps(v, protocol=2)[2:-1]  # the int's own opcode, whatever its size

    pkl = (b"\x80\x02}" + uni("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
           + b"(" + uni("storage") + uni("FloatStorage") + uni("0") + uni("cpu") + i4(storage_bytes // 4) + b"tQ"
           + i4(offset) + b"(" + i4(size) + b"t(" + i4(stride) + b"t\x89" + b"tRs.")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", b"\x01" * storage_bytes)


@pytest.mark.parametrize("size,stride,offset", [(4096, 1, 0), (1 << 24, 1, 0), (2, 1 << 40, 0), (1, 1, 4)])
def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path, size, stride, offset):
    from edgeqmoe.embed.ptfile import CheckpointError, read_state_dict

    path = tmp_path / "crafted.pt"
    _crafted_checkpoint(path, size, stride=stride, offset=offset)
    with pytest.raises(CheckpointError, match="reaches element|damaged or crafted"):
        read_state_dict(path)
    _crafted_checkpoint(path, 4)  # the same file, honest: read
    assert read_state_dict(path)["w"].shape == (4,)


# --------------------------------------------------------------------------- 8: samples far beyond full scale

@pytest.mark.parametrize("value", [1e30, 3e38])
def test_float_samples_far_beyond_full_scale_are_clipped_not_fatal(tmp_path, value):
    folder = tmp_path / "in"
    folder.mkdir()
    x = np.zeros(SR * 3, np.float32)
    x[::7] = value
    x[3::7] = -value
    sf.write(str(folder / "a-loud.wav"), x, SR, subtype="FLOAT")
    sf.write(str(folder / "b-fine.wav"), (0.1 * np.sin(np.arange(SR * 3) / 5)).astype(np.float32), SR)
    logs = tmp_path / "logs"
    r = run_cli(["run", "--profile", "balanced", "--source", f"dir:{folder}", "--fast", "--log-dir", logs],
                env={"EDGEQMOE_WEIGHTS_DIR": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr
    ws = list(read_jsonl(logs / "windows.jsonl"))
    assert {w["fi"] for w in ws} == {0, 1}  # both files read to the end
    assert all(w["lv"][1] <= 0 for w in ws)  # clipped to full scale: 0 dBFS at most


# --------------------------------------------------------------------------- 9: a reload that changes nothing

def test_sighup_storm_with_the_profile_unchanged_loses_nothing(tmp_path, us8k):
    """A real-time run of dog barks; 30 SIGHUPs (the file unchanged) and then a real edit:
    window offsets go on without a gap or a repeat, the capture lag stays small, the
    event open across the storm is kept, and the unchanged reload is said once."""
    folder = tmp_path / "in"
    folder.mkdir()
    x = np.concatenate([sf.read(DOG, dtype="float32")[0]] * 3)
    sf.write(str(folder / "dogs.wav"), x, SR)
    prof = tmp_path / "p.yaml"
    text = ("version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0, realtime: true}\n"
            "decision: {threshold: 0.05, open_set: false}\nlogging: {flush_interval: 0.1}\n")
    prof.write_text(text)
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source",
                             f"dir:{folder}", "--log-dir", str(logs)], stderr=subprocess.PIPE, text=True)
    try:
        def n_windows():
            return len(list(read_jsonl(logs / "windows.jsonl"))) if (logs / "windows.jsonl").exists() else 0

        assert wait_for(lambda: n_windows() >= 2, 60)
        for _ in range(30):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.02)
        assert wait_for(lambda: n_windows() >= 5, 60)
        prof.write_text(text.replace("threshold: 0.05", "threshold: 0.06"))
        os.utime(prof, (time.time() + 5, time.time() + 5))
        assert wait_for(lambda: any(r["event"] == "reload" for r in daemon_records(logs)), 30)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    ws = list(read_jsonl(logs / "windows.jsonl"))
    offsets = [w["fo"] for w in ws]
    assert offsets == [float(i) for i in range(len(offsets))], offsets
    assert len(offsets) == int(len(x) / SR) - 1
    lags = [w["capture_lag_ms"] for w in ws]
    assert max(lags) < 1000, lags
    recs = daemon_records(logs)
    assert sum(r["event"] == "reload_unchanged" for r in recs) == 1
    reload = [r for r in recs if r["event"] == "reload"]
    assert len(reload) == 1 and reload[0]["changed"] == ["decision.threshold"]
    assert err.count("unchanged") == 1 and "reloaded (decision.threshold changed)" in err, err
    evs = list(read_jsonl(logs / "events.jsonl"))
    print(f"\n{len(ws)} windows, offsets 0..{offsets[-1]:g} s without a gap; lag max {max(lags):.0f} ms; "
          f"events {[(e['class'], e['start_s'], e['end_s']) for e in evs]}")
    assert evs and min(e["start_s"] for e in evs) < 2.0 < max(e["end_s"] for e in evs)


# --------------------------------------------------------------------------- 10: a FIFO where a file belongs

def test_a_fifo_as_password_file_or_profile_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    prof = tmp_path / "p.yaml"
    prof.write_text("version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n"
                    f"mqtt: {{host: 127.0.0.1, port: 1, username: u, password_file: {fifo}}}\n")
    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(SR * 3, np.float32), SR)
    r = run_cli(["run", "--profile", prof, "--source", f"file:{wav}", "--fast", "--log-dir", tmp_path / "logs"],
                timeout=60)
    assert r.returncode == 2 and "password_file" in r.stderr and "FIFO" in r.stderr, r.stderr
    prof_fifo = tmp_path / "q.yaml"
    os.mkfifo(prof_fifo)
    r = run_cli(["run", "--profile", prof_fifo, "--source", f"file:{wav}", "--fast"], timeout=60)
    assert r.returncode == 2 and "FIFO" in r.stderr and str(prof_fifo) in r.stderr, r.stderr


# --------------------------------------------------------------------------- the newcomer's frictions

def test_weights_a_user_converts_are_the_weights_run_uses_and_said(tmp_path, us8k):
    """'weights convert ~/Downloads/mn04.pt' on a machine whose search path has no weights:
    the next 'run' uses them (not the weight-free fallback), and says which file."""

    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    src = need(os.path.join(MODELS, "mn04_as_mAP_432.pt"), "mn04 weights")
    os.symlink(src, downloads / "mn04_as_mAP_432.pt")
    env = {"EDGEQMOE_WEIGHTS_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "EDGEQMOE_CACHE_DIR": str(tmp_path / "converted")}
    r = run_cli(["weights", "convert", downloads / "mn04_as_mAP_432.pt", "--to", "int8"], env=env)
    assert r.returncode == 0 and "copied" in r.stdout and "int8: wrote" in r.stdout, r.stdout + r.stderr
    cached = tmp_path / "cache" / "edgeqmoe" / "weights" / "mn04_as_mAP_432.pt"
    assert cached.is_file() and not cached.is_symlink()
    r = run_cli(["run", "--profile", "stable", "--source", f"file:{DOG}", "--fast", "--log-dir", tmp_path / "logs"],
                env=env)
    assert r.returncode == 0 and "weight-free" not in r.stderr and f"weights {cached}" in r.stderr, r.stderr
    assert "converting" not in r.stderr  # the converted file made by 'weights convert' is the one used


def test_validate_refuses_the_kernel_that_run_refuses():
    from edgeqmoe.kernels import KernelChoiceError, resolve_variant

    with pytest.raises(KernelChoiceError) as e:
        resolve_variant("fastest")
    assert str(e.value).count("generic") == 1
    prof_text = "version: 1\nmodel: {bundle: balanced.eqm, kernel: fastest}\n"
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(prof_text)
    try:
        r = run_cli(["profiles", "validate", f.name])
        assert r.returncode != 0 and "model.kernel" in (r.stdout + r.stderr) and "fastest" in (r.stdout + r.stderr)
    finally:
        os.unlink(f.name)


@pytest.mark.parametrize("args", [
    ["bench", "kernels", "--in-features", "64", "--out-features", "32", "--hidden", "32", "--rounds", "1",
     "--per-round", "1", "--format", "q4"],
    ["train", "any.yaml"],
    ["bench", "embedders", "-e", "logmel-stats", "--rounds", "1", "--per-round", "1"],
])
def test_every_command_works_without_torch_or_says_what_to_install(tmp_path, args):
    """torch made unimportable (as on a Pi with the default install)."""
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    r = run_cli(args, env={"PYTHONPATH": str(tmp_path / "shim")}, cwd=tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0 or "pip install" in r.stderr + r.stdout, r.stdout + r.stderr
    if args[:2] == ["bench", "kernels"]:
        assert "torch is not installed" in r.stdout


def test_one_sound_heard_as_a_class_and_a_listen_group_makes_one_clip(tmp_path):
    emitted = []
    k, _ = _keeper(tmp_path, emitted)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(5 * SR) / SR)).astype(np.float32)
    bark, dog = Event("dog_bark", 1.0, 3.0, 0.9, windows=2), Event("dog", 1.0, 3.0, 0.8, windows=2, source="audioset")
    k.audio(x[:SR], 0)
    k.begin(bark)
    k.begin(dog)
    k.audio(x[SR:], SR)
    k.finish(bark)
    k.finish(dog)
    assert k.ready() == []  # both go out through the writer
    k.close()
    clips = sorted(os.listdir(tmp_path / "clips"))
    assert len(clips) == 1 and [f["clip"] for _, f in emitted] == [f"clips/{clips[0]}"] * 2
    assert k.stats()["clips_shared_total"] == 1 and k.stats()["clips_kept_total"] == 1


def test_discovery_can_leave_classes_out_and_names_what_it_does_not_know():
    from edgeqmoe.daemon.mqtt import MqttError, MqttLink
    from edgeqmoe.daemon.profiles import MqttSettings

    s = MqttSettings(host="127.0.0.1", port=1, discovery_skip=("engine_idling",))
    link = MqttLink(s, "pi", "p", ["dog_bark", "engine_idling"], lambda *a, **f: None, lambda m: None)
    topics = list(link._configs)
    assert any("/dog_bark/" in t for t in topics) and not any("engine_idling" in t for t in topics)
    with pytest.raises(MqttError, match="discovery_skip.*siren"):
        MqttLink(MqttSettings(host="127.0.0.1", port=1, discovery_skip=("siren",)), "pi", "p", ["dog_bark"],
                 lambda *a, **f: None, lambda m: None)


def test_messages_still_queued_at_exit_are_counted_and_said():
    from edgeqmoe.daemon.mqtt import MqttLink
    from edgeqmoe.daemon.profiles import MqttSettings
    from test_mqtt import free_port

    said = []
    link = MqttLink(MqttSettings(host="127.0.0.1", port=free_port(), backoff=(5.0, 5.0)), "pi", "p", ["dog_bark"],
                    lambda ev, **f: said.append((ev, f)), lambda m: None).start()
    for i in range(3):
        link.event({"i": i})
    link.close(timeout=0.5)
    unsent = [f for ev, f in said if ev == "mqtt_unsent"]
    assert unsent and unsent[0]["count"] >= 3 and link.stats()["mqtt_dropped_total"] >= 3


def test_bad_files_and_arguments_are_said_in_words(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.wav").write_text("shopping list")
    (bad / "empty.wav").write_bytes(b"")
    r = run_cli(["run", "--profile", "balanced", "--source", f"dir:{bad}", "--fast", "--log-dir", tmp_path / "l"])
    assert r.returncode == 2 and "empty.wav: the file is empty (0 bytes)" in r.stderr, r.stderr
    assert "notes.wav: cannot decode it: not a recognised audio format" in r.stderr
    assert "NoBackendError" not in r.stderr and "b'" not in r.stderr
    r = run_cli(["run", "--profile", "balanced", "--source", f"file:{bad}"])
    assert r.returncode == 2 and "is a folder; use --source dir:" in r.stderr
    r = run_cli(["run", "--profile", "balanced", "--source", f"file:{bad / 'notes.wav'}", "--duration", "-3"])
    assert r.returncode == 2 and "--duration" in r.stderr


def test_a_clip_of_a_dir_source_starts_in_its_own_file_and_only_its_speech_counts(tmp_path):
    """File A (speech) then file B (a bark) in one dir: source: the bark's clip does not
    reach back into A (its pre-roll stops at B's first sample), and A's speech does not
    withhold it."""
    emitted = []
    k = ClipKeeper(ClipSettings(enabled=True, privacy=True, pre_roll=1.0, post_roll=0.5), str(tmp_path), SR,
                   lambda *a, **f: None, lambda m: None, emit=lambda ev, f: emitted.append(f))
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(6 * SR) / SR)).astype(np.float32)
    k.audio(x[:2 * SR], 0)
    k.window(0.0, 2.0, 0.95)  # file A: speech
    k.new_file(2 * SR)  # file B starts at 2 s
    k.audio(x[2 * SR:], 2 * SR)
    bark = Event("dog_bark", 2.0, 4.0, 0.9, windows=2)
    k.window(2.0, 4.0, 0.01)
    k.begin(bark)
    k.finish(bark)
    k.ready()
    k.close()
    assert len(emitted) == 1 and "clip" in emitted[0], emitted
    assert emitted[0]["clip_s"] == 2.5  # 2 s of the bark and 0.5 s after it; none of file A
