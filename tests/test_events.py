"""Events you can trust: the negative corpus, the open-set rule's two parts, the
held-out protocol of ``edgeqmoe eval --open-set``, event-level figures, short sounds that
make an event from one window, and events per hour in ``logs summary``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import US8K
from helpers import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SR = 16000


def tone(seconds, hz, level_db=-20, period=None, duty=0.5):
    t = np.arange(int(seconds * SR)) / SR
    x = 10 ** (level_db / 20) * np.sin(2 * np.pi * hz * t)
    if period:
        x *= (t % period) < duty * period
    return x.astype(np.float32)


def fake_deb(debs, package, files, licence="GPL-2+"):
    """A .deb of ``package`` holding ``files`` ({path inside: audio}) and a DEP-5 copyright."""
    root = debs / f"{package}-root"
    for rel, x in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, x, SR)
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(f"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   f"Files: *\nCopyright: someone\nLicense: {licence}\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test\n")
    subprocess.run(["dpkg-deb", "--build", str(root), str(debs / f"{package}_1.0_all.deb")], check=True,
                   capture_output=True)
    shutil.rmtree(root)


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
def test_negative_corpus_takes_what_its_rules_name_with_source_and_licence(tmp_path):
    """tools/negatives.py build on a package of its list: the files its rules name, in
    their category, as 16 kHz mono streams with the source and licence of each; what sounds
    like a target class (a dog) is never taken."""
    debs = tmp_path / "debs"
    debs.mkdir()
    base = "usr/share/sounds/sound-icons"
    fake_deb(debs, "sound-icons", {f"{base}/beep-1.wav": tone(1.0, 1000, period=0.25),
                                   f"{base}/chime.wav": tone(2.0, 660),
                                   f"{base}/glass-water-1.wav": tone(1.5, 3000),
                                   f"{base}/dog-bark.wav": tone(1.0, 400)})
    out = tmp_path / "neg"
    r = subprocess.run([PY, os.path.join(ROOT, "tools", "negatives.py"), "build", str(out), "--debs", str(debs),
                        "--packages", "sound-icons"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    man = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["category"] for m in man} == {"bells_beeps", "household"}
    assert all(m["source"] == "sound-icons" and m["licence"] == "GPL-2+" for m in man)
    taken = [f for m in man for f, _ in m["files"]]
    assert sorted(os.path.basename(f) for f in taken) == ["beep-1.wav", "chime.wav", "glass-water-1.wav"]
    for m in man:
        info = sf.info(out / m["file"])
        assert info.samplerate == SR and info.channels == 1 and abs(info.duration - m["seconds"]) < 0.01
    print("\n" + r.stdout)


def test_both_parts_of_the_rule_hold_their_target_loss_and_turn_away_what_fits_no_class():
    """train_rule on synthetic AudioSet logits: each threshold turns away about the stated
    share of held-out target windows, what was trained as 'other' is other, and a window
    that is surely one class (b) but decided as another (a) by the head is turned away by
    the class-conditional part alone."""
    from edgeqmoe.embed.openset import load_rule, save_rule, train_rule

    rng = np.random.default_rng(0)
    n, classes = 900, ["a", "b", "c"]
    y = rng.integers(0, 3, n)
    fold = rng.integers(1, 4, n)
    pos = rng.normal(-6, 1, (n, 527))
    pos[np.arange(n), y] += 8  # class k: AudioSet label k present ...
    pos[y == 1, 40] += 8  # ... and b's sound also has label 40
    neg = rng.normal(-6, 1, (400, 527))
    neg[:200, 40] += 8  # something else: label 40 alone, or labels 10..19
    neg[200:, 10:20] += 8
    rule = train_rule(pos, y, fold, neg, classes, target_loss=0.05, class_loss=0.05, l2=10.0,
                      neg_group=np.repeat(["x", "z"], 200)).bind(classes)
    p, q = rule.scores(pos)
    assert (p < rule.threshold).mean() < 0.12
    assert all((q[y == k, k] < rule.tc[k]).mean() < 0.12 for k in range(3))
    assert (rule.scores(neg)[0] >= rule.threshold).mean() < 0.05
    b_like = rng.normal(-6, 1, (50, 527))
    b_like[:, [1, 40]] += 8
    passing = [x for x in b_like if rule.target_probability(x) >= rule.threshold]  # the any-target part
    assert len(passing) >= 40
    assert sum(rule.judge(x, 0)[0] for x in passing) <= 2  # the head says a: a's own part turns them away
    assert sum(rule.judge(x, 1)[0] for x in passing) >= len(passing) - 4  # the head says b: kept
    path = "/tmp/edgeqmoe-test-rule.safetensors"
    save_rule(path, rule, rule.meta)
    again = load_rule(path).bind(["c", "a", "zz"])  # bound by name; a class it does not know: any-target only
    os.unlink(path)
    assert again.judge(b_like[0], 1)[0] is False and again.judge(b_like[0], 2)[0] is True


def test_short_sounds_make_an_event_from_one_window_where_the_profile_says_so():
    """decision.event_windows: a class (and a listen group's event_min_windows) makes an
    event from one window; the others still need the profile's event_min_windows."""
    from edgeqmoe.daemon.pipeline import Decider, Listener, PipelineError
    from edgeqmoe.daemon.profiles import DecisionSettings, ListenGroup

    decision = DecisionSettings(event_windows={"gun_shot": 1}, smoothing=1)
    listen = {"knock": ListenGroup(labels=("Knock",), event_min_windows=1), "speech": ListenGroup(labels=("Speech",))}
    classes = ["dog_bark", "gun_shot"]
    d = Decider(classes, decision)
    ended = []
    for t, p in enumerate([[0.1, 0.9], [0.9, 0.1], [0.1, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.1]]):
        ended += [e for e in [d.decide(np.array(p, np.float32), None, t, t + 2)[2]] if e is not None]
    assert [(e.label, e.windows) for e in ended] == [("gun_shot", 1), ("dog_bark", 2)]
    lst = Listener(listen, decision.event_min_windows)
    from edgeqmoe.embed.audioset import find_label

    probs = np.zeros(527, np.float32)
    probs[find_label("Knock")] = probs[find_label("Speech")] = 0.9
    lst.step(probs, 0, 2)
    _, done = lst.step(np.zeros(527, np.float32), 1, 3)
    assert [e.label for e in done] == ["knock"] and lst.describe["knock"]["event_min_windows"] == 1
    with pytest.raises(PipelineError, match="event_windows names"):
        Decider(classes, DecisionSettings(event_windows={"glass": 1}))


def tiny_dataset(tmp_path, per_class_fold=2):
    """A CSV of the first clips of each class in each fold of the shared clips."""
    rows = list(csv.DictReader(open(os.path.join(US8K, "metadata.csv"))))
    seen, out = {}, []
    for r in rows:
        k = (r["fold"], r["class"])
        if seen.get(k, 0) < per_class_fold:
            seen[k] = seen.get(k, 0) + 1
            out.append(dict(r, file=os.path.join(US8K, r["file"])))
    path = tmp_path / "tiny.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(out)
    return str(path)


def tiny_corpus(tmp_path, espeak):
    """Two categories from two sources each: speech (espeak-ng, two languages) and beeps."""
    out = tmp_path / "neg"
    man = []
    for cat, src, make in (
            ("speech", "espeak-it", lambda p: subprocess.run([espeak, "-v", "it", "-w", str(p), "Buongiorno, il treno "
                                                              "per Roma parte alle nove e dieci."], check=True)),
            ("speech", "espeak-de", lambda p: subprocess.run([espeak, "-v", "de", "-w", str(p), "Guten Morgen, der Zug "
                                                              "nach Berlin fährt um neun Uhr."], check=True)),
            ("beeps", "tones-a", lambda p: sf.write(p, tone(6, 3100, period=1.0), SR)),
            ("beeps", "tones-b", lambda p: sf.write(p, tone(6, 880, -25, period=0.4, duty=0.3), SR))):
        (out / cat).mkdir(parents=True, exist_ok=True)
        make(out / cat / f"{src}.wav")
        man.append({"file": f"{cat}/{src}.wav", "category": cat, "source": src, "licence": "made by the test",
                    "seconds": 0})
    (out / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in man))
    return str(out)


def test_eval_reports_events_and_holds_out_each_category_and_source(tmp_path, weights_dir, us8k):
    """edgeqmoe eval: right / wrong / no event per class beside window accuracy; --open-set:
    per category and per source, windows decided and target events per hour, each by a
    rule trained without it, and what the rule costs on the target clips."""
    from typer.testing import CliRunner

    from edgeqmoe.cli import app

    espeak = shutil.which("espeak-ng")
    if not espeak:
        pytest.skip("needs espeak-ng")
    data, neg = tiny_dataset(tmp_path), tiny_corpus(tmp_path, espeak)
    r = CliRunner().invoke(app, ["eval", "--profile", "balanced", "--data", data, "--cache", str(tmp_path / "cache"),
                                 "--open-set", neg, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    ev = out["events"]
    assert ev["total"]["clips"] == 60 == sum(v["clips"] for v in ev["per_class"].values())
    assert ev["total"]["right"] + ev["total"]["wrong"] + ev["total"]["none"] == 60 and ev["total"]["right"] >= 30
    os_ = out["open_set"]
    assert set(os_["categories"]) == {"speech", "beeps"} and set(os_["sources"]) == {"espeak-it", "espeak-de",
                                                                                       "tones-a", "tones-b"}
    for row in list(os_["categories"].values()) + list(os_["sources"].values()):
        assert row["windows"] > 0 and row["decided"] + row["quiet"] + row["other"] + row["abstain"] <= row["windows"]
        assert row["seconds"] > 0 and row["events_per_hour"] == pytest.approx(row["events"] * 3600 / row["seconds"])
    t = os_["targets"]
    assert t["total"]["clips"] == 60 and 0 <= t["right_event_share"] <= 1
    text = CliRunner().invoke(app, ["eval", "--profile", "balanced", "--data", data, "--cache",
                                    str(tmp_path / "cache"), "--open-set", neg, "--shipped-rule"])
    assert text.exit_code == 0 and "events/h" in text.output and "right event" in text.output, text.output
    print("\n" + text.output)


def test_open_set_training_tool_runs(tmp_path, weights_dir, us8k):
    """A tiny run of tools/train_openset.py: a few clips of each fold and a tiny corpus;
    the file it writes loads as a rule with both parts."""
    from edgeqmoe.embed.openset import load_rule

    espeak = shutil.which("espeak-ng")
    if not espeak:
        pytest.skip("needs espeak-ng")
    out = tmp_path / "rule.safetensors"
    r = subprocess.run([PY, os.path.join(ROOT, "tools", "train_openset.py"), "--data", US8K, "--negatives",
                        tiny_corpus(tmp_path, espeak), "--weights", weights_dir, "--limit", "8", "--no-generated",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rule = load_rule(out)
    assert 0 < rule.threshold < 1 and rule.meta["positives"] > 40 and rule.meta["negatives"] > 0
    assert rule.wc.shape == (10, 527) and set(rule.meta["negatives_by_category"]) == {"speech", "beeps"}


def test_logs_summary_reports_events_per_hour_of_audio_heard(tmp_path, weights_dir, us8k):
    """A run over real clips: logs summary says events per hour of the audio heard, per
    class, from the windows' hops (not the run's wall-clock time, which --fast shortens)."""
    from edgeqmoe.inspect.logs import summary

    rec = tmp_path / "rec"
    rec.mkdir()
    for name in ("fold1/101415-3-0-2.flac", "fold1/101415-3-0-3.flac"):
        shutil.copy(os.path.join(US8K, name), rec)
    logs = tmp_path / "logs"
    r = run_cli(["run", "--profile", "balanced", "--source", f"dir:{rec}", "--fast", "--log-dir", str(logs)])
    assert r.returncode == 0, r.stderr
    s = summary(logs)
    windows = s["windows"]
    assert s["heard_s"] == pytest.approx(windows * 1.0)
    assert s["events"] and s["events_per_hour"] == {k: round(v * 3600 / s["heard_s"], 2) for k, v in s["events"].items()}
    text = run_cli(["logs", "summary", str(logs)]).stdout
    assert "events per hour of audio heard" in text
