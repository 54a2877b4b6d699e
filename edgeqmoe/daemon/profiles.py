"""Deployment profiles: typed, frozen, versioned settings of the daemon, from YAML.

A profile is found by path (``--profile ./my.yaml``) or by name among
``$EDGEQMOE_PROFILES`` and the profiles shipped with the package
(``edgeqmoe/profiles``, also ``profiles/`` at the top of a checkout).

A bundle named in a profile is resolved in this order, and never in the working
directory unless the profile itself lies there:
1. an absolute path (``~`` expanded) is taken as it is;
2. a path with a folder in it (``models/x.eqm``) is relative to the profile's folder;
3. a bare file name is a shipped bundle (``edgeqmoe/bundles``) when one has that name,
   else a file of that name in the profile's folder.
So a stray ``balanced.eqm`` beside the profile or in the working directory never
replaces the shipped one; name your own bundles differently or give a path.

Every field below documents its unit. Unknown keys, wrong types and values out of
range fail with the file, the dotted key and what is allowed (``SettingsError``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..model.moe import ROUTING_MODES
from ..settings import SettingsError, build, field, load_yaml

PROFILE_VERSION = 1
#: default level gate (RMS dBFS of a window). Measured on the 6,444 2-s windows of the
#: shared UrbanSound8K clips: 1.3% lie below -57 dBFS (most of them distant sirens), and
#: noise at -60 dBFS or less, room tone and digital silence all do (docs/open-set.md).
QUIET_DBFS = -57.0
PACKAGE_DIR = Path(__file__).resolve().parent.parent
SHIPPED_PROFILES = PACKAGE_DIR / "profiles"
SHIPPED_BUNDLES = PACKAGE_DIR / "bundles"
#: the longest block a profile gets without asking (s): audio is handed over at least this often
MAX_AUTO_BLOCK_S = 2.0


class ProfileError(Exception):
    """A profile that cannot be found or used; the message says what to do."""


@dataclass(frozen=True)
class ModelSettings:
    bundle: str = field(doc="model bundle: a path (relative to the profile) or a shipped bundle's file name")
    fallback_bundle: Optional[str] = field(None, doc="bundle for the weight-free embedder, used when the "
                                                     "bundle's embedder weights are missing")
    weights: Optional[str] = field(None, doc="embedder weights (file or folder); default: the usual search")
    kernel: str = field("simd", doc="ref, generic, simd, or a variant name (avx512vbmi, avx512, avx2, neon, dotprod)")
    embedder_runtime: str = field("auto", choices=("auto", "onnxruntime", "torch", "int8"),
                                  doc="mn04: auto (ONNX Runtime when installed, else torch), onnxruntime (fp32, "
                                      "no torch), torch, int8 (our integer kernels, the model.kernel variant)")
    evaluate_all_experts: bool = field(False, doc="MoE: run every expert on every window (fixed work)")
    routing: str = field("trained", choices=ROUTING_MODES,
                         doc="MoE: trained (as the bundle was trained, curiosity included), router (the "
                             "router's plain top-k), uniform (experts drawn at random per window: the "
                             "baseline curiosity is compared with)")
    _base: str = field("", doc="(internal) folder of the profile file")

    def validate(self):
        """The kernel must be one this machine runs: what ``run`` refuses, validate refuses."""
        from ..kernels import KernelChoiceError, resolve_variant

        try:
            resolve_variant(self.kernel)
        except KernelChoiceError as e:
            return [("kernel", str(e))]
        return []

    def bundle_path(self, name: Optional[str] = None) -> str:
        """Where ``name`` (default: ``bundle``) resolves (module doc); the path may not exist."""
        name = name or self.bundle
        p = Path(name).expanduser()
        base = Path(self._base) if self._base else Path.cwd()
        if p.is_absolute():
            return str(p)
        if len(p.parts) == 1 and (SHIPPED_BUNDLES / p).is_file():
            return str(SHIPPED_BUNDLES / p)
        return str(base / p)


@dataclass(frozen=True)
class AudioSettings:
    source: str = field("mic", doc="mic, mic:DEVICE (index or name), file:PATH or dir:PATH")
    sample_rate: int = field(16000, unit="Hz", range=(8000, 192000))
    channels: int = field(1, range=(1, 32), doc="captured channels, mixed to mono")
    window: float = field(1.0, unit="s", range=(0.1, 30.0))
    hop: float = field(0.5, unit="s", range=(0.05, 30.0))
    block: Optional[float] = field(None, unit="s", range=(0.005, 1.0),
                                   doc="audio callback block: how often the source hands audio over (null: the "
                                       "largest divisor of the hop up to 2 s). Each hand-over wakes the daemon "
                                       "(about 0.1 ms of CPU here); a block that divides the hop adds no capture "
                                       "lag, since every window's last sample ends a block")
    ring: float = field(20.0, unit="s", range=(1.0, 600.0), doc="ring buffer between capture and inference")
    realtime: bool = field(True, doc="file and dir sources: replay at real time (false: as fast as possible)")

    @property
    def block_s(self) -> float:
        """``block``, or the largest divisor of the hop up to MAX_AUTO_BLOCK_S."""
        if self.block is not None:
            return self.block
        return self.hop / math.ceil(self.hop / MAX_AUTO_BLOCK_S - 1e-9)

    def validate(self):
        out = []
        if self.hop > self.window:
            out.append(("hop", f"{self.hop} s is longer than the window ({self.window} s): audio between windows "
                               "would never be heard"))
        if self.ring < 2 * self.window:
            out.append(("ring", f"{self.ring} s must hold at least two windows ({2 * self.window} s)"))
        if self.block is not None and self.block > self.window:
            out.append(("block", f"{self.block} s is longer than the window ({self.window} s)"))
        return out


@dataclass(frozen=True)
class RuntimeSettings:
    threads: int = field(1, range=(1, 64), doc="torch/BLAS threads for the embedder")
    cpu_affinity: Tuple[int, ...] = field((), range=(0, 4095), doc="pin the process to these CPU cores (empty: no "
                                                                    "pinning)")
    freeze_gc: bool = field(True, doc="freeze the heap after warm-up and keep the collector out of the hot loop")


@dataclass(frozen=True)
class DecisionSettings:
    top_k: int = field(3, range=(1, 100), doc="classes written per window")
    threshold: float = field(0.5, range=(0.0, 1.0), doc="minimum smoothed probability to decide a class")
    thresholds: Dict[str, float] = field(default_factory=dict, doc="per-class thresholds (class name: value)")
    smoothing: int = field(3, range=(1, 100), unit="windows", doc="mean of the last N windows' probabilities")
    abstain_uncertainty: Optional[float] = field(None, unit="nats", range=(0.0, 10.0),
                                                 doc="abstain when the router's uncertainty exceeds this")
    event_min_windows: int = field(2, range=(1, 1000), doc="consecutive decided windows that make an event")
    event_windows: Dict[str, int] = field(default_factory=dict, doc="per-class event_min_windows (class name: "
                                          "windows); 1 for short sounds (a shot, a horn)")
    open_set: bool = field(True, doc="a window that mn04's AudioSet output says is none of the model's classes is "
                                     "'other', whatever the head says (mn04 only; docs/open-set.md)")
    min_level_dbfs: Optional[float] = field(QUIET_DBFS, unit="dBFS", range=(-140.0, 0.0),
                                            doc="a window whose RMS level is below this is 'quiet': no "
                                                "embedder, no head, nothing decided (null: never)")

    def validate(self):
        return ([(f"thresholds.{k}", f"{v!r} is outside 0.0..1.0") for k, v in self.thresholds.items()
                 if not 0.0 <= v <= 1.0] +
                [(f"event_windows.{k}", f"{v!r} is not a whole number of windows from 1 to 1000")
                 for k, v in self.event_windows.items() if isinstance(v, bool) or not isinstance(v, int)
                 or not 1 <= v <= 1000])


@dataclass(frozen=True)
class ListenGroup:
    """AudioSet classes listened to as one name (``listen:`` of a profile)."""

    labels: Tuple[str, ...] = field((), doc="AudioSet classes: a display name or a comma-separated part of one "
                                            "('Smoke detector'); empty: the group's own name")
    threshold: float = field(0.5, range=(0.0, 1.0),
                             doc="AudioSet probability (the largest of the group's classes) that counts as heard")
    event_min_windows: Optional[int] = field(None, range=(1, 1000),
                                             doc="windows in a row that make an event (null: decision.event_min_windows)")

    def validate(self):
        from ..embed.audioset import LabelError, find_label

        out = []
        for i, name in enumerate(self.labels):
            try:
                find_label(name)
            except LabelError as e:
                out.append((f"labels[{i}]", str(e)))
        return out


@dataclass(frozen=True)
class LoggingSettings:
    dir: str = field("edgeqmoe-logs", doc="log folder (relative to the working directory)")
    flush_interval: float = field(2.0, unit="s", range=(0.0, 3600.0), doc="batch writes (SD cards)")
    rotate_bytes: int = field(20_000_000, unit="bytes", range=(10_000, 10_000_000_000))
    rotate_age: float = field(86400.0, unit="s", range=(60.0, 31_536_000.0))
    retention: int = field(30, range=(1, 100000), unit="files", doc="rotated files kept per kind")
    compress: bool = field(True, doc="gzip rotated files")
    stats_interval: float = field(60.0, unit="s", range=(1.0, 3600.0), doc="jitter/power/metrics records")


@dataclass(frozen=True)
class MetricsSettings:
    http_port: Optional[int] = field(None, range=(0, 65535), doc="serve Prometheus metrics over HTTP on this port "
                                                                  "(0: any free one; null: off; the textfile "
                                                                  "edgeqmoe.prom is written either way)")
    http_host: str = field("127.0.0.1", doc="address to listen on (0.0.0.0: every interface)")


#: characters of a device name (MQTT topics, Home Assistant ids, log records)
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: AudioSet classes that count as speech for the privacy of event clips
SPEECH_LABELS = ("Speech", "Male speech, man speaking", "Female speech, woman speaking",
                 "Child speech, kid speaking", "Conversation", "Narration, monologue", "Babbling",
                 "Speech synthesizer", "Whispering", "Chatter", "Hubbub, speech noise, speech babble")


@dataclass(frozen=True)
class MqttSettings:
    """Publishing to an MQTT broker (docs/mqtt.md). The password is never in the profile:
    it is read from ``password_file`` or the environment variable ``password_env``."""

    host: Optional[str] = field(None, doc="broker host name or address (null: MQTT off)")
    port: Optional[int] = field(None, range=(1, 65535), doc="broker port (default 8883 with tls, else 1883)")
    tls: bool = field(False, doc="connect with TLS (the system's CAs unless ca_file is given)")
    ca_file: Optional[str] = field(None, doc="TLS: CA certificate file (PEM)")
    cert_file: Optional[str] = field(None, doc="TLS: client certificate (PEM), with key_file")
    key_file: Optional[str] = field(None, doc="TLS: client key (PEM)")
    username: Optional[str] = field(None, doc="user name; its password comes from password_file or password_env")
    password_file: Optional[str] = field(None, doc="file holding the password (first line)")
    password_env: str = field("EDGEQMOE_MQTT_PASSWORD", doc="environment variable holding the password")
    client_id: Optional[str] = field(None, doc="MQTT client id (default: edgeqmoe-DEVICE)")
    base_topic: str = field("edgeqmoe", doc="topics are BASE/DEVICE/...")
    discovery: bool = field(True, doc="publish Home Assistant discovery configs (retained)")
    discovery_prefix: str = field("homeassistant", doc="Home Assistant's discovery prefix")
    discovery_skip: Tuple[str, ...] = field((), doc="classes and listen groups that get no Home Assistant entity "
                                                    "(their events and states are still published)")
    keepalive: int = field(60, unit="s", range=(5, 3600))
    queue: int = field(1000, unit="messages", range=(10, 1_000_000),
                       doc="messages kept while the broker is unreachable (the oldest are dropped beyond)")
    level_interval: float = field(10.0, unit="s", range=(0.5, 3600.0), doc="how often the level is published")
    backoff: Tuple[float, float] = field((1.0, 60.0), unit="s", range=(0.1, 3600.0),
                                         doc="reconnect waits: first and longest (doubling between)")

    def validate(self):
        out = []
        for k in ("base_topic", "discovery_prefix"):
            v = getattr(self, k)
            if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
                out.append((k, f"{v!r} is not a usable MQTT topic prefix (no + # or NUL, no leading or trailing /)"))
        if len(self.backoff) != 2 or self.backoff[0] > self.backoff[1]:
            out.append(("backoff", "give [first, longest] with first <= longest"))
        if (self.cert_file is None) != (self.key_file is None):
            out.append(("cert_file" if self.cert_file is None else "key_file",
                        "a client certificate needs both cert_file and key_file"))
        return out


@dataclass(frozen=True)
class ClipSettings:
    """Event clips: the audio of each event as FLAC beside the logs (docs/clips.md)."""

    enabled: bool = field(False, doc="keep a clip of each event")
    dir: str = field("clips", doc="folder of the clips (relative to the log folder)")
    pre_roll: float = field(1.0, unit="s", range=(0.0, 30.0), doc="audio kept before the event")
    post_roll: float = field(1.0, unit="s", range=(0.0, 30.0), doc="audio kept after the event")
    max_length: float = field(30.0, unit="s", range=(1.0, 600.0), doc="longest clip (the event's start is kept)")
    max_count: int = field(1000, range=(1, 10_000_000), unit="files", doc="clips kept (the oldest go first)")
    max_age_days: float = field(30.0, unit="days", range=(0.01, 36500.0), doc="clips older than this are deleted")
    max_mb: float = field(500.0, unit="MB", range=(1.0, 10_000_000.0), doc="disk the clips may use")
    privacy: bool = field(True, doc="never keep a clip where speech was heard (mn04's AudioSet speech classes; "
                                    "without them no clip is kept at all)")
    speech_threshold: float = field(0.2, range=(0.0, 1.0),
                                    doc="AudioSet speech probability, in any window of the clip, that withholds it")


@dataclass(frozen=True)
class PowerSettings:
    method: str = field("auto", choices=("auto", "rapl", "pmic", "battery", "model", "off"),
                        doc="auto: a hardware counter when readable, else the power model")
    device_class: str = field("auto", choices=("auto", "laptop", "desktop", "server", "rpi4", "rpi5"))
    grid_intensity: float = field(300.0, unit="gCO2/kWh", range=(0.0, 2000.0))


@dataclass(frozen=True)
class WatchdogSettings:
    silence_timeout: float = field(5.0, unit="s", range=(0.5, 3600.0), doc="no audio this long: reopen the device")
    flat_timeout: float = field(30.0, unit="s", range=(1.0, 86400.0), doc="exact zeros this long: reopen")
    backoff: Tuple[float, ...] = field((0.5, 1.0, 2.0, 5.0, 10.0), unit="s", range=(0.01, 3600.0),
                                       doc="waits between reopen attempts (the last one repeats)")

    def validate(self):
        return [("backoff", "give at least one wait")] if not self.backoff else []


@dataclass(frozen=True)
class Profile:
    version: int = field(PROFILE_VERSION, range=(1, PROFILE_VERSION))
    name: str = ""
    description: str = ""
    model: ModelSettings = field(default_factory=lambda: ModelSettings(bundle="balanced.eqm"))
    audio: AudioSettings = field(default_factory=AudioSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    power: PowerSettings = field(default_factory=PowerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    clips: ClipSettings = field(default_factory=ClipSettings)
    device: str = field("", doc="this machine's name in records, MQTT topics and Home Assistant (default: the "
                                "host name); letters, digits, _ . -")
    listen: Dict[str, ListenGroup] = field(default_factory=dict,
                                           doc="AudioSet classes reported beside the model's classes, by group name: "
                                               "a list of classes, or {labels: [...], threshold: p} (mn04 only)")
    source_file: str = field("", doc="(internal) where the profile was read from")
    source_mtime: float = field(0.0, doc="(internal) the file's modification time just before it was read")

    def validate(self):
        if self.device and not DEVICE_NAME.fullmatch(self.device):
            return [("device", f"{self.device!r}: use 1-64 letters, digits, _ . - (starting with a letter or digit)")]
        return []

    @property
    def device_name(self) -> str:
        """``device``, else this machine's host name made safe for topics and ids."""
        return self.device or device_default()


def device_default() -> str:
    import socket

    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0])[:64].strip("-_.")
    return name or "edgeqmoe"


def profile_dirs() -> List[Path]:
    dirs = []
    env = os.environ.get("EDGEQMOE_PROFILES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(SHIPPED_PROFILES)
    return dirs


def available_profiles() -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for d in reversed(profile_dirs()):
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                out[f.stem] = f
    return dict(sorted(out.items()))


def find_profile(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if p.exists():  # load_yaml says what is wrong with anything but a regular file
            return p
        raise ProfileError(f"profile file {p} not found")
    profiles = available_profiles()
    if name_or_path in profiles:
        return profiles[name_or_path]
    raise ProfileError(f"unknown profile {name_or_path!r}; available: {', '.join(profiles) or 'none'} "
                       f"(or give a path to a .yaml file)")


def load_profile(name_or_path: str, overrides: Optional[dict] = None) -> Profile:
    """Find, read and validate a profile; ``overrides`` (nested dict) win over the file."""
    path = find_profile(name_or_path)
    try:  # before reading: an edit made while (or after) it is read shows as a later time
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = 0.0
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise SettingsError(str(path), "", "a profile is a mapping of settings")
    data = dict(data)
    for k, v in (overrides or {}).items():
        if isinstance(v, dict):
            data[k] = {**(data.get(k) or {}), **v}
        else:
            data[k] = v
    model = dict(data.get("model") or {})
    internal = [k for k in ("source_file", "source_mtime") if k in data]
    if "_base" in model or internal:
        raise SettingsError(str(path), "model._base" if "_base" in model else internal[0],
                            "internal setting; remove it")
    model["_base"] = str(path.parent)
    data["model"] = model
    mqtt = data.get("mqtt")
    if isinstance(mqtt, dict) and "password" in mqtt:
        raise SettingsError(str(path), "mqtt.password", "a password never goes in the profile: put it in a file "
                            "(mqtt.password_file, readable only by the daemon's user) or in the environment "
                            "variable named by mqtt.password_env (default EDGEQMOE_MQTT_PASSWORD)")
    if isinstance(data.get("listen"), dict):
        data["listen"] = {k: _listen_group(k, v) for k, v in data["listen"].items()}
    data["source_file"], data["source_mtime"] = str(path), float(mtime)
    data.setdefault("name", path.stem)
    return build(Profile, data, str(path))


def _listen_group(name, value):
    """``listen:`` shorthands: a list of classes, a bare threshold, or nothing (the
    group's own name is the class)."""
    if value is None:
        value = {}
    elif isinstance(value, (list, tuple)):
        value = {"labels": list(value)}
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {"threshold": value}
    if isinstance(value, dict) and not value.get("labels"):
        value = {**value, "labels": [str(name)]}
    return value
