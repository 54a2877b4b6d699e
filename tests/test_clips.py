"""Event clips: FLAC beside the logs, with pre- and post-roll, retention, and no audio kept where speech is heard."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from edgeqmoe.daemon.clips import ClipKeeper, History
from edgeqmoe.daemon.profiles import ClipSettings
from edgeqmoe.daemon.sinks import read_jsonl

from conftest import IN_CI, US8K
from helpers import run_cli

PY = sys.executable
SR = 16000




def test_history_spans_across_the_wrap():
    h = History(1000)
    x = np.arange(2500, dtype=np.float32)
    for i in range(0, 2500, 300):
        h.write(x[i:i + 300], i)
    assert h.end == 2500
    np.testing.assert_array_equal(h.span(1600, 2400), x[1600:2400])  # wraps the buffer
    np.testing.assert_array_equal(h.span(1000, 1700), x[1500:1700])  # older than held: clipped
    assert h.span(2400, 2600).tolist() == x[2400:2500].tolist() and len(h.span(3000, 3100)) == 0


def test_retention_by_count_age_and_size(tmp_path):
    """Clips of one second each, one a day for 40 days: the count, the age and the disk
    limits each cut the oldest first."""
    folder = tmp_path / "clips"
    folder.mkdir()

    def name(day):  # named as the daemon names its clips: only those are ever deleted
        return f"2025{day // 28 + 1:02d}{day % 28 + 1:02d}T000000.000Z_dog_bark.flac"

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    now = time.time()
    for day in range(40):
        p = folder / name(day)
        sf.write(str(p), tone, SR, format="FLAC", subtype="PCM_16")
        os.utime(p, (now - (40 - day) * 86400 + 60, now - (40 - day) * 86400 + 60))
    one = (folder / name(0)).stat().st_size

    def keep(**limits):
        k = ClipKeeper(ClipSettings(enabled=True, **limits), str(tmp_path), SR, lambda *a, **f: None, lambda m: None)
        return sorted(p.name for p in folder.glob("*.flac")), k.deleted

    names, deleted = keep(max_count=30)
    assert deleted == 10 and names[0] == name(10) and len(names) == 30
    names, deleted = keep(max_age_days=20)  # day 20 is 20 days old less a minute: kept
    assert names[0] == name(20) and len(names) == 20 and deleted == 10
    names, deleted = keep(max_mb=one * 5.5 / 1e6)
    assert names == [name(d) for d in range(35, 40)] and deleted == 15
    print(f"\nretention: 40 clips of {one} B -> count 30 deleted 10; age 20 days deleted 10 more; "
          f"{one * 5.5 / 1e6:.3f} MB deleted 15 more, 5 left ({sum(p.stat().st_size for p in folder.glob('*.flac'))} B)")


MN04 = "version: 1\nmodel: {bundle: stable.eqm}\naudio: {window: 2.0, hop: 1.0}\n"


def run_on(folder, settings: str, logs):
    """'edgeqmoe run' of the stable bundle (mn04) with ``settings`` on a folder, as fast as it goes."""
    prof = logs.parent / f"{logs.name}.yaml"
    prof.write_text(MN04 + settings)
    r = run_cli(["run", "--profile", str(prof), "--source", f"dir:{folder}", "--fast", "--log-dir", str(logs)])
    assert r.returncode == 0, r.stderr
    return r


def _speech(folder, espeak):
    subprocess.run([espeak, "-v", "en", "-w", str(folder / "b-speech.wav"),
                    "Good morning. Please call me back this evening, the door code is four two seven, "
                    "and do not tell anyone else about it."], check=True, timeout=60)


@pytest.fixture
def espeak():
    e = shutil.which("espeak-ng")
    if not e:
        if IN_CI:
            pytest.fail("CI must have espeak-ng (tools/setup.sh --dev)")
        pytest.skip("espeak-ng not installed")
    return e


def test_a_clip_holds_the_event_with_its_rolls_and_speech_is_never_kept(tmp_path, weights_dir, us8k, espeak):
    """A dog bark between 3 s of faint noise on either side, then speech: the dog's clip
    is the source audio from 1 s before the event to 1 s after it (16-bit FLAC); the
    speech event has no clip (privacy, the default), unless privacy is turned off.
    ``logs summary`` lists the clip and ``logs plot --clip`` draws it."""
    rec = tmp_path / "rec"
    rec.mkdir()
    dog, sr = sf.read(os.path.join(US8K, "fold1", "101415-3-0-2.flac"), dtype="float32")
    assert sr == SR
    rng = np.random.default_rng(0)
    pad = (10 ** (-65 / 20) * rng.standard_normal(3 * SR)).astype(np.float32)  # below the level gate
    src = np.concatenate([pad, dog, pad])
    sf.write(str(rec / "a-dog.wav"), src, SR, subtype="FLOAT")
    _speech(rec, espeak)
    logs = tmp_path / "logs"
    r = run_on(rec, "clips: {enabled: true, pre_roll: 1.0, post_roll: 1.0}\n", logs)
    assert "(none where speech is heard)" in r.stderr
    evs = list(read_jsonl(logs / "events.jsonl"))
    dogs = [e for e in evs if e["class"] == "dog_bark"]
    assert len(dogs) == 1 and "clip" in dogs[0], evs
    e = dogs[0]
    audio, csr = sf.read(str(logs / e["clip"]), dtype="float32")
    info = sf.info(str(logs / e["clip"]))
    assert csr == SR and info.format == "FLAC" and info.subtype == "PCM_16"
    a = e["offset_s"] - 1.0
    b = min(len(src) / SR, e["offset_s"] + (e["end_s"] - e["start_s"]) + 1.0)
    assert a >= 0 and abs(len(audio) / SR - (b - a)) < 1e-3 and e["clip_s"] == pytest.approx(b - a, abs=0.01)
    ref = src[int(round(a * SR)):int(round(a * SR)) + len(audio)]
    err = float(np.max(np.abs(audio - ref)))
    assert err <= 1.01 / 32768, err  # the source itself, to 16-bit precision
    others = [x for x in evs if x["class"] != "dog_bark"]
    withheld = [x for x in others if x.get("file", "").endswith("b-speech.wav")]
    # the speech file is 'other' (no event) or an event without a clip: no audio of it is kept
    assert all("clip" not in x and "speech" in x["clip_withheld"] for x in withheld)
    clips = sorted(p.name for p in (logs / "clips").iterdir())
    assert clips == [os.path.basename(e["clip"])] and clips[0].endswith("Z_dog_bark.flac")
    assert oct((logs / "clips" / clips[0]).stat().st_mode & 0o777) == "0o640"
    s = run_cli(["logs", "summary", str(logs)])
    assert s.returncode == 0 and "clips: 1 kept" in s.stdout and clips[0] in s.stdout, s.stdout
    png = tmp_path / "clip.png"
    p = run_cli(["logs", "plot", str(logs), "--clip", "latest", "-o", str(png)])
    assert p.returncode == 0 and png.read_bytes()[:4] == b"\x89PNG", p.stderr
    print(f"\ndog clip {clips[0]}: {len(audio) / SR:.2f} s for an event of {e['end_s'] - e['start_s']:.1f} s, "
          f"max error vs the source {err * 32768:.2f} LSB; speech events withheld: {len(withheld)}")

    # privacy off: what the speech sounded like is kept too (a deliberate choice of the profile)
    speech_only = tmp_path / "speech"
    speech_only.mkdir()
    shutil.copy(rec / "b-speech.wav", speech_only)
    run_on(speech_only, "decision: {open_set: false, threshold: 0.0, event_min_windows: 1}\n"
                        "clips: {enabled: true, privacy: false}\n", tmp_path / "open")
    evs = list(read_jsonl(tmp_path / "open" / "events.jsonl"))
    assert evs and all("clip" in x for x in evs) and len(list((tmp_path / "open" / "clips").iterdir())) == len(evs)


def test_privacy_withholds_the_clip_of_a_speech_event(tmp_path, weights_dir, us8k, espeak):
    """An event heard through speech (a listen group, so the event surely happens) keeps no clip."""
    rec = tmp_path / "rec"
    rec.mkdir()
    _speech(rec, espeak)
    logs = tmp_path / "logs"
    run_on(rec, "listen: {speech: [Speech]}\nclips: {enabled: true}\n", logs)
    evs = [e for e in read_jsonl(logs / "events.jsonl") if e["class"] == "speech"]
    assert evs and all("clip" not in e and e["clip_withheld"].startswith("privacy: speech heard") for e in evs)
    assert not list((logs / "clips").iterdir())


def test_event_records_go_out_in_the_order_the_events_ended():
    """A written clip is decided later than a withheld one (the writer thread): the records
    still go out in the order the events ended, and an event whose clip never came at the
    stop gets its record too, saying so."""
    from edgeqmoe.daemon.records import Event, EventFanout

    class Writer:
        def __init__(self):
            self.out = []

        def put(self, stream, rec):
            self.out.append((stream, rec["class"], rec.get("clip_withheld", rec.get("clip"))))

    class Clips:  # decides nothing by itself: the test says when each clip is decided
        def begin(self, ev):
            pass

        def finish(self, ev):
            pass

    w = Writer()
    fan = EventFanout(w, None, None, Clips(), lambda s: None, "dev", "p", "/logs", quiet=True)
    a, b, c = (Event(label=n, start=i, end=i + 1.0, peak=0.9, windows=2) for i, n in enumerate("abc"))
    for ev in (a, b, c):
        fan.ended(ev)
    fan.emit(b, {"clip_withheld": "privacy"})
    assert w.out == []  # a's clip is still being written
    fan.emit(a, {"clip": "clips/a.flac"})
    assert [x[1] for x in w.out] == ["a", "b"]
    fan.close()
    fan.emit(c, {"clip": "clips/c.flac"})  # a writer that finished after the stop: said once already
    assert w.out[2] == ("events", "c", "the run ended before its clip was written") and len(w.out) == 3
