"""An evaluation set of real non-target audio, and what the daemon says about it.

    python tools/openset_eval.py build OUT        write OUT/{speech,music,sounds,noise}/*.wav
    python tools/openset_eval.py run OUT [-p PROFILE ...]
                                                  each category through 'edgeqmoe run --fast'
                                                  with each profile: the share of windows
                                                  decided as one of the model's classes

The audio is never committed. Sources (Debian packages; OUT/SOURCES.md repeats them):
- speech: espeak-ng (GPL-3+) speaking in six languages, two voices each;
- music: the three music tracks of lincity-ng-data (GPL-2+), first 90 s of each;
- sounds: the freedesktop sound theme, sound-theme-freedesktop (CC-BY-3.0, CC-BY-SA-3.0,
  GPL-2+ per file, see its copyright file): bells, alarm clock, phone, camera shutter,
  dialog sounds;
- noise: white and pink noise made here at -70, -60, -50 and -40 dBFS RMS, 20 s each.
Needs: apt-get install espeak-ng lincity-ng-data sound-theme-freedesktop (a source that
is not installed is skipped, and said).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SR = 16000
TEXTS = {
    "en": "Good morning. The kettle is on, and the news says it will rain later today. Could you pass me the "
          "butter, please? We should leave at half past eight to be on time.",
    "de": "Guten Morgen. Das Wasser kocht schon, und im Radio sagen sie, dass es heute Nachmittag regnen wird. "
          "Kannst du mir bitte die Butter geben? Wir fahren um halb neun los.",
    "fr": "Bonjour. L'eau est en train de bouillir, et la radio annonce de la pluie cet après-midi. Peux-tu me "
          "passer le beurre, s'il te plaît? Nous partons à huit heures et demie.",
    "es": "Buenos días. El agua ya está hirviendo y en la radio dicen que lloverá por la tarde. ¿Me pasas la "
          "mantequilla, por favor? Salimos a las ocho y media.",
    "it": "Buongiorno. L'acqua sta bollendo e alla radio dicono che oggi pomeriggio pioverà. Mi passi il burro, "
          "per favore? Partiamo alle otto e mezza.",
    "pt": "Bom dia. A água já está a ferver e no rádio dizem que vai chover à tarde. Passas-me a manteiga, "
          "por favor? Saímos às oito e meia.",
}
VOICES = (("", "-p", "40", "-s", "150"), ("+f3", "-p", "70", "-s", "170"))
MUSIC = "/usr/share/games/lincity-ng/music/default/*.ogg"
SOUNDS = "/usr/share/sounds/freedesktop/stereo/*.oga"
CATEGORIES = ("speech", "music", "sounds", "noise")


def write(path, x):
    import soundfile as sf

    sf.write(path, np.asarray(x, np.float32), SR, subtype="PCM_16")


def build(out: str) -> None:
    from edgeqmoe.audio.io import load

    for c in CATEGORIES:
        os.makedirs(os.path.join(out, c), exist_ok=True)
    espeak = shutil.which("espeak-ng")
    if not espeak:
        print("openset_eval: espeak-ng is not installed (apt-get install espeak-ng): no speech", file=sys.stderr)
    for pattern, package in ((MUSIC, "lincity-ng-data"), (SOUNDS, "sound-theme-freedesktop")):
        if not glob.glob(pattern):
            print(f"openset_eval: {package} is not installed (apt-get install {package}): skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for lang, text in (TEXTS.items() if espeak else ()):
            for i, (variant, *opts) in enumerate(VOICES):
                raw = os.path.join(tmp, "s.wav")
                subprocess.run([espeak, "-v", lang + variant, *opts, "-w", raw, text], check=True, timeout=120)
                write(os.path.join(out, "speech", f"{lang}-{i}.wav"), load(raw, SR))
    for i, f in enumerate(sorted(glob.glob(MUSIC))):
        write(os.path.join(out, "music", f"track{i + 1}.wav"), load(f, SR)[:90 * SR])
    for f in sorted(glob.glob(SOUNDS)):
        write(os.path.join(out, "sounds", os.path.basename(f).replace(".oga", ".wav")), load(f, SR))
    rng = np.random.default_rng(0)
    for kind in ("white", "pink"):
        n = rng.standard_normal(20 * SR)
        if kind == "pink":  # 1/f power: shape the spectrum of white noise
            spec = np.fft.rfft(n)
            spec[1:] /= np.sqrt(np.arange(1, len(spec)))
            n = np.fft.irfft(spec, len(n))
        n /= np.sqrt(np.mean(n ** 2))
        for db in (-70, -60, -50, -40):
            write(os.path.join(out, "noise", f"{kind}{db}.wav"), n * 10 ** (db / 20))
    with open(os.path.join(out, "SOURCES.md"), "w") as f:
        f.write(__doc__)
    for c in CATEGORIES:
        print(f"{c}: {len(os.listdir(os.path.join(out, c)))} files")


def run(out: str, profiles, weights: str | None) -> dict:
    """Per profile and category: windows, and the shares decided as a class / quiet / other."""
    from edgeqmoe.inspect.logs import load_logs

    env = dict(os.environ)
    if weights:
        env["EDGEQMOE_WEIGHTS_DIR"] = weights
    table = {}
    for prof in profiles:
        for c in (c for c in CATEGORIES if os.listdir(os.path.join(out, c))):
            with tempfile.TemporaryDirectory() as logs:
                r = subprocess.run([sys.executable, "-m", "edgeqmoe.cli", "run", "--profile", prof, "--source",
                                    f"dir:{os.path.join(out, c)}", "--fast", "--log-dir", logs],
                                   capture_output=True, text=True, env=env, timeout=3600)
                if r.returncode != 0:
                    sys.exit(f"openset_eval: {prof} on {c} failed: {r.stderr}")
                ws = load_logs(logs)["windows"]
            names = [w.get("decision_name") for w in ws]
            n = len(ws)
            row = {"windows": n, "decided": sum(1 for d in names if d not in (None, "quiet", "other", "abstain")),
                   "quiet": names.count("quiet"), "other": names.count("other")}
            if c == "noise":  # by level: below -55 dBFS must never be decided
                quiet_levels = [w for w in ws if w.get("lv") and w["lv"][0] < -55]
                row["decided_below_-55dBFS"] = sum(1 for w in quiet_levels
                                                   if w.get("decision_name") not in (None, "quiet", "other",
                                                                                     "abstain"))
            table.setdefault(prof, {})[c] = row
            print(f"{prof:16} {c:7} windows {n:5d}  decided as a class {100 * row['decided'] / max(n, 1):5.1f}%  "
                  f"quiet {100 * row['quiet'] / max(n, 1):5.1f}%  other {100 * row['other'] / max(n, 1):5.1f}%",
                  flush=True)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("-p", "--profile", action="append", default=None)
    r.add_argument("--weights", default=None)
    r.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.out)
    else:
        table = run(a.out, a.profile or ["balanced", "stable"], a.weights)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
