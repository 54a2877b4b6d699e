"""What a profile decides about audio that is none of its model's classes.

``open_set_figures(profile, folder)``: every subfolder of ``folder`` is a category
(speech, music, sounds, noise... as ``tools/openset_eval.py build`` writes them); each of
its files is cut into the profile's windows and run through the daemon's own pipeline
(level gate, embedder, head, open-set rule, smoothing, thresholds), the decisions
starting afresh with each file as in the daemon. Per category: windows, and how many
were decided as one of the classes, quiet, other or abstained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from .profiles import Profile
from .records import DECISION_CODES


def open_set_figures(profile: Profile, folder) -> Dict[str, Dict[str, int]]:
    from ..audio.datasets import AUDIO_EXT
    from ..audio.io import stream
    from ..audio.windowing import Windower
    from .pipeline import Pipeline

    folder = Path(folder)
    cats = sorted(d for d in folder.iterdir() if d.is_dir())
    if not cats:
        raise ValueError(f"{folder}: no category folders (speech, music, ...); make one with "
                         "'python tools/openset_eval.py build DIR'")
    pipe = Pipeline.from_profile(profile)
    sr = profile.audio.sample_rate
    win, hop = int(round(profile.audio.window * sr)), int(round(profile.audio.hop * sr))
    out: Dict[str, Dict[str, int]] = {}
    for cat in cats:
        row = {"windows": 0, "decided": 0, "quiet": 0, "other": 0, "abstain": 0}
        for f in sorted(p for p in cat.iterdir() if p.suffix.lower() in AUDIO_EXT):
            pipe.flush_events()
            pipe.decider.reset()
            w = Windower(win, hop)
            recs = []
            for block in stream(f, sr):
                recs += [pipe.process(x, s / sr, (s + win) / sr)[0] for s, x in w.feed(block)]
            short = w.finish_short()
            if short is not None:
                recs.append(pipe.process(short[1], 0.0, win / sr)[0])
            for r in recs:
                row["windows"] += 1
                d = r.get("d")
                key = DECISION_CODES.get(d, "decided" if d is not None else None)
                if key:
                    row[key] += 1
        out[cat.name] = row
    return out
