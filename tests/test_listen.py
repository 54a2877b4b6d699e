"""listen: AudioSet classes reported beside the model's classes (mn04's own output)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from edgeqmoe.daemon.sinks import read_jsonl
from edgeqmoe.settings import SettingsError

from conftest import IN_CI, US8K
from helpers import run_cli

PY = sys.executable




def run_on_dog_and_speech(tmp_path, profile, weights_dir, lang, text):
    """'edgeqmoe run' on a folder of two files: a real dog bark (file 0) and espeak-ng
    speech (file 1); returns the log folder."""
    espeak = shutil.which("espeak-ng")
    if not espeak:
        if IN_CI:
            pytest.fail("CI must have espeak-ng (tools/setup.sh --dev)")
        pytest.skip("espeak-ng not installed")
    d = tmp_path / "rec"
    d.mkdir()
    shutil.copy(os.path.join(US8K, "fold1", "101415-3-0-2.flac"), d / "a-dog.flac")
    subprocess.run([espeak, "-v", lang, "-w", str(d / "b-speech.wav"), text], check=True, timeout=60)
    logs = tmp_path / "logs"
    r = run_cli(["run", "--profile", profile, "--source", f"dir:{d}", "--fast", "--log-dir", str(logs)],
                env={"EDGEQMOE_WEIGHTS_DIR": weights_dir})
    assert r.returncode == 0, r.stderr
    return logs


def test_listen_groups_validate_with_did_you_mean(tmp_path):
    from edgeqmoe.daemon.profiles import load_profile

    p = tmp_path / "p.yaml"
    p.write_text("model: {bundle: balanced.eqm}\nlisten:\n  alarm: [Smoke detector, Fire alarm]\n  Dog: 0.4\n"
                 "  speech:\n  baby: {labels: [Baby cry, infant cry], threshold: 0.2}\n")
    prof = load_profile(str(p))
    assert prof.listen["alarm"].labels == ("Smoke detector", "Fire alarm") and prof.listen["alarm"].threshold == 0.5
    assert prof.listen["Dog"].labels == ("Dog",) and prof.listen["Dog"].threshold == 0.4
    assert prof.listen["speech"].labels == ("speech",)
    p.write_text("model: {bundle: balanced.eqm}\nlisten:\n  alarm: [Smok detector]\n  x: {labels: [Dog], "
                 "threshold: .nan}\n")
    with pytest.raises(SettingsError) as e:
        load_profile(str(p))
    msg = str(e.value)
    assert "listen.alarm.labels[0]: 'Smok detector' is not an AudioSet class; did you mean 'Smoke detector, " \
           "smoke alarm'?" in msg and "listen.x.threshold" in msg


def test_labels_command_lists_and_searches():
    from typer.testing import CliRunner

    from edgeqmoe.cli import app

    r = CliRunner().invoke(app, ["labels"])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 527
    r = CliRunner().invoke(app, ["labels", "smoke"])
    assert r.output.split() == ["399", "Smoke", "detector,", "smoke", "alarm"]


def test_home_profile_hears_a_dog_and_speech_and_names_them(tmp_path, weights_dir, us8k):
    """The shipped home profile on a real dog bark and on speech made with espeak-ng."""
    from edgeqmoe.inspect.logs import format_summary, summary

    logs = run_on_dog_and_speech(tmp_path, "home", weights_dir, "en", "Good morning. This is only people talking "
                                 "in the kitchen, nothing to report, thank you.")
    start = next(x for x in read_jsonl(logs / "daemon.jsonl") if x["event"] == "start")
    groups = list(start["listen"])
    assert groups[:3] == ["alarm", "glass_breaking", "baby_crying"] and \
        start["listen"]["alarm"]["labels"][0] == "Smoke detector, smoke alarm"
    ws = list(read_jsonl(logs / "windows.jsonl"))
    heard = {fi: {groups[g] for w in ws if w["fi"] == fi for g, _ in w.get("ls", [])} for fi in (0, 1)}
    print(f"\nheard: dog clip {sorted(heard[0])}, speech {sorted(heard[1])}")
    assert "dog" in heard[0] and "speech" not in heard[0]
    assert "speech" in heard[1] and "dog" not in heard[1]
    evs = list(read_jsonl(logs / "events.jsonl"))
    assert {(e["class"], e.get("source")) for e in evs} >= {("dog", "audioset"), ("speech", "audioset")}
    s = summary(logs)
    assert s["heard"]["dog"] >= 2 and s["heard_events"]["speech"] == 1 and "heard (listen:" in format_summary(s)


def test_without_mn04_listen_says_it_is_unavailable(tmp_path):
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, (np.random.default_rng(0).standard_normal(16000 * 3) * 0.1).astype(np.float32), 16000)
    r = run_cli(["run", "--profile", "home", "--source", f"file:{wav}", "--fast", "--log-dir", str(tmp_path / "l")],
                env={"EDGEQMOE_WEIGHTS_DIR": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("AudioSet labels are unavailable") == 1
    start = next(x for x in read_jsonl(tmp_path / "l" / "daemon.jsonl") if x["event"] == "start")
    assert start["listen"] == {} and "unavailable" in start["listen_unavailable"]
    assert all("ls" not in json.loads(line) for line in open(tmp_path / "l" / "windows.jsonl"))


def test_openset_eval_tool_builds_and_runs(tmp_path):
    """A tiny run of tools/openset_eval.py (whatever of its sources this machine has)."""
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "openset_eval.py")
    r = subprocess.run([PY, tool, "build", str(tmp_path / "ev")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(tmp_path / "ev" / "noise")) == 8
    prof = tmp_path / "wf.yaml"
    prof.write_text("version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n")
    r = subprocess.run([PY, tool, "run", str(tmp_path / "ev"), "-p", str(prof), "--json", str(tmp_path / "t.json")],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "EDGEQMOE_WEIGHTS_DIR": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr
    table = json.load(open(tmp_path / "t.json"))[str(prof)]
    noise = table["noise"]
    assert noise["windows"] == 8 * 19 and noise["decided_below_-55dBFS"] == 0 and noise["quiet"] == 4 * 19
    print("\n" + r.stdout)


def test_open_set_rule_turns_speech_into_other_and_keeps_a_dog(tmp_path, weights_dir, us8k):
    """Speech (espeak-ng) is none of the ten classes: 'other', with the rule's score and
    mn04's top AudioSet classes; a real dog bark is still decided as dog_bark."""
    from edgeqmoe.embed.audioset import audioset_labels
    from edgeqmoe.inspect.logs import summary

    logs = run_on_dog_and_speech(tmp_path, "stable", weights_dir, "fr", "Bonjour à tous, la réunion commence "
                                 "dans cinq minutes, merci de prendre place.")
    start = next(x for x in read_jsonl(logs / "daemon.jsonl") if x["event"] == "start")
    assert 0 < start["open_set"]["threshold"] < 1
    ws = list(read_jsonl(logs / "windows.jsonl"))
    speech = [w for w in ws if w["fi"] == 1]
    assert speech and all(w["d"] == -3 for w in speech)
    top = [audioset_labels()[i] for i, _ in speech[0]["o"][1]]
    failed = speech[0]["o"][0]  # below the any-target threshold, or below that of the head's class
    assert "Speech" in top and (failed < start["open_set"]["threshold"] or
                                failed < start["open_set"]["class_thresholds"][start["classes"][speech[0]["class"]]])
    assert start["decision"]["event_windows"]["gun_shot"] == 1 and 0 < start["decision"]["thresholds"]["siren"] < 1
    s = summary(logs)
    assert s["other"] == len(speech) and s["detections"].get("dog_bark", 0) >= 2


def test_eval_reports_open_set_figures(tmp_path, weights_dir, us8k):
    """edgeqmoe eval --open-set: per category of non-target audio, the share of windows
    decided as a class, quiet or other, by the daemon's own pipeline."""
    import numpy as np
    import soundfile as sf
    from typer.testing import CliRunner

    from edgeqmoe.cli import app

    ev = tmp_path / "ev"
    for cat in ("noise", "speech"):
        (ev / cat).mkdir(parents=True)
    n = np.random.default_rng(0).standard_normal(16000 * 5)
    n /= np.sqrt(np.mean(n ** 2))
    sf.write(ev / "noise" / "white-70.wav", (n * 10 ** (-70 / 20)).astype(np.float32), 16000)
    espeak = shutil.which("espeak-ng")
    if espeak:
        subprocess.run([espeak, "-v", "it", "-w", str(ev / "speech" / "it.wav"), "Buongiorno, il treno per Roma "
                        "parte alle nove e dieci dal binario tre."], check=True, timeout=60)
    r = CliRunner().invoke(app, ["eval", "--profile", "balanced", "--data", US8K, "--fold", "3", "--cache",
                                 str(tmp_path / "cache"), "--open-set", str(ev), "--shipped-rule", "--no-events",
                                 "--json"])
    assert r.exit_code == 0, r.output
    figs = json.loads(r.output)["open_set"]["categories"]
    assert {k: figs["noise"][k] for k in ("windows", "decided", "quiet", "other", "abstain", "events")} == \
        {"windows": 4, "decided": 0, "quiet": 4, "other": 0, "abstain": 0, "events": 0}
    if espeak:
        assert figs["speech"]["windows"] >= 3 and figs["speech"]["decided"] == 0
