"""MQTT: what the daemon hears, published to a broker, with Home Assistant discovery.

Topics (``BASE`` is ``mqtt.base_topic``/``device``; docs/mqtt.md):

- ``BASE/availability``: ``online`` once connected, ``offline`` on a clean stop and as
  the last will (the broker says it for us when the connection dies), retained.
- ``BASE/event``: one JSON message per finished event: ``event_type`` (the class, as
  Home Assistant's event entity wants it), ``class``, ``score``, ``start``/``end`` (Unix
  seconds), ``duration_s``, ``device``, ``profile``, and where there is one the clip's
  path, the file and offset of file sources, ``source: audioset`` for listen groups.
- ``BASE/state/CLASS``: ``ON`` while an event of the class lasts, ``OFF`` after; retained.
- ``BASE/level``: the window level (RMS dBFS, power mean over ``level_interval``).

Discovery (``mqtt.discovery``): retained configs under ``discovery_prefix`` make one
Home Assistant device per daemon with an ``event`` entity (the classes as event types), a
``binary_sensor`` (device class ``sound``) per class and a level ``sensor``. The link
subscribes to its own discovery topics, so a class that left the profile (a reload, or
an earlier run with another model) has its retained config cleared: its entity goes.

Nothing here ever makes the audio path wait: ``event``/``state``/``level`` put a message
on a bounded queue (the oldest is dropped when it is full, and counted) and return. A
thread of this module hands queued messages to paho while the broker is connected; paho's
own thread connects, reconnects with doubling waits (``mqtt.backoff``) and resends QoS 1
messages that were in flight when a connection dropped.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from typing import Callable, Dict, Iterable, List, Optional, Tuple

#: topic-safe form of a class or device name (Home Assistant ids allow [a-zA-Z0-9_-])
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


#: a discovery config larger than this is not one of ours (ours are a few hundred bytes)
MAX_CONFIG_BYTES = 16 * 1024


class MqttError(Exception):
    """MQTT settings that cannot be used (a missing password file, TLS files); the message names them."""


def slug(name: str) -> str:
    return _UNSAFE.sub("_", name) or "_"


def read_password(settings, source: str = "") -> Optional[str]:
    """The password from ``password_file`` (first line) or ``password_env``; None without a user."""
    if settings.username is None:
        return None
    if settings.password_file:
        from ..settings import read_small_file

        try:
            raw = read_small_file(os.path.expanduser(settings.password_file), 4096)
            return raw.decode("utf-8").splitlines()[0] if raw.strip() else ""
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise MqttError(f"mqtt.password_file {settings.password_file}: cannot read it ({why}); the password for "
                            f"user {settings.username!r} goes on the first line of a regular file") from None
    return os.environ.get(settings.password_env)


def credentials(client, s) -> None:
    """User, password (never from the profile text) and TLS of ``s`` on a paho client."""
    if s.username is not None:
        client.username_pw_set(s.username, read_password(s))
    if s.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(s, key)
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise MqttError(f"mqtt.{key}: {path} is not a file")
        try:
            client.tls_set(ca_certs=s.ca_file and os.path.expanduser(s.ca_file),
                           certfile=s.cert_file and os.path.expanduser(s.cert_file),
                           keyfile=s.key_file and os.path.expanduser(s.key_file))
        except (OSError, ValueError) as e:
            raise MqttError(f"mqtt TLS files cannot be used: {e}") from None


class Topics:
    """Every topic and discovery config of one daemon (device) and its classes."""

    def __init__(self, settings, device: str):
        self.s, self.device = settings, device
        self.base = f"{settings.base_topic}/{device}"
        self.availability = f"{self.base}/availability"
        self.event = f"{self.base}/event"
        self.level = f"{self.base}/level"
        self.node = f"edgeqmoe_{slug(device)}"

    def state(self, cls: str) -> str:
        return f"{self.base}/state/{slug(cls)}"

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.s.discovery_prefix}/{component}/{self.node}/{object_id}/config"

    @property
    def config_filter(self) -> str:
        return f"{self.s.discovery_prefix}/+/{self.node}/+/config"

    def discovery(self, classes: List[str], version: str) -> Dict[str, Dict]:
        """topic -> config, for Home Assistant's MQTT discovery."""
        device = {"identifiers": [self.node], "name": f"edgeqmoe {self.device}", "manufacturer": "edgeqmoe",
                  "model": "sound classifier", "sw_version": version}
        common = {"availability_topic": self.availability, "payload_available": "online",
                  "payload_not_available": "offline", "device": device}
        out = {self.config_topic("event", "sound"): {
            "name": "Sound event", "unique_id": f"{self.node}_event", "state_topic": self.event,
            "event_types": list(classes), **common}}
        out[self.config_topic("sensor", "level")] = {
            "name": "Sound level", "unique_id": f"{self.node}_level", "state_topic": self.level,
            "unit_of_measurement": "dBFS", "state_class": "measurement", "suggested_display_precision": 0,
            "expire_after": int(max(60, 3 * self.s.level_interval)), **common}
        for c in classes:
            out[self.config_topic("binary_sensor", slug(c))] = {
                "name": c.replace("_", " "), "unique_id": f"{self.node}_{slug(c)}", "state_topic": self.state(c),
                "device_class": "sound", "payload_on": "ON", "payload_off": "OFF", **common}
        return out


class MqttLink:
    """One connection to the broker for the daemon's lifetime (module doc)."""

    def __init__(self, settings, device: str, profile: str, classes: List[str],
                 say: Callable[..., None], echo: Callable[[str], None]):
        from .. import __version__

        self.s, self.device, self.profile = settings, device, profile
        self.topics = Topics(settings, device)
        self.version = __version__
        self.say, self.echo = say, echo
        self.port = settings.port or (8883 if settings.tls else 1883)
        self.target = f"mqtt{'s' if settings.tls else ''}://{settings.host}:{self.port}/{self.topics.base}"
        self.q: deque = deque()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.connected = threading.Event()
        self.dropped = 0
        self.published = 0
        self._states: Dict[str, str] = {}
        self._configs: Dict[str, Dict] = {}
        self._level: Optional[str] = None
        self._announce = False
        self._closing = False
        self._close_by = 0.0
        self._outage: Optional[dict] = None  # since when and how often the broker could not be reached
        self.set_classes(classes)
        self.client = self._client(settings)
        self._sender = threading.Thread(target=self._send_loop, name="edgeqmoe-mqtt", daemon=True)

    # ------------------------------------------------------------------ setup
    def _client(self, s):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id or f"edgeqmoe-{self.device}",
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.will_set(self.topics.availability, "offline", qos=1, retain=True)
        credentials(c, s)
        c.reconnect_delay_set(min_delay=max(1, int(round(s.backoff[0]))), max_delay=max(1, int(round(s.backoff[1]))))
        c.max_queued_messages_set(s.queue)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.suppress_exceptions = True  # a callback that raises anyway is logged by paho, and its thread lives on
        return c

    def start(self) -> "MqttLink":
        self.client.connect_async(self.s.host, self.port, keepalive=self.s.keepalive)
        self.client.loop_start()
        self._sender.start()
        return self

    # ------------------------------------------------------------------ the daemon's side (never waits)
    def set_classes(self, classes: Iterable[str]) -> None:
        """The classes reported (the model's and the listen groups); entities of classes
        that left are removed, new ones announced."""
        classes = list(dict.fromkeys(classes))
        unknown = [c for c in self.s.discovery_skip if c not in classes]
        if unknown:
            raise MqttError(f"mqtt.discovery_skip names {unknown}, which are not among the classes and listen groups "
                            f"({', '.join(classes)})")
        announced = [c for c in classes if c not in self.s.discovery_skip]
        configs = self.topics.discovery(announced, self.version) if self.s.discovery else {}
        with self.lock:
            gone = [t for t in self._configs if t not in configs]
            gone_states = [c for c in self._states if c not in classes]
            self._configs = configs
            self._states = {c: self._states.get(c, "OFF") for c in classes}
            self._announce = True
        for t in gone:
            self._put(t, b"", retain=True)
        for c in gone_states:
            self._put(self.topics.state(c), b"", retain=True)

    def state(self, cls: str, on: bool) -> None:
        value = "ON" if on else "OFF"
        with self.lock:
            if self._states.get(cls) == value:
                return
            self._states[cls] = value
        self._put(self.topics.state(cls), value.encode(), retain=True)

    def event(self, ev: Dict) -> None:
        self._put(self.topics.event, json.dumps(ev, separators=(",", ":")).encode(), retain=False)

    def level(self, dbfs: float) -> None:
        """Only the latest level waits for the broker: an old reading is worth nothing."""
        self._level = f"{dbfs:.1f}"
        self.wake.set()

    def stats(self) -> Dict:
        return {"mqtt_connected": self.connected.is_set(), "mqtt_queued": len(self.q),
                "mqtt_published_total": self.published, "mqtt_dropped_total": self.dropped}

    def _put(self, topic: str, payload: bytes, retain: bool) -> None:
        with self.lock:
            if len(self.q) >= self.s.queue:
                self.q.popleft()
                self.dropped += 1
            self.q.append((topic, payload, retain))
        self.wake.set()

    # ------------------------------------------------------------------ paho's thread
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._failed(f"refused: {reason_code}")
            return
        if self.s.discovery:
            client.subscribe(self.topics.config_filter, qos=1)
        with self.lock:
            self._announce = True
        outage, self._outage = self._outage, None
        self.connected.set()
        self.say("mqtt_connected", broker=self.target,
                 **({"after_s": round(time.monotonic() - outage["since"], 1), "failures": outage["n"]}
                    if outage else {}))
        if outage:
            self.echo(f"edgeqmoe: MQTT connected again to {self.target} after {time.monotonic() - outage['since']:.0f} s")
        self.wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if not self._closing:
            self._failed(f"connection lost: {reason_code}")

    def _on_connect_fail(self, client, userdata):
        import sys

        err = sys.exc_info()[1]  # paho calls this from inside its 'except OSError'
        self._failed(f"cannot connect: {err}" if err is not None else "cannot connect")

    def _failed(self, why: str) -> None:
        """Said once per outage (logs and terminal); the attempts are counted."""
        if self._outage is None:
            self._outage = {"since": time.monotonic(), "n": 0}
            self.say("mqtt_disconnected", broker=self.target, reason=why, queued=len(self.q))
            self.echo(f"edgeqmoe: MQTT broker {self.target}: {why}; still classifying and logging, up to "
                      f"{self.s.queue} messages kept, reconnecting every {self.s.backoff[0]:g}-{self.s.backoff[1]:g} s")
        self._outage["n"] += 1

    def _on_message(self, client, userdata, msg):
        """A retained discovery config of this device that the classes no longer have:
        clear it. Anyone can publish there: whatever the payload, nothing raised here
        reaches paho's thread (an exception would end it, and with it the link)."""
        try:
            if not msg.payload or msg.topic in self._configs:
                return
            self._put(msg.topic, b"", retain=True)
            state = self._state_topic_of(msg.payload)
            if state is not None:  # and its retained state, when it is one of this device's
                self._put(state, b"", retain=True)
        except Exception as e:  # noqa: BLE001 - a hostile or broken message is said, never fatal
            self.say("mqtt_message_ignored", topic=str(getattr(msg, "topic", ""))[:200],
                     reason=f"{type(e).__name__}: {str(e)[:200]}")

    def _state_topic_of(self, payload: bytes) -> Optional[str]:
        """The ``state_topic`` of a discovery config, when it is one of this device's
        state topics; None for anything else (too large, not JSON, nested too deep)."""
        if len(payload) > MAX_CONFIG_BYTES:
            return None
        try:
            cfg = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        state = cfg.get("state_topic") if isinstance(cfg, dict) else None
        if isinstance(state, str) and state.startswith(self.topics.base + "/state/"):
            return state
        return None

    # ------------------------------------------------------------------ the sender thread
    def _send_loop(self) -> None:
        while True:
            self.wake.wait(0.5)
            self.wake.clear()
            # closing while the first connection is still being made (a short run on a file):
            # wait for it, up to close()'s deadline, so that what was queued is delivered;
            # during an outage there is nothing to wait for
            if self._closing and not self.connected.is_set() and (
                    self._outage is not None or time.monotonic() >= self._close_by):
                return
            if not self.connected.is_set():
                continue
            if not self._drain():
                continue
            if self._closing:
                return

    def _drain(self) -> bool:
        """Publish what is waiting; False when the connection went while doing it."""
        import paho.mqtt.client as mqtt

        with self.lock:
            announce, self._announce = self._announce, False
            first: List[Tuple[str, bytes, bool]] = []
            if announce:  # configs first, then the states, then 'online' (Home Assistant's order)
                first += [(t, json.dumps(c, separators=(",", ":")).encode(), True) for t, c in self._configs.items()]
                first += [(self.topics.state(c), v.encode(), True) for c, v in self._states.items()]
                first.append((self.topics.availability, b"online", True))
        for topic, payload, retain in first:
            if not self._publish(topic, payload, retain, mqtt):
                with self.lock:
                    self._announce = True
                return False
        while True:
            with self.lock:
                if not self.q:
                    break
                topic, payload, retain = self.q[0]
            if not self._publish(topic, payload, retain, mqtt):
                return False
            with self.lock:
                if self.q and self.q[0][0] == topic and self.q[0][1] is payload:
                    self.q.popleft()
        level, self._level = self._level, None
        if level is not None:
            self.client.publish(self.topics.level, level, qos=0)
        return True

    def _publish(self, topic: str, payload: bytes, retain: bool, mqtt) -> bool:
        """Hand one message to paho; False (nothing handed) when the connection is down.
        A QoS 1 message handed over just before a drop is kept by paho and resent."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # paho's own store is full: this message is lost
            self.dropped += 1
        else:
            self.published += 1
        return True

    # ------------------------------------------------------------------ stop
    def close(self, timeout: float = 3.0) -> None:
        """Send what is waiting (for up to ``timeout``), say offline, disconnect."""
        deadline = time.monotonic() + timeout
        self._close_by = deadline
        self._closing = True
        self.wake.set()
        self._sender.join(max(0.0, deadline - time.monotonic()))
        if self.connected.is_set():
            states = [(self.topics.state(c), b"OFF") for c, v in self._states.items() if v == "ON"]
            infos = [self.client.publish(t, p, qos=1, retain=True) for t, p in states]
            infos.append(self.client.publish(self.topics.availability, "offline", qos=1, retain=True))
            for info in infos:
                try:
                    info.wait_for_publish(max(0.05, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    break
        with self.lock:
            unsent = len(self.q)
            self.q.clear()
        if unsent:  # the broker could not take them in time: counted and said, not lost silently
            self.dropped += unsent
            self.say("mqtt_unsent", count=unsent, dropped_total=self.dropped,
                     reason="still queued when the daemon stopped")
        self.client.disconnect()
        # paho's thread may be inside a connect attempt (up to its 5 s timeout): a stop
        # does not wait for it longer than asked; the thread is a daemon thread
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))


def check(settings, device: str, timeout: float = 10.0) -> str:
    """Connect once with the profile's settings (TLS, user, password), subscribe to
    nothing, publish nothing; returns how it went, raises MqttError when it cannot."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    port = settings.port or (8883 if settings.tls else 1883)
    target = f"mqtt{'s' if settings.tls else ''}://{settings.host}:{port}"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.client_id or 'edgeqmoe-' + device}-check",
                    protocol=mqtt.MQTTv311, clean_session=True)
    credentials(c, settings)
    done, result = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        done.set()

    c.on_connect = on_connect
    t0 = time.monotonic()
    try:
        c.connect(settings.host, port, keepalive=settings.keepalive)
    except OSError as e:
        raise MqttError(f"{target}: cannot connect: {e}") from None
    c.loop_start()
    try:
        if not done.wait(timeout):
            raise MqttError(f"{target}: no answer to CONNECT within {timeout:g} s")
        rc = result["rc"]
        if rc.is_failure:
            raise MqttError(f"{target}: the broker refused: {rc}")
        return (f"{target}: connected as {settings.username or 'anonymous'} in "
                f"{(time.monotonic() - t0) * 1e3:.0f} ms; topics would be {settings.base_topic}/{device}/...")
    finally:
        c.disconnect()
        c.loop_stop()
