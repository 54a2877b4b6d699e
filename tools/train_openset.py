"""Trains the open-set rule shipped as edgeqmoe/bundles/openset-mn04.safetensors.

    python tools/train_openset.py --data ../shared/data/us8k16k --weights ../shared/models

The rule is a logistic regression on mn04's 527 AudioSet log-probabilities of a window:
the probability that the window is one of the ten target classes at all. Positives: the
2 s windows (hop 1 s) of the labelled clips above the level gate. Negatives, made here
from Debian packages and kept apart from tools/openset_eval.py's evaluation set (other
texts, other languages and voices, other music, other sounds):
- speech: espeak-ng in eight languages that the evaluation set does not use;
- music: melodies, chords and drum patterns written here as MIDI and rendered by
  fluidsynth with the FluidR3 General MIDI sound font (fluid-soundfont-gm, MIT);
  and the game music of neverball-data (GPL-2+) and frozen-bubble-data (GPL-2), first 60 s
  of each track;
- sounds: lincity-ng-data's sound effects (GPL-2+) other than those of its traffic,
  trains, industry, construction, fire station and school, frozen-bubble-data's sound
  effects, and synthetic tones and beeps (30 random pitches, rates, duties and levels).
Each threshold is set on held-out folds (each fold scored by a part trained on the
others) so that about ``--target-loss`` (``--class-loss``) of the target windows are
turned away by each part; the rule shipped is then trained on all folds with them.
What it lets through of categories and sources it never saw: ``edgeqmoe eval --open-set``.
Needs: apt-get install espeak-ng fluidsynth fluid-soundfont-gm lincity-ng-data neverball-data
frozen-bubble-data (what is missing is left out, and said)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np

SR = 16000
WIN, HOP = 2 * SR, SR
MIN_LEVEL = -57.0
SPEECH = {
    "nl": "Goedemorgen. De trein naar Utrecht vertrekt om tien over negen vanaf spoor drie.",
    "sv": "God morgon. Tåget till Uppsala avgår klockan nio och tio från spår tre.",
    "pl": "Dzień dobry. Pociąg do Krakowa odjeżdża o dziewiątej dziesięć z peronu trzeciego.",
    "ru": "Доброе утро. Поезд до Москвы отправляется в девять десять с третьего пути.",
    "tr": "Günaydın. Ankara treni dokuzu on geçe üçüncü perondan kalkıyor.",
    "en-gb": "Right then, the meeting has moved to Thursday afternoon, so bring the quarterly figures with you.",
    "en-us": "Okay everyone, please take your seats, the presentation will begin in about five minutes.",
    "cmn": "早上好。去北京的火车九点十分从三号站台出发。",
}
VOICES = ("+m1", "+f2", "+m7", "+f4")
LINCITY = "/usr/share/games/lincity-ng/sounds/*.wav"
LINCITY_TARGET_LIKE = ("Trafic", "Rail", "Industry", "Build", "FireStation", "School", "Rocket", "PowerCoal",
                       "CoalMine", "OreMine", "Blacksmith", "Mill", "Raze", "Fire")
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
GAME_MUSIC = ("/usr/share/games/neverball/bgm/*.ogg", "/usr/share/games/frozen-bubble/snd/*zik*.ogg")
GAME_SOUNDS = "/usr/share/games/frozen-bubble/snd/*.ogg"


def midi_file(path: str, notes, program: int, channel: int = 0, tempo_us: int = 500_000) -> None:
    """A type-0 MIDI file: (start beat, length beats, pitch, velocity) notes, one program."""
    tpq = 480
    events = []
    for start, length, pitch, vel in notes:
        events.append((int(start * tpq), 0x90 | channel, pitch, vel))
        events.append((int((start + length) * tpq), 0x80 | channel, pitch, 0))
    events.sort(key=lambda e: (e[0], e[1] & 0xF0 == 0x90))

    def varlen(v):
        out = [v & 0x7F]
        v >>= 7
        while v:
            out.insert(0, (v & 0x7F) | 0x80)
            v >>= 7
        return bytes(out)

    track = bytearray(b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big"))
    track += bytes([0, 0xC0 | channel, program])
    now = 0
    for t, status, a, b in events:
        track += varlen(t - now) + bytes([status, a, b])
        now = t
    track += b"\x00\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(track)) + track)


def music_pieces(rng):
    """(notes, program, channel): melodies over chords on several instruments, and drums."""
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    for program in (0, 4, 19, 24, 25, 32, 40, 48, 56, 65, 71, 73, 80, 88):
        root = int(rng.integers(48, 60))
        notes, beat = [], 0.0
        while beat < 48:
            chord = root + scale[int(rng.integers(0, 7))]
            notes += [(beat, 2.0, chord + d, 70) for d in (0, 4, 7)]
            for k in range(4):
                notes.append((beat + 0.5 * k, 0.5, chord + 12 + scale[int(rng.integers(0, 8))], 90))
            beat += 2.0
        yield notes, program, 0
    for _ in range(3):  # drum kits (channel 10): kick, snare, hi-hat
        notes = []
        for b in range(96):
            notes.append((b * 0.5, 0.25, 42, 70))
            if b % 4 == 0:
                notes.append((b * 0.5, 0.25, 36, 100))
            if b % 4 == 2:
                notes.append((b * 0.5, 0.25, 38, 95))
        yield notes, 0, 9


def negatives(tmp: str, rng) -> dict:
    """category -> list of mono float32 arrays at 16 kHz."""
    from edgeqmoe.audio.io import load

    out = {"speech": [], "music": [], "sounds": []}
    espeak, fluidsynth = shutil.which("espeak-ng"), shutil.which("fluidsynth")
    for tool, package in ((espeak, "espeak-ng"), (fluidsynth and os.path.exists(SOUNDFONT), "fluidsynth "
                                                  "fluid-soundfont-gm"), (glob.glob(LINCITY), "lincity-ng-data")):
        if not tool:
            print(f"train_openset: {package} not installed: those negatives are left out", flush=True)
    for lang, text in (SPEECH.items() if espeak else ()):
        for v in VOICES:
            wav = os.path.join(tmp, "s.wav")
            subprocess.run([espeak, "-v", lang + v, "-w", wav, text], check=True, timeout=120)
            out["speech"].append(load(wav, SR))
    def render(i, notes, program, channel, tempo_us=500_000):
        mid, wav = os.path.join(tmp, f"m{i}.mid"), os.path.join(tmp, f"m{i}.wav")
        midi_file(mid, notes, program, channel, tempo_us)
        subprocess.run([fluidsynth, "-ni", "-q", "-F", wav, "-r", str(SR), SOUNDFONT, mid], check=True, timeout=300,
                       capture_output=True)
        return load(wav, SR)

    parts = [render(i, *p) for i, p in enumerate(music_pieces(rng))] if fluidsynth and os.path.exists(SOUNDFONT) \
        else []
    out["music"] += parts
    drums = parts[-3:]
    for k in range(12 if parts else 0):  # songs: two instruments and drums together, at their own levels
        a, b = (parts[int(i)] for i in rng.choice(len(parts) - 3, 2, replace=False))
        d = drums[k % 3]
        n = min(len(a), len(b), len(d))
        mix = 0.5 * a[:n] + 0.35 * b[:n] + 0.4 * d[:n]
        out["music"].append((mix / max(1e-6, np.abs(mix).max()) * 10 ** (rng.uniform(-20, -3) / 20)).astype(np.float32))
    for f in sorted(f for pattern in GAME_MUSIC for f in glob.glob(pattern)):
        out["music"].append(load(f, SR)[:60 * SR])
    for f in sorted(glob.glob(LINCITY)) + sorted(glob.glob(GAME_SOUNDS)):
        if not os.path.basename(f).startswith(LINCITY_TARGET_LIKE) and "zik" not in os.path.basename(f):
            out["sounds"].append(load(f, SR))
    t = np.arange(4 * SR) / SR
    for hz in (440, 880, 1000, 2000, 3100, 4000):  # tones, steady
        out["sounds"].append(0.2 * np.sin(2 * np.pi * hz * t).astype(np.float32))
    for _ in range(30):  # beeps: appliance, timer and alarm-like patterns of many rates and duties
        hz, period, duty = rng.uniform(400, 4200), rng.uniform(0.2, 1.6), rng.uniform(0.15, 0.7)
        amp = 10 ** (rng.uniform(-30, -6) / 20)
        out["sounds"].append((amp * np.sin(2 * np.pi * hz * t) * ((t % period) < duty * period)).astype(np.float32))
    return out


def windows(x):
    from edgeqmoe.audio.windowing import frame
    from edgeqmoe.daemon.pipeline import level_dbfs

    return [w for w in frame(x, WIN, HOP) if level_dbfs(w)[0] >= MIN_LEVEL]


def logits_of(emb, wins) -> np.ndarray:
    out = []
    for i in range(0, len(wins), 64):
        out.append(emb.embed_with_logits(np.stack(wins[i:i + 64]), SR)[1])
    return np.concatenate(out) if out else np.zeros((0, 527), np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--negatives", required=True, help="the corpus of tools/negatives.py build")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--no-generated", action="store_true", help="without the generated speech, music and beeps")
    ap.add_argument("--target-loss", type=float, default=0.03, help="target windows the any-target part turns away")
    ap.add_argument("--class-loss", type=float, default=0.03, help="those of a class its own part turns away")
    ap.add_argument("--l2", type=float, default=30.0)
    ap.add_argument("--limit", type=int, default=0, help="only the first N clips of each fold (a quick check)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "edgeqmoe", "bundles", "openset-mn04.safetensors"))
    a = ap.parse_args()
    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.audio.io import load
    from edgeqmoe.daemon.evaluate import read_corpus
    from edgeqmoe.embed.mn04 import MN04Embedder
    from edgeqmoe.embed.openset import save_rule, train_rule

    rng = np.random.default_rng(0)
    emb = MN04Embedder(weights=a.weights)
    ds = read_dataset(a.data)
    pos, cls, folds = [], [], []
    clips = ds.clips if not a.limit else \
        [c for f in sorted({c.fold for c in ds.clips}) for c in [x for x in ds.clips if x.fold == f][:a.limit]]
    for c in clips:
        w = windows(load(c.path, SR))
        pos += w
        cls += [c.label] * len(w)
        folds += [c.fold] * len(w)
    P = logits_of(emb, pos)
    neg, group, sources = [], [], {}
    for f in read_corpus(a.negatives):
        w = windows(load(str(f["file"]), SR))
        neg += w
        group += [f["category"]] * len(w)
        sources.setdefault(f["category"], set()).add(f["source"])
    if not a.no_generated:
        with tempfile.TemporaryDirectory() as tmp:
            for k, v in negatives(tmp, rng).items():
                w = [x for clip in v for x in windows(clip)]
                neg += w
                group += [f"generated {k}"] * len(w)
    N = logits_of(emb, neg)
    counts = {g: group.count(g) for g in sorted(set(group))}
    rule = train_rule(P, np.array(cls), np.array(folds), N, ds.classes, a.target_loss, a.class_loss, a.l2,
                      neg_group=np.array(group),
                      meta={"negatives_by_category": counts,
                            "sources": {k: sorted(v) for k, v in sorted(sources.items())}})
    save_rule(a.out, rule, rule.meta)
    print(json.dumps(rule.meta, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
