"""Builds the negative corpus: real recordings of sounds that are none of the ten target
classes, from Debian packages, with the source and licence of every file.

    python tools/negatives.py build OUT [--debs DIR] [--max-per-source 240]

Downloads the packages below with ``apt-get download`` (no installation, no root needed
for the download itself; already downloaded .deb files in ``--debs`` are reused), takes
their recordings by the rules below, and writes, per category and source package, streams
of at most 60 s (the package's files one after another, 0.3 s of silence between them,
each file at most 20 s) as 16 kHz mono WAV:

    OUT/<category>/<package>__<n>.wav
    OUT/manifest.jsonl   one line per stream: category, source, licence, seconds, and the
                         original files it is made of (path in the package, seconds used)

Dense streams on purpose: the evaluation asks how many events an hour of such sound
makes, so a stream holds sound, not the gaps of a game's sound folder.

Categories (AudioSet's ontology outside the ten classes; what of the ten classes the
packages hold, dogs, drills, sirens, horns, guns, engines and cars, explosions and
fireworks, is left out by name): speech (real recorded voices: letters, words and
sentences in many languages), human (laughter, coughs, cries, screams, grunts), footsteps,
crowd (applause, taverns, cheering), music, farm animals, wild animals, birds, insects and
frogs, water, weather and fire (rain, wind, thunder, fire), household (dishes, glass,
doors, kettle, washing machine, vacuum, toilet), tools (hammers, saws, smiths, stone and
wood cutting, digging), bells and beeps (bells, chimes, phones, electronic beeps),
vehicles and machines outside the classes (planes, ships, carts, mills, a lunar lander).

The files are recordings shipped by game and education packages (sound effects and voice
actors' takes; the music is produced music). A source (a package) is the unit the open-set
evaluation holds out: ``edgeqmoe eval --open-set OUT`` never trains a rule on the source
or the category it tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SR = 16000
STREAM_S, FILE_S, GAP_S = 60.0, 20.0, 0.3
AUDIO = re.compile(r"\.(wav|ogg|oga|flac)$", re.I)
#: what is (or sounds like) one of the ten target classes, or synthesized, is never taken
EXCLUDE = re.compile(r"(^|[/_\-. ])(dogs?|bark|drill|jackhammer|siren|horns?|gun|gunshot|shotgun\w*|rifle|pistol|"
                     r"musket|cannon|artillery|bombard|dragoon|naval|explos\w*|firework\w*|firecracker|firetruck|"
                     r"tv_fireengine|engine|car|cars|truck|motor\w*|thunderstick\w*|dartfire|airship\w*|"
                     r"robot\w*|waveforms|glitch\w*|elec_(?!bell|beep)\w*|sonar)([/_\-. 0-9]|$)", re.I)

#: (package, regex on the path inside the package, category); the first rule that matches wins
RULES = [
    # speech: voices recorded by people, many languages
    ("klettres-data", r"/klettres/[^/]+/(alpha|syllab)/", "speech"),
    ("ktuberling-data", r"/ktuberling/sounds/[^/]+/(?!.*laugh)", "speech"),
    ("tuxpaint-stamps-default", r"_desc|_[a-z]{2}(_[A-Z]{2})?\.ogg$", "speech"),
    ("alsa-utils", r"/sounds/alsa/(Front|Rear|Side)_", "speech"),
    ("hedgewars-data", r"/voices/[^/]+/(?!Laugh|Poison|Ooff|Ow\d|Hmm)[A-Za-z]+\d*\.ogg$", "speech"),
    # human sounds other than speech
    ("hedgewars-data", r"/voices/[^/]+/(Laugh|Poison|Ooff|Ow\d|Hmm)", "human"),
    ("ktuberling-data", r"laugh", "human"),
    ("wesnoth-1.16-data", r"sounds/(dwarf-laugh|witches-laugh|human-\w*(die|hit)|groan)", "human"),
    ("tuxpaint-stamps-default", r"/symbols/faces/", "human"),
    ("freedroidrpg-data", r"Scream", "human"),
    ("sonic-pi-samples", r"misc_burp", "human"),
    # footsteps
    ("minetest-data", r"footstep", "footsteps"),
    ("hedgewars-data", r"Sounds/steps", "footsteps"),
    ("freedroidrpg-data", r"footstep", "footsteps"),
    # crowds
    ("lmms-common", r"misc/(applause|raving_crowd)", "crowd"),
    ("widelands-data", r"taverns/", "crowd"),
    # music (produced recordings)
    ("wesnoth-1.16-music", r"\.ogg$", "music"),
    ("widelands-data", r"/data/music/", "music"),
    ("megaglest-data", r"/music/", "music"),
    ("freecol", r"/music/|/anthem/", "music"),
    ("supertux-data", r"/music/", "music"),
    ("freedroidrpg-data", r"/music/", "music"),
    ("sonic-pi-samples", r"/(loop_|ambi_piano|guit_)", "music"),
    # animals
    ("tuxpaint-stamps-default", r"/animals/mammals/(bovines|equines|pig)|/animals/mammals/camel", "farm_animals"),
    ("widelands-data", r"/sound/farm/", "farm_animals"),
    ("megaglest-data", r"/sounds/(cow|pig|mudchute_cow)", "farm_animals"),
    ("tuxpaint-stamps-default", r"/animals/(mammals|marsupials|lizards)/", "wild_animals"),
    ("widelands-data", r"/animals/(boar|coyote|moose|stag|wolf)", "wild_animals"),
    ("wesnoth-1.16-data", r"sounds/(wolf-growl|hiss|gryphon)", "wild_animals"),
    ("tuxpaint-stamps-default", r"/animals/birds/", "birds"),
    ("widelands-data", r"/animals/bird|critters/duck", "birds"),
    ("wesnoth-1.16-data", r"ambient/(birds|morning)", "birds"),
    ("megaglest-data", r"/sounds/(owl|eagle_|day)", "birds"),
    ("sonic-pi-samples", r"misc_crow", "birds"),
    ("tuxpaint-stamps-default", r"/animals/(insects|amphibians)/", "insects_frogs"),
    ("widelands-data", r"/animals/(crickets|frog)", "insects_frogs"),
    ("megaglest-data", r"/sounds/bee", "insects_frogs"),
    ("hedgewars-data", r"Sounds/bee\.", "insects_frogs"),
    ("wesnoth-1.16-data", r"ambient/night", "insects_frogs"),
    # water; weather and fire
    ("megaglest-data", r"water_sounds/", "water"),
    ("minetest-data", r"env_sounds_water|default_water", "water"),
    ("supertux-data", r"/(waterfall|splash)", "water"),
    ("hedgewars-data", r"Sounds/(splash|beewater|planewater|rubberduck_water)", "water"),
    ("pingus-data", r"splash", "water"),
    ("freeciv-data", r"Splash", "water"),
    ("widelands-data", r"(beer|wine)bubble", "water"),
    ("tuxpaint-data", r"sounds/bubble", "water"),
    ("megaglest-data", r"/sounds/(rain|wind|wicker_fire)", "weather_fire"),
    ("supertux-data", r"sounds/(rain|thunder|fire\.|tree_howling)", "weather_fire"),
    ("wesnoth-1.16-data", r"ambient/campfire|sounds/(fire|flame-big|lightning)\.", "weather_fire"),
    ("minetest-data", r"fire_(fire|large|small|extinguish)|env_sounds_lava|cool_lava", "weather_fire"),
    ("tuxpaint-stamps-default", r"naturalforces/", "weather_fire"),
    # household and kitchen
    ("tuxpaint-stamps-default", r"/household/(?!tools)|/arttools/|/food/|/hobbies/camera", "household"),
    ("minetest-data", r"doors_|chest_|break_glass|xpanes", "household"),
    ("supertux-data", r"sounds/door", "household"),
    ("sonic-pi-samples", r"perc_door|ambi_glass", "household"),
    ("freedroidrpg-data", r"Glass_Break", "household"),
    ("sound-icons", r"glass-water", "household"),
    # hand and workshop tools
    ("tuxpaint-stamps-default", r"/household/tools/", "tools"),
    ("widelands-data", r"/(hammering|saw|smiths|stonecutting|woodcutting|cutting|metal)/|/barbarians/(mortar|"
                       r"stonegrind|blackwood)", "tools"),
    ("megaglest-data", r"/sounds/anvil", "tools"),
    ("minetest-data", r"default_(dig|dug|place|gravel|tool)", "tools"),
    # bells and beeps
    ("sonic-pi-samples", r"perc_bell|elec_bell|elec_beep|mehackit_phone|drum_cowbell", "bells_beeps"),
    ("supertux-data", r"sounds/(savebell|phone)", "bells_beeps"),
    ("tuxpaint-data", r"typewriterbell", "bells_beeps"),
    ("wesnoth-1.16-data", r"sounds/bell", "bells_beeps"),
    ("lmms-common", r"wind_chimes|bell_choir", "bells_beeps"),
    ("hedgewars-data", r"Sounds/beep", "bells_beeps"),
    ("megaglest-data", r"menu/sound/attention", "bells_beeps"),
    ("sound-icons", r"\.wav$", "bells_beeps"),
    # vehicles and machines outside the classes
    ("hedgewars-data", r"Sounds/(plane|rcplane)\.", "vehicles_machines"),
    ("minetest-data", r"carts_", "vehicles_machines"),
    ("widelands-data", r"/mill/|/sawmill/|/atlanteans/goldspin", "vehicles_machines"),
    ("wesnoth-1.16-data", r"ambient/ship", "vehicles_machines"),
    ("megaglest-data", r"/sounds/catapult_walk", "vehicles_machines"),
    ("tuxpaint-stamps-default", r"/space/apollo|/vehicles/ship/", "vehicles_machines"),
]
PACKAGES = sorted({r[0] for r in RULES})


def licences(root: Path, package: str) -> str:
    """The licences a package's Debian copyright file declares (DEP-5 'License:' lines)."""
    found = []
    for f in root.glob(f"usr/share/doc/{package}/copyright"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("License:"):
                name = line.split(":", 1)[1].strip()
                if name and name not in found:
                    found.append(name)
    return ", ".join(found) or "see the package's copyright file"


def extract(deb: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into), "--wildcards", "*.wav", "*.ogg", "*.oga", "*.flac",
                    "*/copyright"], input=tar, capture_output=True)


def category_of(package: str, rel: str):
    if EXCLUDE.search(rel):
        return None
    for pkg, pattern, cat in RULES:
        if pkg == package and re.search(pattern, rel):
            return cat
    return None


def build(out: str, debs: str, max_per_source: int, packages=None) -> None:
    import soundfile as sf

    from edgeqmoe.audio.io import load

    out_p, debs_p = Path(out), Path(debs)
    debs_p.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in PACKAGES if not packages or p in packages]
    missing = [p for p in wanted if not list(debs_p.glob(f"{p}_*.deb"))]
    if missing:
        print(f"downloading {len(missing)} packages into {debs_p}", flush=True)
        r = subprocess.run(["apt-get", "download", *missing], cwd=debs_p, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for package in wanted:
            found = sorted(debs_p.glob(f"{package}_*.deb"))
            if not found:
                print(f"{package}: not downloaded, left out", flush=True)
                continue
            root = Path(tmp) / package
            extract(found[-1], root)
            lic = licences(root, package)
            by_cat = {}
            for f in sorted(root.rglob("*")):
                rel = "/" + str(f.relative_to(root))
                if f.is_file() and AUDIO.search(f.name):
                    cat = category_of(package, rel)
                    if cat is not None:
                        by_cat.setdefault(cat, []).append((rel, f))
            for cat, files in sorted(by_cat.items()):
                rng = np.random.default_rng(len(files))
                if len(files) > max_per_source:  # a spread over the package, not its first folder
                    files = [files[i] for i in sorted(rng.choice(len(files), max_per_source, replace=False))]
                streams, cur, parts = [], [], []
                for rel, f in files:
                    try:
                        x = load(str(f), SR)[: int(FILE_S * SR)]
                    except Exception as e:  # a file the decoders cannot read: said, left out
                        print(f"  {package}{rel}: {e}", flush=True)
                        continue
                    if len(x) < SR // 10 or not np.any(x):
                        continue
                    cur += [x, np.zeros(int(GAP_S * SR), np.float32)]
                    parts.append([rel, round(len(x) / SR, 2)])
                    if sum(map(len, cur)) >= STREAM_S * SR:
                        streams.append((np.concatenate(cur), parts))
                        cur, parts = [], []
                if cur:
                    streams.append((np.concatenate(cur), parts))
                (out_p / cat).mkdir(parents=True, exist_ok=True)
                for i, (x, parts) in enumerate(streams):
                    name = f"{package}__{i:03d}.wav"
                    sf.write(str(out_p / cat / name), np.clip(x, -1.0, 1.0), SR, subtype="PCM_16")
                    manifest.append({"file": f"{cat}/{name}", "category": cat, "source": package,
                                     "licence": lic, "seconds": round(len(x) / SR, 2), "files": parts})
                secs = sum(len(x) for x, _ in streams) / SR
                print(f"{package:26s} {cat:18s} {len(files):4d} files -> {len(streams):3d} streams, {secs:7.1f} s",
                      flush=True)
    with open(out_p / "manifest.jsonl", "w") as f:
        for m in manifest:
            f.write(json.dumps(m) + "\n")
    cats = {}
    for m in manifest:
        c = cats.setdefault(m["category"], [0.0, set()])
        c[0] += m["seconds"]
        c[1].add(m["source"])
    print(f"\n{len(manifest)} streams, {sum(v[0] for v in cats.values()) / 60:.1f} min in {len(cats)} categories:")
    for k, (s, src) in sorted(cats.items()):
        print(f"  {k:18s} {s / 60:6.1f} min from {len(src)} sources: {', '.join(sorted(src))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the packages and write the corpus")
    b.add_argument("out")
    b.add_argument("--debs", default=os.path.join(os.path.expanduser("~"), ".cache", "edgeqmoe", "debs"))
    b.add_argument("--max-per-source", type=int, default=240, help="files per category and package, at most")
    b.add_argument("--packages", nargs="*", default=None, help="only these of the packages")
    a = ap.parse_args()
    build(a.out, a.debs, a.max_per_source, a.packages)


if __name__ == "__main__":
    main()
