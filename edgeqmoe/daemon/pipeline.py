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

Something else: with mn04 and ``decision.open_set`` (on by default), the open-set rule
(``edgeqmoe.embed.openset``) scores from the window's AudioSet output whether it holds
one of the target sounds at all; below its threshold the window is ``other`` (``d: -3``,
with ``o``: the rule's probability and the three most probable AudioSet classes),
whatever the head says; smoothing restarts and an open event ends.

Listening (``listen:``): with mn04, each window's 527 AudioSet probabilities come out of
the same forward pass as the embedding; a group is heard when its largest class
probability reaches its threshold (``ls`` in the window record), and
``event_min_windows`` consecutive windows make an event of it, as for the classes.
Several groups can be heard at once.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .profiles import Profile
from ..embed.audioset import sigmoid
from .records import ABSTAIN, OTHER, QUIET, Event


class PipelineError(Exception):
    """A model or embedder that cannot be used; the message says what to do."""


@dataclass
class Built:
    embedder: object
    model: object
    bundle: str
    fallback: Optional[str] = None
    trained_window: Optional[float] = None  # s: the window the bundle was trained on (its metadata)

    def window_mismatch(self, window: float) -> Optional[str]:
        """What to tell a user whose profile cuts windows of another length than the
        bundle was trained on (None when they agree or the bundle does not say)."""
        t = self.trained_window
        if not t or abs(t - window) < 1e-6:
            return None
        return (f"model bundle {self.bundle} was trained on {t:g} s windows and the profile cuts {window:g} s ones, "
                f"so its scores do not hold for them; set audio.window: {t:g} or use a bundle trained on "
                f"{window:g} s windows")


def build(profile: Profile, say=None) -> Built:
    from ..embed import WeightsError, get_embedder
    from ..model.bundle import BundleError, load_bundle
    from ..model.moe import load_model

    def make(bundle_name: str):
        path = profile.model.bundle_path(bundle_name)
        b = load_bundle(path)
        emb = get_embedder(b.embedder["id"], weights=profile.model.weights, threads=profile.runtime.threads,
                           runtime=profile.model.embedder_runtime, say=say, kernel=profile.model.kernel)
        model = load_model(b, kernel=profile.model.kernel, embedder=emb.info,
                           evaluate_all=profile.model.evaluate_all_experts,
                           routing=profile.model.routing)
        w = (b.meta.get("window") or {}).get("window_s")
        return Built(emb, model, path, trained_window=float(w) if isinstance(w, (int, float)) and w > 0 else None)

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
        for key, per_class in (("thresholds", settings.thresholds), ("event_windows", settings.event_windows)):
            unknown = [c for c in per_class if c not in classes]
            if unknown:
                raise PipelineError(f"decision.{key} names {unknown}, which the model does not know; its classes "
                                    f"are {', '.join(classes)}")
        self.thr = np.array([settings.thresholds.get(c, settings.threshold) for c in classes], np.float32)
        self.need = [settings.event_windows.get(c, settings.event_min_windows) for c in classes]
        self.hist: deque = deque(maxlen=settings.smoothing)
        self.event: Optional[Event] = None

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
        if ev is not None and ev.label == decision:
            ev.extend(t_end, float(smooth[top]))
        else:
            if ev is not None and ev.counts:
                done = ev
            self.event = None
            if decision not in (None, "abstain"):
                self.event = Event(decision, t_start, t_end, float(smooth[top]), min_windows=self.need[top])
        return decision, smooth, done

    def flush(self) -> Optional[Event]:
        ev, self.event = self.event, None
        return ev if ev is not None and ev.counts else None

    def quiet(self) -> Optional[Event]:
        """A quiet window: no evidence to smooth with; the open event (if any) ends."""
        self.hist.clear()
        return self.flush()


class Listener:
    """The ``listen:`` groups of a profile over AudioSet probabilities."""

    def __init__(self, groups: Dict, event_min_windows: int):
        from ..embed.audioset import audioset_labels, find_label

        names = audioset_labels()
        self.names = list(groups)
        self.index = [np.array([find_label(n) for n in g.labels]) for g in groups.values()]
        self.thr = np.array([g.threshold for g in groups.values()], np.float32)
        self.need = [g.event_min_windows or event_min_windows for g in groups.values()]
        self.describe = {k: {"labels": [names[i] for i in ix], "threshold": g.threshold, "event_min_windows": n}
                         for (k, g), ix, n in zip(groups.items(), self.index, self.need)}
        self.open: Dict[int, Event] = {}

    def step(self, probs: np.ndarray, t_start: float, t_end: float):
        """-> ([[group index, probability]] of the groups heard, finished events)."""
        score = np.array([probs[ix].max() for ix in self.index], np.float32)
        heard = np.flatnonzero(score >= self.thr)
        done = []
        for g in list(self.open):
            if g not in heard:
                done.append(self.open.pop(g))
        for g in heard:
            ev = self.open.get(int(g))
            if ev is None:
                self.open[int(g)] = Event(self.names[g], t_start, t_end, float(score[g]), source="audioset",
                                          min_windows=self.need[g])
            else:
                ev.extend(t_end, float(score[g]))
        hits = [[int(g), round(float(score[g]), 3)] for g in heard]
        return hits, [e for e in done if e.counts]

    def flush(self) -> List[Event]:
        done, self.open = list(self.open.values()), {}
        return [e for e in done if e.counts]


def level_dbfs(window: np.ndarray):
    """(RMS, peak) of a window in dB relative to full scale (-200 for digital silence)."""
    x = np.asarray(window, dtype=np.float32)
    ms = float(np.dot(x, x)) / max(1, x.size)
    if not np.isfinite(ms):  # beyond float32's range (samples far above full scale): in float64
        ms = float(np.dot(x.astype(np.float64), x.astype(np.float64))) / max(1, x.size)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (10.0 * np.log10(ms) if ms > 1e-20 else -200.0), (20.0 * np.log10(peak) if peak > 1e-10 else -200.0)


class Pipeline:
    def __init__(self, built: Built, profile: Profile):
        self.built = built
        self.embedder = built.embedder
        self.model = built.model
        self.classes = list(self.model.classes)
        self.sr = profile.audio.sample_rate
        self.is_moe = getattr(self.model, "kind", "") == "moe"
        self.set_decisions(profile)

    def set_decisions(self, profile: Profile) -> List[Event]:
        """What is decided from the model's output (also on a reload that keeps the
        model); all or nothing: a bad setting raises before anything changes. Returns
        the events that the replaced decisions still had open."""
        decider = Decider(self.classes, profile.decision)
        listener, unavailable, rule = None, None, None
        audioset = hasattr(self.embedder, "embed_with_logits")
        if profile.listen:
            if audioset:
                listener = Listener(profile.listen, profile.decision.event_min_windows)
            else:
                unavailable = (f"AudioSet labels are unavailable: the embedder {self.embedder.info.id!r} has no "
                               "AudioSet output (they need mn04 and its weights); listen: is ignored until then")
        if profile.decision.open_set and audioset:
            from ..embed.openset import load_rule

            rule = load_rule().bind(self.classes)
        speech = None
        if audioset and profile.clips.enabled and profile.clips.privacy:
            from ..embed.audioset import find_label
            from .profiles import SPEECH_LABELS

            speech = np.array([find_label(n) for n in SPEECH_LABELS])
        left = self._carry_into(decider, listener) if hasattr(self, "decider") else []
        self.top_k = min(profile.decision.top_k, len(self.classes))
        self.min_level = profile.decision.min_level_dbfs
        self.decider, self.listener, self.listen_unavailable, self.open_set = decider, listener, unavailable, rule
        self.speech_index = speech
        return left

    def _carry_into(self, decider: "Decider", listener: Optional["Listener"]) -> List[Event]:
        """A reload goes on from where the running decisions are: the smoothing history
        and the open event move to ``decider`` when it decides the same classes, open
        listen events to the groups of the same name. Returns the events that cannot go
        on (their class or group is gone): they end here."""
        left = []
        old = self.decider
        if list(old.classes) == list(decider.classes):
            for p in list(old.hist)[-decider.hist.maxlen:]:
                decider.hist.append(p)
            decider.event = old.event
        elif old.event is not None:
            left += [e for e in [old.flush()] if e is not None]
        old.event = None
        if self.listener is not None:
            names = listener.names if listener is not None else []
            for ev in self.listener.open.values():
                if ev.label in names:
                    listener.open[names.index(ev.label)] = ev
                elif ev.counts:
                    left.append(ev)
            self.listener.open = {}
        return left

    def take_over(self, old: "Pipeline") -> List[Event]:
        """A new pipeline (a reload that changed the model) goes on from ``old``'s
        decisions where it can (``_carry_into``); returns the events that end."""
        return old._carry_into(self.decider, self.listener)

    def kernels(self) -> Dict[str, Optional[str]]:
        """The C variant each path runs: the head, the integer embedder (None where the
        embedder is not ours: ONNX Runtime, torch) and the front end."""
        from ..audio.frontend import implementation

        emb = getattr(self.embedder, "variant", None)
        return {"head": getattr(self.model, "variant", None), "embedder": emb,
                "front_end": implementation(self.embedder.front_end)}

    @classmethod
    def from_profile(cls, profile: Profile, say=None) -> "Pipeline":
        """``say``: told once when mn04's weights are converted for ONNX Runtime."""
        return cls(build(profile, say), profile)

    def process(self, window: np.ndarray, t_start: float, t_end: float) -> Tuple[Dict, List[Event]]:
        """One window (float32 at the profile's rate) -> (the window record, without the
        timestamps of capture, which the caller adds; the events that ended with it)."""
        clock = time.perf_counter
        t0 = clock()
        rms, peak = level_dbfs(window)
        if self.min_level is not None and rms < self.min_level:
            return self._quiet(rms, peak, t0)
        logits = None
        if self.wants_audioset:
            embs, logits = self.embedder.embed_with_logits(window[None, :], self.sr)
            emb, logits = embs[0], logits[0]
        else:
            emb = self.embedder.embed(window, self.sr)
        t1 = clock()
        pred = self.model.predict(emb[None, :])
        t2 = clock()
        unc = float(pred.uncertainty[0]) if pred.uncertainty is not None else None
        experts = pred.experts[0] if self.is_moe else None
        return self.decide(rms, peak, pred.proba[0], unc, logits, t_start, t_end, (t0, t1, t2), experts)

    @property
    def wants_audioset(self) -> bool:
        """Whether the decisions use the window's AudioSet output (listening, the open
        set, the privacy of clips)."""
        return self.listener is not None or self.open_set is not None or self.speech_index is not None

    def decide(self, rms: float, peak: float, p: np.ndarray, unc: Optional[float], logits: Optional[np.ndarray],
               t_start: float, t_end: float, times=None, experts=None) -> Tuple[Dict, List[Event]]:
        """What the daemon makes of one window above the level gate, from what the
        embedder and head gave for it: ``process`` calls it, and ``edgeqmoe eval`` replays
        it over windows measured once (``times``: perf_counter at the start, after the
        embedder and after the head; ``experts``: those the mixture ran)."""
        clock = time.perf_counter
        t0, t1, t2 = times if times is not None else (clock(),) * 3
        self.speech = None  # AudioSet speech probability of this window, when it is measured
        fits, target = self.open_set.judge(logits, int(np.argmax(p))) if self.open_set is not None else (True, None)
        if not fits:
            decision, event = "other", self.decider.quiet()  # none of the classes: no evidence to smooth
        else:
            decision, smooth, event = self.decider.decide(p, unc, t_start, t_end)
        events = [event] if event is not None else []
        hits = None
        if self.speech_index is not None:
            self.speech = float(sigmoid(logits[self.speech_index]).max())
        if self.listener is not None:
            hits, done = self.listener.step(sigmoid(logits), t_start, t_end)
            events += done
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
        if decision == "other":
            top3 = np.argsort(-logits)[:3]
            rec["d"] = OTHER
            rec["o"] = [round(target, 3), [[int(i), round(float(sigmoid(logits[i])), 3)] for i in top3]]
        elif decision is not None:
            rec["d"] = ABSTAIN if decision == "abstain" else self.classes.index(decision)
        if self.is_moe:
            rec["u"] = None if unc is None else round(unc, 3)
            if experts is not None:
                rec["x"] = experts.tolist()
        if hits:
            rec["ls"] = hits
        return rec, events

    def flush_events(self) -> List[Event]:
        """Events still open (end of input, a lost device, a reload, a new file)."""
        out = [e for e in [self.decider.flush()] if e is not None]
        return out + (self.listener.flush() if self.listener is not None else [])

    def _quiet(self, rms: float, peak: float, t0: float) -> Tuple[Dict, List[Event]]:
        """The record of a window below the level gate: no inference ran."""
        self.decider.hist.clear()  # no evidence to smooth with; open events end
        self.speech = 0.0 if self.speech_index is not None else None  # too faint to make out words
        events = self.flush_events()
        rec = {"d": QUIET, "lv": [round(rms), round(peak)],
               "stages_ms": {"embed": 0.0, "head": 0.0, "decision": round((time.perf_counter() - t0) * 1e3, 3)}}
        return rec, events
