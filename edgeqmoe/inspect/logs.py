"""``edgeqmoe logs summary|plot|compare``.

Readers take a log folder (or a single .jsonl file), read rotated and compressed
files oldest first, skip a torn last line, accept older schema versions and count
records of unknown type instead of failing (``edgeqmoe.daemon.sinks.read_jsonl``).
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..daemon.records import DECISION_CODES, QUIET
from ..daemon.sinks import KINDS, SCHEMA_VERSION, log_files, read_jsonl
from ..stats import STAGES, co2_ug, compare_samples, percentiles

KNOWN_TYPES = {"window", "event", "daemon", "stats"}


class LogsError(Exception):
    pass


def _parse_time(s: Optional[str]) -> Optional[float]:
    """Unix seconds from a number or an ISO date/time (UTC if no zone)."""
    if s is None:
        return None
    try:
        return float(s)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise LogsError(f"cannot read time {s!r}; use Unix seconds or ISO 8601 like 2026-11-29T12:00") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def load_logs(folder, since=None, until=None) -> Dict:
    folder = Path(folder)
    if not folder.exists():
        raise LogsError(f"{folder}: no such log folder")
    counts: Dict = {}
    t0, t1 = _parse_time(since), _parse_time(until)
    out: Dict[str, List[dict]] = {k: [] for k in KINDS}
    unknown = invalid = 0
    versions = set()
    files = []
    for kind in KINDS:
        paths = log_files(folder, kind) if folder.is_dir() else ([folder] if folder.name.startswith(kind) else [])
        files += paths
        for rec in read_jsonl(paths, counts):
            if kind == "windows":
                rec.setdefault("type", "window")  # window lines carry no type: the file says it
            v = rec.get("v", 1)
            if rec.get("type") not in KNOWN_TYPES or not _is_int(v) or v > SCHEMA_VERSION:
                unknown += 1
                continue
            if not _well_formed(kind, rec):
                invalid += 1
                continue
            versions.add(v)
            t = rec.get("t_wall")
            if t is not None and ((t0 is not None and t < t0) or (t1 is not None and t > t1)):
                continue
            out[kind].append(rec)
    if not files:
        below = sorted(str(p.parent) for p in folder.glob("*/daemon.jsonl")) if folder.is_dir() else []
        hint = (f"; the logs are one level down: {', '.join(below)} (give one of those folders)" if below else
                "; give the folder a daemon wrote to (logging.dir of its profile, or its --log-dir)")
        raise LogsError(f"{folder}: no edgeqmoe log files (windows.jsonl, events.jsonl, daemon.jsonl, stats.jsonl)"
                        + hint)
    _name_windows(out)
    out["_meta"] = {"bad_lines": counts.get("bad_lines", 0), "bad_files": counts.get("bad_files", 0),
                    "unknown_records": unknown, "invalid_records": invalid, "schema_versions": sorted(versions),
                    "files": [str(f) for f in files], "disk_bytes": sum(f.stat().st_size for f in files if f.exists())}
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _well_formed(kind: str, r: Dict) -> bool:
    """The fields the readers use have the types docs/logs.md gives them (a record
    that lies about them is counted and skipped, never fatal)."""
    if not _is_num(r.get("t_wall")):
        return False
    if kind == "windows":
        st = r.get("stages_ms")
        if not (isinstance(st, dict) and all(_is_num(x) for x in st.values())):
            return False
        if r.get("d") == QUIET and "class" not in r:  # quiet: the level gate ran, no model
            return True
        return (
                (_is_int(r.get("class")) or isinstance(r.get("class"), str)) and _is_num(r.get("score")) and
                all(isinstance(p, list) and len(p) == 2 and _is_num(p[1]) for p in r.get("k", r.get("topk", []))) and
                all(r.get(f) is None or _is_num(r.get(f)) for f in ("capture_lag_ms", "mj", "u")))
    if kind == "events":
        return isinstance(r.get("class"), str)
    if kind == "daemon":
        return isinstance(r.get("event"), str)
    if kind == "stats":
        st = r.get("stages_ms", {})
        return isinstance(st, dict) and all(r.get(f) is None or _is_num(r.get(f)) for f in ("power_w",
                                                                                          "dropped_samples_total"))
    return True


def _name_windows(L: Dict) -> None:
    """Window records store class and expert indices into their run's start record
    (docs/logs.md); add readable names (``class_name``, ``decision_name``,
    ``expert_names``), the ``device`` the run names, and the total stage time."""
    import bisect

    # a start, or a reload that changed the model, sets the names of the windows after it
    starts = sorted(((d["t_wall"], i, d) for i, d in enumerate(L["daemon"])
                     if d.get("event") in ("start", "reload") and isinstance(d.get("t_wall"), (int, float))
                     and isinstance(d.get("classes"), list)), key=lambda x: x[:2])
    keys = [t for t, _, _ in starts]
    for w in L["windows"]:
        t = w.get("t_wall")
        i = bisect.bisect_right(keys, t if isinstance(t, (int, float)) else 0) - 1
        start = starts[i][2] if i >= 0 else {}
        classes = start.get("classes") or []
        experts = start.get("experts") if isinstance(start.get("experts"), list) else []

        def name(idx, classes=classes):
            if isinstance(idx, str):
                return idx  # older, verbose records
            if idx in DECISION_CODES:
                return DECISION_CODES[idx]
            return classes[idx] if isinstance(idx, int) and 0 <= idx < len(classes) else str(idx)

        # short keys of schema 1 (docs/logs.md) under their long names
        for short, long in (("k", "topk"), ("d", "decision"), ("u", "uncertainty"), ("x", "experts"),
                            ("mj", "energy_mj")):
            if short in w:
                w[long] = w.pop(short)
        if "class" in w:  # quiet windows ran no model: no class, score or top-k
            w["class_name"] = name(w["class"])
        if isinstance(start.get("device"), str):  # windows name their device through the start record
            w.setdefault("device", start["device"])
        w["topk_names"] = [[name(i), p] for i, p in w.get("topk", [])]
        if w.get("decision") is not None:
            w["decision_name"] = name(w["decision"])
        groups = list(start.get("listen") or {}) if isinstance(start.get("listen"), dict) else []
        if isinstance(w.get("ls"), list):
            w["heard"] = [groups[g] if isinstance(g, int) and 0 <= g < len(groups) else str(g)
                          for g, _ in (x for x in w["ls"] if isinstance(x, list) and len(x) == 2)]
        if w.get("experts") is not None:
            w["expert_names"] = [experts[e] if isinstance(e, int) and e < len(experts) else str(e) for e in w["experts"]]
        if "energy_mj" in w:
            w.setdefault("energy_method", start.get("window_schema", {}).get("energy_method", "modelled"))
        st = w.get("stages_ms", {})
        if "total" not in st and st:
            st["total"] = round(sum(v for v in st.values() if isinstance(v, (int, float))), 4)


def window_probabilities(w: Dict) -> Dict[str, float]:
    """Class name -> probability of the classes a window record kept (top-1 and top-k)."""
    if "class_name" not in w:
        return {}
    out = {w["class_name"]: w["score"]}
    for n, p in w.get("topk_names", []):
        out[n] = p
    return out


def device_of(L: Dict, folder) -> str:
    """The device a folder's logs come from: its last start record's, else the folder's name."""
    for d in reversed(L["daemon"]):
        if d.get("event") == "start" and isinstance(d.get("device"), str):
            return d["device"]
    return Path(folder).name


def _runs(L: Dict) -> List[Dict]:
    """Each start runs until its stop, or (a crash) until its last record."""
    ws, ds, st = L["windows"], L["daemon"], L["stats"]
    starts = [d for d in ds if d.get("event") == "start"]
    stops = [d for d in ds if d.get("event") == "stop"]
    times = sorted([d["t_wall"] for d in ds] + [w["t_wall"] for w in ws] + [s["t_wall"] for s in st])
    runs = []
    for i, s in enumerate(starts):
        nxt = starts[i + 1]["t_wall"] if i + 1 < len(starts) else float("inf")
        stop = next((d for d in stops if s["t_wall"] <= d["t_wall"] < nxt), None)
        end = stop["t_wall"] if stop else max([t for t in times if s["t_wall"] <= t < nxt] or [s["t_wall"]])
        runs.append({"start": s["t_wall"], "end": end, "clean_stop": stop is not None, "profile": s.get("profile"),
                     "bundle": s.get("bundle"), "device": s.get("device")})
    return runs


def clips_of(L: Dict, folder) -> Dict:
    """The clips a log folder's runs kept (still on disk) and the events whose clip was withheld."""
    dirs = []
    for d in L["daemon"]:
        c = d.get("clips") if d.get("event") == "start" else None
        if isinstance(c, dict) and isinstance(c.get("dir"), str):
            p = Path(folder) / c["dir"]  # relative to the log folder (which may have been moved or copied)
            if p not in dirs:
                dirs.append(p)
    files = sorted((f for d in dirs if d.is_dir() for f in d.glob("*.flac")), key=lambda f: f.name)
    withheld: Dict[str, int] = {}
    for e in L["events"]:
        why = e.get("clip_withheld")
        if isinstance(why, str):
            key = why.split(" (")[0]
            withheld[key] = withheld.get(key, 0) + 1
    return {"count": len(files), "bytes": sum(f.stat().st_size for f in files), "withheld": withheld,
            "files": [str(f) for f in files]}


def _merge(parts: List[Dict]) -> Dict:
    """The records of several folders as one."""
    out = {k: [r for L in parts for r in L[k]] for k in KINDS}
    meta = {}
    for key in ("bad_lines", "bad_files", "unknown_records", "invalid_records", "disk_bytes"):
        meta[key] = sum(L["_meta"][key] for L in parts)
    meta["schema_versions"] = sorted({v for L in parts for v in L["_meta"]["schema_versions"]})
    meta["files"] = [f for L in parts for f in L["_meta"]["files"]]
    out["_meta"] = meta
    return out


def summary(folder, since=None, until=None) -> Dict:
    """One log folder, or several (a fleet): then per device (``devices``) and overall."""
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    loaded = [(str(f), load_logs(f, since, until)) for f in folders]
    if len(loaded) == 1:
        f, L = loaded[0]
        return _summary(f, L, _runs(L), clips_of(L, f))
    by_device: Dict[str, List] = {}
    for f, L in loaded:
        by_device.setdefault(device_of(L, f), []).append((f, L))
    devices = {}
    for dev, parts in by_device.items():
        devices[dev] = _summary(", ".join(f for f, _ in parts), _merge([L for _, L in parts]),
                                [r for _, L in parts for r in _runs(L)], _merge_clips([clips_of(L, f) for f, L in parts]))
    out = _summary(", ".join(f for f, _ in loaded), _merge([L for _, L in loaded]),
                   [r for _, L in loaded for r in _runs(L)], _merge_clips([clips_of(L, f) for f, L in loaded]))
    out["devices"] = devices
    out["restarts"] = sum(d["restarts"] for d in devices.values())
    # each device's hops apply to its own windows: the fleet's energy per hour from theirs
    for k in ("energy_total_mj", "listened_s"):
        out[k] = round(sum(d[k] for d in devices.values()), 3)
    out["energy_per_hour_j"] = _per_hour_j(out["energy_total_mj"], out["listened_s"])
    out["heard_s"] = round(sum(d["heard_s"] for d in devices.values()), 3)  # hours of audio of all devices
    counts = {**out["events"], **out["heard_events"]}
    out["events_per_hour"] = {k: round(v * 3600.0 / out["heard_s"], 2) for k, v in sorted(counts.items())} \
        if out["heard_s"] else {}
    return out


def _merge_clips(parts: List[Dict]) -> Dict:
    withheld: Dict[str, int] = {}
    for c in parts:
        for k, v in c["withheld"].items():
            withheld[k] = withheld.get(k, 0) + v
    return {"count": sum(c["count"] for c in parts), "bytes": sum(c["bytes"] for c in parts), "withheld": withheld,
            "files": [f for c in parts for f in c["files"]]}


def _energy_listened(ws: List[Dict], ds: List[Dict]) -> Tuple[float, float, float]:
    """The windows' energy in mJ (quiet ones included), the seconds of audio those with an
    energy figure stand for, and the seconds all windows stand for: one hop each (the hop
    of the start or reload before them; one device's records)."""
    hops = sorted((d["t_wall"], d["hop_s"]) for d in ds
                  if d.get("event") in ("start", "reload") and _is_num(d.get("hop_s")) and d["hop_s"] > 0
                  and _is_num(d.get("t_wall")))
    if not hops:
        return 0.0, 0.0, 0.0
    times = [t for t, _ in hops]
    mj = seconds = heard = 0.0
    for w in ws:
        e, t = w.get("energy_mj"), w.get("t_wall")
        if not _is_num(t):
            continue
        i = bisect.bisect_right(times, t) - 1
        if i < 0:
            continue
        heard += hops[i][1]
        if e is not None:
            mj, seconds = mj + e, seconds + hops[i][1]
    return mj, seconds, heard


def _per_hour_j(mj: float, seconds: float) -> Optional[float]:
    return round(mj / seconds * 3600 / 1e3, 4) if seconds else None


def _summary(folder: str, L: Dict, runs: List[Dict], clips: Dict) -> Dict:
    ws, evs, ds, st = L["windows"], L["events"], L["daemon"], L["stats"]
    starts = [d for d in ds if d.get("event") == "start"]
    stops = [d for d in ds if d.get("event") == "stop"]
    times = [d["t_wall"] for d in ds] + [w["t_wall"] for w in ws] + [s["t_wall"] for s in st]
    detections: Dict[str, int] = {}
    for w in ws:
        d = w.get("decision_name")
        if d:
            detections[d] = detections.get(d, 0) + 1
    abstained = detections.pop("abstain", 0)
    quiet, other = detections.pop("quiet", 0), detections.pop("other", 0)
    events: Dict[str, int] = {}
    heard_events: Dict[str, int] = {}
    for e in evs:
        into = heard_events if e.get("source") == "audioset" else events
        into[e["class"]] = into.get(e["class"], 0) + 1
    heard: Dict[str, int] = {}
    for w in ws:
        for g in w.get("heard", ()):
            heard[g] = heard.get(g, 0) + 1
    ran = [w for w in ws if w.get("decision") != QUIET]  # latency of inference: quiet windows ran no model
    stages = {k: percentiles([w["stages_ms"][k] for w in ran if k in w.get("stages_ms", {})]) for k in STAGES}
    lag = [w["capture_lag_ms"] for w in ws if w.get("capture_lag_ms") is not None]
    energy = [w["energy_mj"] for w in ws if w.get("energy_mj") is not None]
    listened = _energy_listened(ws, ds)
    methods = sorted({w.get("energy_method") for w in ws if w.get("energy_method")})
    power_methods = sorted({s.get("power_method") for s in st if s.get("power_method")})
    dropped = max([d["dropped_samples"] for d in stops if _is_num(d.get("dropped_samples"))] +
                  [s["dropped_samples_total"] for s in st if _is_num(s.get("dropped_samples_total"))] + [0])
    return {
        "folder": str(folder), "runs": len(runs), "restarts": max(0, len(runs) - 1),
        "unclean_stops": sum(not r["clean_stop"] for r in runs),
        "uptime_s": round(sum(r["end"] - r["start"] for r in runs), 3),
        "first": min(times) if times else None, "last": max(times) if times else None,
        "windows": len(ws), "deadline_misses": sum(1 for w in ws if w.get("deadline_miss")),
        "detections": dict(sorted(detections.items())), "events": dict(sorted(events.items())),
        "heard": dict(sorted(heard.items())), "heard_events": dict(sorted(heard_events.items())),
        "abstained": abstained, "quiet": quiet, "other": other,
        "undecided": sum(1 for w in ws if w.get("decision") is None),
        "latency_ms": stages, "jitter_ms": {k: v.get("std") for k, v in stages.items() if v},
        "capture_lag_ms": percentiles(lag), "dropped_samples": int(dropped),
        "energy_per_inference_mj": percentiles(energy), "energy_per_hour_j": _per_hour_j(*listened[:2]),
        "heard_s": round(listened[2], 3),
        "events_per_hour": {k: round(v * 3600.0 / listened[2], 2) for k, v in sorted({**events, **heard_events}.items())}
        if listened[2] else {},
        "energy_total_mj": round(listened[0], 3), "listened_s": round(listened[1], 3),
        "energy_method": methods, "power_method": power_methods,
        "power_w": percentiles([s["power_w"] for s in st if s.get("power_w") is not None]),
        "co2_ug_per_inference": (round(co2_ug(float(np.mean(energy)), _grid(starts)), 5)
                                 if energy else None),
        "grid_gco2_per_kwh": _grid(starts),
        "disk_bytes": L["_meta"]["disk_bytes"], "bad_lines": L["_meta"]["bad_lines"],
        "bad_files": L["_meta"]["bad_files"], "unknown_records": L["_meta"]["unknown_records"],
        "invalid_records": L["_meta"]["invalid_records"],
        "schema_versions": L["_meta"]["schema_versions"],
        "clips": clips,
        "mqtt": _mqtt_health(ds, st),
        "runs_detail": runs,
    }


def _mqtt_health(ds: List[dict], st: List[dict]) -> Optional[Dict]:
    """Outages of the broker (from the daemon records) and the last published/dropped
    totals of each run (from the stats records); None when no run used MQTT."""
    brokers = sorted({d["mqtt"] for d in ds if d.get("event") == "start" and isinstance(d.get("mqtt"), str)})
    if not brokers:
        return None
    outages = [d for d in ds if d.get("event") == "mqtt_disconnected"]
    back = [d["after_s"] for d in ds if d.get("event") == "mqtt_connected" and _is_num(d.get("after_s"))]
    import bisect

    starts = sorted((d.get("device"), d["t_wall"]) for d in ds if d.get("event") == "start")
    published = dropped = 0
    last: Dict = {}
    for s in sorted(st, key=lambda r: r["t_wall"]):  # totals restart with each run: each run's last counts
        if _is_num(s.get("mqtt_published_total")):
            own = [t for dev, t in starts if dev == s.get("device")] or [t for _, t in starts]
            i = bisect.bisect_right(own, s["t_wall"]) - 1
            last[(s.get("device"), own[i] if i >= 0 else None)] = s
    for s in last.values():
        published += int(s.get("mqtt_published_total") or 0)
        dropped += int(s.get("mqtt_dropped_total") or 0)
    dropped += sum(int(d.get("count") or 0) for d in ds if d.get("event") == "mqtt_unsent")  # after the last stats
    return {"brokers": brokers, "outages": len(outages), "longest_outage_s": max(back) if back else None,
            "published": published, "dropped": dropped}


def _grid(starts: List[dict]) -> float:
    """Grid intensity (gCO2/kWh) of the last run's power settings (300 if unknown)."""
    for s in reversed(starts):
        g = (s.get("power") or {}).get("grid_gco2_per_kwh")
        if g is not None:
            return float(g)
    return 300.0


def format_summary(s: Dict) -> str:
    def ts(t):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"

    lines = []
    if s.get("devices"):
        lines.append(f"{len(s['devices'])} devices:")
        for dev, d in s["devices"].items():
            lines.append(f"  {dev}: {d['folder']}; uptime {d['uptime_s'] / 3600:.2f} h, {d['runs']} run(s), windows "
                         f"{d['windows']} (quiet {d['quiet']}, other {d['other']}), events "
                         + (", ".join(f"{k} {v}" for k, v in d["events"].items()) or "none")
                         + f", clips {d['clips']['count']}")
        lines.append("all devices together:")
    lines += [f"logs: {s['folder']}  ({s['disk_bytes'] / 1e6:.2f} MB on disk)",
             f"from {ts(s['first'])} to {ts(s['last'])} UTC; uptime {s['uptime_s'] / 3600:.2f} h over {s['runs']} run(s), "
             f"{s['restarts']} restart(s), {s['unclean_stops']} without a clean stop",
             f"windows {s['windows']}, deadline misses {s['deadline_misses']}, dropped samples {s['dropped_samples']}",
             f"windows decided: quiet {s['quiet']}, other {s['other']}, abstained {s['abstained']}, "
             f"below threshold {s['undecided']}",
             "detections (windows): " + (", ".join(f"{k} {v}" for k, v in s["detections"].items()) or "none"),
             "events: " + (", ".join(f"{k} {v}" for k, v in s["events"].items()) or "none"),
             "heard (listen:, windows / events): " + (", ".join(
                 f"{k} {v} / {s['heard_events'].get(k, 0)}" for k, v in s["heard"].items()) or "none"),
             "latency per window (ms):"]
    if s.get("heard_s"):  # after the events line; an older log without hops has no such figure
        lines.insert(lines.index("latency per window (ms):") - 1,
                     f"events per hour of audio heard ({s['heard_s'] / 3600:.2f} h): " + (", ".join(
                         f"{k} {v:.1f}" for k, v in s["events_per_hour"].items()) or "none"))
    for k, v in s["latency_ms"].items():
        if v:
            lines.append(f"  {k:9} p50 {v['p50']:8.3f}  p95 {v['p95']:8.3f}  p99 {v['p99']:8.3f}  max {v['max']:8.3f}"
                         f"  std {v['std']:7.3f}")
    if s["capture_lag_ms"]:
        lines.append(f"capture lag (ms): p50 {s['capture_lag_ms']['p50']:.1f}, p99 {s['capture_lag_ms']['p99']:.1f}, "
                     f"max {s['capture_lag_ms']['max']:.1f}")
    if s["energy_per_inference_mj"]:
        e = s["energy_per_inference_mj"]
        lines.append(f"energy per inference: mean {e['mean']:.3f} mJ, p99 {e['p99']:.3f} mJ "
                     f"({'/'.join(s['energy_method'])}), {s['co2_ug_per_inference']:.4f} ug CO2 at "
                     f"{s['grid_gco2_per_kwh']:g} g/kWh; power {'/'.join(s['power_method']) or 'n/a'}")
        if s.get("energy_per_hour_j") is not None:
            lines.append(f"energy per hour of listening: {s['energy_per_hour_j']:.3f} J (each window's energy over "
                         "the audio it stands for, one hop)")
    c = s.get("clips")
    if c and (c["count"] or c["withheld"]):
        lines.append(f"clips: {c['count']} kept ({c['bytes'] / 1e6:.2f} MB), withheld: "
                     + (", ".join(f"{k} {v}" for k, v in c["withheld"].items()) or "none"))
        for f in c["files"][-10:]:
            lines.append(f"  {f}")
        if c["count"] > 10:
            lines.append(f"  ... and {c['count'] - 10} older (--json lists them all)")
    m = s.get("mqtt")
    if m:
        lines.append(f"mqtt: {', '.join(m['brokers'])}; {m['outages']} outage(s)"
                     + (f", longest {m['longest_outage_s']:g} s" if m["longest_outage_s"] is not None else "")
                     + f"; {m['published']} messages published, {m['dropped']} dropped")
    if s["bad_lines"] or s["bad_files"] or s["unknown_records"] or s.get("invalid_records"):
        lines.append(f"skipped: {s['bad_lines']} unreadable line(s), {s['bad_files']} damaged file(s), "
                     f"{s['unknown_records']} record(s) of unknown type or newer schema, "
                     f"{s.get('invalid_records', 0)} record(s) with fields of the wrong type")
    return "\n".join(lines)


def compare(a, b, stage: str = "head") -> Dict:
    """Run A against run B: variance and mean of a stage's latency and of the energy
    per inference (Levene/Brown-Forsythe, Welch, Cohen's d)."""
    La, Lb = load_logs(a), load_logs(b)
    out = {"a": str(a), "b": str(b), "stage": stage}
    for key, get in (("latency_ms", lambda w: w.get("stages_ms", {}).get(stage)),
                     ("energy_mj", lambda w: w.get("energy_mj"))):
        xa = [v for v in (get(w) for w in La["windows"]) if v is not None]
        xb = [v for v in (get(w) for w in Lb["windows"]) if v is not None]
        if len(xa) < 3 or len(xb) < 3:
            out[key] = None
            continue
        out[key] = compare_samples(xa, xb)
    lat = out.get("latency_ms")
    if lat:
        vr = lat["variance_reduction"]
        better = vr is not None and vr > 0 and lat["levene_p"] < 0.05
        worse = (vr is None or vr < 0) and lat["levene_p"] < 0.05
        change = (f"{100 * abs(vr):.1f}% {'lower' if vr > 0 else 'higher'} than A's" if vr is not None else
                  "not comparable as a ratio (A's variance is zero)")
        verdict = (f"B's {stage} latency variance is {change} (Levene p={lat['levene_p']:.3g}): " +
                   ("B is significantly more stable" if better else "A is significantly more stable" if worse
                    else "no significant difference in stability"))
        verdict += (f"; mean {lat['mean_b']:.4f} vs {lat['mean_a']:.4f} ms (Welch p={lat['welch_p']:.3g}, "
                    f"Cohen's d={lat['cohens_d']:.2f})")
        out["verdict"] = verdict
    else:
        out["verdict"] = "not enough windows in one of the runs to compare"
    return out


def plot(folder, out_png: str, since=None, until=None) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LogsError("plots need matplotlib: pip install 'edgeqmoe[plot]'") from None
    L = load_logs(folder, since, until)
    ws, st = L["windows"], L["stats"]
    if not ws:
        raise LogsError(f"{folder}: no window records to plot")
    t0 = min(w["t_wall"] for w in ws)
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    tot = [w["stages_ms"]["total"] for w in ws]
    ax[0, 0].hist(tot, bins=60, color="#2a6f97")
    ax[0, 0].set(title="Latency per window (total)", xlabel="ms", ylabel="windows")
    t = [(w["t_wall"] - t0) / 60 for w in ws]
    for k, c in (("embed", "#2a6f97"), ("head", "#e07a5f"), ("total", "#3d405b")):
        ax[0, 1].plot(t, [w["stages_ms"][k] for w in ws], ".", ms=2, color=c, label=k)
    ax[0, 1].set(title="Latency over time", xlabel="minutes", ylabel="ms")
    ax[0, 1].legend()
    classes = sorted({w["decision_name"] for w in ws if w.get("decision_name") not in (None, *DECISION_CODES.values())})
    for i, c in enumerate(classes):
        tt = [(w["t_wall"] - t0) / 60 for w in ws if w.get("decision_name") == c]
        ax[1, 0].plot(tt, [i] * len(tt), "|", ms=10)
    ax[1, 0].set_yticks(range(len(classes)))
    ax[1, 0].set_yticklabels(classes)
    ax[1, 0].set(title="Detections over time", xlabel="minutes")
    if st and any(s.get("power_w") is not None for s in st):
        pts = [((s["t_wall"] - t0) / 60, s["power_w"]) for s in st if s.get("power_w") is not None]
        ax[1, 1].plot(*zip(*pts), "-o", ms=3, color="#81b29a")
        ax[1, 1].set(title=f"Power ({'/'.join(sorted({s.get('power_method') for s in st if s.get('power_method')}))})",
                     xlabel="minutes", ylabel="W")
    else:
        e = [w.get("energy_mj") or 0 for w in ws]
        ax[1, 1].plot(t, e, ".", ms=2, color="#81b29a")
        ax[1, 1].set(title="Energy per window (modelled)", xlabel="minutes", ylabel="mJ")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_clip(folder, clip: str, out_png: str) -> str:
    """The spectrogram of one event clip (a path, a file name in the folder's clips, or
    ``latest``), titled with its event."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LogsError("plots need matplotlib: pip install 'edgeqmoe[plot]'") from None
    import soundfile as sf

    L = load_logs(folder)
    files = [Path(f) for f in clips_of(L, folder)["files"]]
    if clip == "latest":
        if not files:
            raise LogsError(f"{folder}: no clips (clips.enabled in the profile keeps them)")
        path = files[-1]
    else:
        path = Path(clip)
        if not path.is_file():
            path = next((f for f in files if f.name == clip or f.stem == clip), path)
        if not path.is_file():
            raise LogsError(f"clip {clip!r} not found in {folder}; `edgeqmoe logs summary {folder}` lists the clips")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, OSError) as e:
        raise LogsError(f"{path}: cannot read it as audio ({e})") from None
    ev = next((e for e in L["events"] if isinstance(e.get("clip"), str) and Path(e["clip"]).name == path.name), None)
    title = path.name if ev is None else f"{ev['class']} (peak {ev['peak']:.2f}, {ev['end_s'] - ev['start_s']:.1f} s)"
    fig, ax = plt.subplots(figsize=(10, 4))
    n_fft = 512
    ax.specgram(audio if audio.ndim == 1 else audio.mean(axis=1), NFFT=n_fft, Fs=sr, noverlap=n_fft // 2,
                cmap="magma", scale="dB")
    ax.set(title=title, xlabel="seconds", ylabel="Hz")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
