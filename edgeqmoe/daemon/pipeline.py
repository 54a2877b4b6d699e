"""What happens to one window: embedder -> model -> decision, each stage timed.

``Pipeline.from_profile`` binds everything once (embedder, model, kernel variant,
decision settings); ``process(window)`` is the hot path and returns one record.

Fallback: when the bundle's embedder needs weights that are not on this machine and
the profile names a ``fallback_bundle`` (the weight-free embedder's), that bundle is
used instead and ``fallback`` says why, with the command that fetches the weights.

Decisions: probabilities are averaged over the last ``smoothing`` windows; the top
class is decided when that mean reaches its threshold (per class, else the default);
the window abstains when the router's epistemic uncertainty exceeds
``abstain_uncertainty``; ``event_min_windows`` consecutive windows of one class open an
event, which closes when another decision (or none) follows.

Level gate: every window's RMS and peak level (dBFS) is measured first; below
``decision.min_level_dbfs`` the window is ``quiet``: neither embedder nor head runs,
nothing is decided, smoothing starts afresh and an open event ends.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .profiles import Profile
from .sinks import DECISION_CODES

ABSTAIN, QUIET, OTHER = (next(k for k, v in DECISION_CODES.items() if v == name) for name in ("abstain", "quiet",
                                                                                            "other"))


class PipelineError(Exception):
    """A model or embedder that cannot be used; the message says what to do."""


@dataclass
class Built:
    embedder: object
    model: object
    bundle: str
    fallback: Optional[str] = None


def build(profile: Profile) -> Built:
    from ..embed import WeightsError, get_embedder
    from ..model.bundle import BundleError, load_bundle
    from ..model.moe import load_model

    def make(bundle_name: str):
        path = profile.model.bundle_path(bundle_name)
        b = load_bundle(path)
        emb = get_embedder(b.embedder["id"], weights=profile.model.weights, threads=profile.runtime.threads)
        model = load_model(b, kernel=profile.model.kernel, embedder=emb.info,
                           evaluate_all=profile.model.evaluate_all_experts,
                           routing=profile.model.routing)
        return Built(emb, model, path)

    try:
        return make(profile.model.bundle)
    except WeightsError as e:
        if not profile.model.fallback_bundle:
            raise PipelineError(str(e)) from None
        try:
            built = make(profile.model.fallback_bundle)
        except (WeightsError, BundleError) as e2:
            raise PipelineError(f"{e}; the fallback bundle cannot be used either: {e2}") from None
        built.fallback = (f"{e} Running on the weight-free fallback bundle {built.bundle} until then; it is much "
                          "less accurate.")
        return built
    except BundleError as e:
        raise PipelineError(str(e)) from None


class Decider:
    def __init__(self, classes: List[str], settings):
        self.classes = classes
        self.s = settings
        unknown = [c for c in settings.thresholds if c not in classes]
        if unknown:
            raise PipelineError(f"decision.thresholds names {unknown}, which the model does not know; its classes "
                                f"are {', '.join(classes)}")
        self.thr = np.array([settings.thresholds.get(c, settings.threshold) for c in classes], np.float32)
        self.hist: deque = deque(maxlen=settings.smoothing)
        self.event: Optional[Dict] = None

    def reset(self) -> None:
        self.hist.clear()
        self.event = None

    def decide(self, proba: np.ndarray, uncertainty: Optional[float], t_start: float, t_end: float):
        """-> (decision class or 'abstain' or None, smoothed probabilities, finished event or None)."""
        self.hist.append(proba)
        smooth = np.mean(self.hist, axis=0) if len(self.hist) > 1 else proba
        top = int(np.argmax(smooth))
        if (self.s.abstain_uncertainty is not None and uncertainty is not None
                and uncertainty > self.s.abstain_uncertainty):
            decision = "abstain"
        elif smooth[top] >= self.thr[top]:
            decision = self.classes[top]
        else:
            decision = None
        done = None
        ev = self.event
        if ev is not None and ev["class"] == decision:
            ev["end"], ev["windows"] = t_end, ev["windows"] + 1
            ev["peak"] = max(ev["peak"], float(smooth[top]))
        else:
            if ev is not None and ev["windows"] >= self.s.event_min_windows:
                done = ev
            self.event = None
            if decision not in (None, "abstain"):
                self.event = {"class": decision, "start": t_start, "end": t_end, "windows": 1,
                              "peak": float(smooth[top])}
        return decision, smooth, done

    def flush(self) -> Optional[Dict]:
        ev, self.event = self.event, None
        return ev if ev is not None and ev["windows"] >= self.s.event_min_windows else None

    def quiet(self) -> Optional[Dict]:
        """A quiet window: no evidence to smooth with; the open event (if any) ends."""
        self.hist.clear()
        return self.flush()


def level_dbfs(window: np.ndarray):
    """(RMS, peak) of a window in dB relative to full scale (-200 for digital silence)."""
    x = np.asarray(window, dtype=np.float32)
    ms = float(np.dot(x, x)) / max(1, x.size)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (10.0 * np.log10(ms) if ms > 1e-20 else -200.0), (20.0 * np.log10(peak) if peak > 1e-10 else -200.0)


class Pipeline:
    def __init__(self, built: Built, profile: Profile):
        self.built = built
        self.embedder = built.embedder
        self.model = built.model
        self.classes = list(self.model.classes)
        self.sr = profile.audio.sample_rate
        self.top_k = min(profile.decision.top_k, len(self.classes))
        self.decider = Decider(self.classes, profile.decision)
        self.is_moe = getattr(self.model, "kind", "") == "moe"
        self.min_level = profile.decision.min_level_dbfs

    @classmethod
    def from_profile(cls, profile: Profile) -> "Pipeline":
        return cls(build(profile), profile)

    def process(self, window: np.ndarray, t_start: float, t_end: float) -> Dict:
        """One window (float32 at the profile's rate) -> the window record (without
        timestamps of capture, which the caller adds)."""
        clock = time.perf_counter
        t0 = clock()
        rms, peak = level_dbfs(window)
        if self.min_level is not None and rms < self.min_level:
            return self._quiet(rms, peak, t0)
        emb = self.embedder.embed(window, self.sr)
        t1 = clock()
        pred = self.model.predict(emb[None, :])
        t2 = clock()
        p = pred.proba[0]
        unc = float(pred.uncertainty[0]) if pred.uncertainty is not None else None
        decision, smooth, event = self.decider.decide(p, unc, t_start, t_end)
        order = np.argsort(-p)[:self.top_k]
        t3 = clock()
        # compact on purpose (a year of 1 window/s on an SD card): classes and experts
        # are indices into the lists of the run's start record; see docs/logs.md
        rec = {
            "class": int(order[0]), "score": round(float(p[order[0]]), 3),
            "k": [[int(i), round(float(p[i]), 3)] for i in order[1:]],
            "stages_ms": {"embed": round((t1 - t0) * 1e3, 3), "head": round((t2 - t1) * 1e3, 3),
                          "decision": round((t3 - t2) * 1e3, 3)},
            "lv": [round(rms), round(peak)],
        }
        if decision is not None:
            rec["d"] = ABSTAIN if decision == "abstain" else self.classes.index(decision)
        if self.is_moe:
            rec["u"] = None if unc is None else round(unc, 3)
            rec["x"] = pred.experts[0].tolist()
        if event is not None:
            rec["_event"] = event
        return rec

    def _quiet(self, rms: float, peak: float, t0: float) -> Dict:
        """The record of a window below the level gate: no inference ran."""
        event = self.decider.quiet()
        rec = {"d": QUIET, "lv": [round(rms), round(peak)],
               "stages_ms": {"embed": 0.0, "head": 0.0, "decision": round((time.perf_counter() - t0) * 1e3, 3)}}
        if event is not None:
            rec["_event"] = event
        return rec
