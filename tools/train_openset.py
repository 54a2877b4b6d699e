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
The decision threshold is set on held-out folds (each fold scored by a rule trained on
the others) so that at most ``--target-loss`` of the target windows are turned away;
the model shipped is then trained on all folds with that threshold.
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


def features(emb, wins) -> np.ndarray:
    from edgeqmoe.embed.openset import features as f

    out = []
    for i in range(0, len(wins), 64):
        _, logits = emb.embed_with_logits(np.stack(wins[i:i + 64]), SR)
        out.append(f(logits))
    return np.concatenate(out) if out else np.zeros((0, 527), np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--target-loss", type=float, default=0.03)
    ap.add_argument("--limit", type=int, default=0, help="only the first N clips of each fold (a quick check)")
    ap.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the logistic regression")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "edgeqmoe", "bundles", "openset-mn04.safetensors"))
    a = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.audio.io import load
    from edgeqmoe.embed.mn04 import MN04Embedder
    from edgeqmoe.embed.openset import save_rule

    rng = np.random.default_rng(0)
    emb = MN04Embedder(weights=a.weights)
    ds = read_dataset(a.data)
    pos, folds = [], []
    clips = ds.clips if not a.limit else \
        [c for f in sorted({c.fold for c in ds.clips}) for c in [x for x in ds.clips if x.fold == f][:a.limit]]
    for c in clips:
        w = windows(load(c.path, SR))
        pos += w
        folds += [c.fold] * len(w)
    Xp, folds = features(emb, pos), np.array(folds)
    with tempfile.TemporaryDirectory() as tmp:
        neg = negatives(tmp, rng)
    Xn_by = {k: features(emb, [w for x in v for w in windows(x)]) for k, v in neg.items()}
    Xn = np.concatenate(list(Xn_by.values()))
    neg_part = rng.integers(0, len(np.unique(folds)), len(Xn))  # negatives split like the folds
    C = a.C

    def fit(Xp_, Xn_):
        X = np.concatenate([Xp_, Xn_])
        y = np.r_[np.ones(len(Xp_)), np.zeros(len(Xn_))]
        return LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(X, y)

    held = np.zeros(len(Xp))
    held_neg = np.zeros(len(Xn))
    for i, f in enumerate(np.unique(folds)):
        m = fit(Xp[folds != f], Xn[neg_part != i])
        held[folds == f] = m.predict_proba(Xp[folds == f])[:, 1]
        held_neg[neg_part == i] = m.predict_proba(Xn[neg_part == i])[:, 1]
    threshold = float(np.quantile(held, a.target_loss))
    per_fold = {int(f): float((held[folds == f] < threshold).mean()) for f in np.unique(folds)}
    starts = np.cumsum([0] + [len(v) for v in Xn_by.values()])
    neg_pass = {k: float((held_neg[starts[i]:starts[i + 1]] >= threshold).mean()) for i, k in enumerate(Xn_by)}
    m = fit(Xp, Xn)
    summary = {"positives": int(len(Xp)), "negatives": {k: int(len(v)) for k, v in Xn_by.items()},
               "threshold": threshold, "target_loss_held_out_per_fold": per_fold,
               "negatives_passing_held_out": neg_pass, "C": C}
    save_rule(a.out, m.coef_[0].astype(np.float32), float(m.intercept_[0]), threshold, summary)
    print(json.dumps(summary, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
