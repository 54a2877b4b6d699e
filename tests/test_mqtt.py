"""MQTT against a real broker: mosquitto (Debian's), started here on a free local port,
and a real paho subscriber reading what the daemon publishes."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgeqmoe.daemon.sinks import read_jsonl

from conftest import IN_CI, US8K
from helpers import run_cli

PY = sys.executable
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)

# Home Assistant's MQTT discovery schema for the three entity types published
# (home-assistant.io/integrations/event.mqtt, binary_sensor.mqtt, sensor.mqtt; keys in full form)
HA_COMMON = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
             "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon", "json_attributes_template",
             "json_attributes_topic", "name", "object_id", "default_entity_id", "payload_available",
             "payload_not_available", "platform", "qos", "unique_id", "value_template"}
HA_SCHEMA = {
    "event": {"required": {"state_topic", "event_types"}, "optional": HA_COMMON | {"device_class"},
              "device_class": {"button", "doorbell", "motion"}},
    "binary_sensor": {"required": {"state_topic"},
                      "optional": HA_COMMON | {"device_class", "expire_after", "force_update", "off_delay",
                                               "payload_off", "payload_on"},
                      "device_class": {"battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
                                       "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
                                       "occupancy", "opening", "plug", "power", "presence", "problem", "running",
                                       "safety", "smoke", "sound", "tamper", "update", "vibration", "window"}},
    "sensor": {"required": {"state_topic"},
               "optional": HA_COMMON | {"device_class", "expire_after", "force_update", "last_reset_value_template",
                                        "options", "suggested_display_precision", "state_class",
                                        "unit_of_measurement"},
               "state_class": {"measurement", "measurement_angle", "total", "total_increasing"}},
}
HA_DEVICE = {"identifiers", "connections", "configuration_url", "hw_version", "manufacturer", "model", "model_id",
             "name", "serial_number", "suggested_area", "sw_version", "via_device"}
TOPIC_ID = re.compile(r"[a-zA-Z0-9_-]+")


def check_discovery(topic: str, payload: bytes, prefix: str = "homeassistant") -> tuple:
    """A retained discovery message as Home Assistant documents it; returns (component, config)."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == prefix and parts[4] == "config", topic
    component, node, obj = parts[1:4]
    assert component in HA_SCHEMA and TOPIC_ID.fullmatch(node) and TOPIC_ID.fullmatch(obj), topic
    cfg = json.loads(payload)
    schema = HA_SCHEMA[component]
    assert schema["required"] <= set(cfg), (topic, schema["required"] - set(cfg))
    assert set(cfg) <= schema["required"] | schema["optional"], (topic, set(cfg) - schema["required"] - schema["optional"])
    for k in ("state_topic", "availability_topic"):
        if k in cfg:
            assert isinstance(cfg[k], str) and cfg[k] and not set("+#") & set(cfg[k]), (topic, k)
    if "device_class" in cfg:
        assert cfg["device_class"] in schema["device_class"], (topic, cfg["device_class"])
    if "state_class" in cfg:
        assert cfg["state_class"] in schema["state_class"]
    if "expire_after" in cfg:
        assert isinstance(cfg["expire_after"], int) and cfg["expire_after"] > 0
    if component == "event":
        assert cfg["event_types"] and all(isinstance(e, str) and e for e in cfg["event_types"])
    if "device" in cfg:  # the device registry only works with unique_id, and needs identifiers or connections
        assert isinstance(cfg.get("unique_id"), str) and cfg["unique_id"]
        assert set(cfg["device"]) <= HA_DEVICE and ({"identifiers", "connections"} & set(cfg["device"]))
    return component, cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:port, in a folder of its own."""

    def __init__(self, folder, extra: str = "", persistence: bool = False):
        if MOSQUITTO is None:
            if IN_CI:
                pytest.fail("CI must install mosquitto (tools/setup.sh --dev)")
            pytest.skip("mosquitto not installed")
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true" if "password_file" not in extra else "",
                 extra]
        if persistence:
            lines += ["persistence true", f"persistence_location {folder}/"]
        if os.geteuid() == 0:  # mosquitto started by root would switch to its own user, who cannot read our files
            lines.append("user root")
        self.conf.write_text("\n".join(x for x in lines if x) + "\n")
        self.proc = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "mosquitto.log", "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start listening")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


class Subscriber:
    """A real MQTT client on '#', keeping (time, topic, payload, retained) of every message."""

    def __init__(self, port: int, client_id: str = "", persistent: bool = False, auth=None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.msgs = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        if auth:
            self.c.username_pw_set(*auth)
        self.c.reconnect_delay_set(1, 1)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.wait(lambda: self.c.is_connected(), "subscriber connected")

    def _on_message(self, c, u, m):
        with self.lock:
            self.msgs.append((time.monotonic(), m.topic, bytes(m.payload), bool(m.retain)))

    def on(self, topic: str):
        with self.lock:
            return [(p, r) for _, t, p, r in self.msgs if t == topic]

    def wait(self, cond, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"waited {timeout:.0f} s for {what}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()




def dog_and_speech(folder):
    espeak = shutil.which("espeak-ng")
    if not espeak:
        if IN_CI:
            pytest.fail("CI must have espeak-ng (tools/setup.sh --dev)")
        pytest.skip("espeak-ng not installed")
    folder.mkdir()
    shutil.copy(os.path.join(US8K, "fold1", "101415-3-0-2.flac"), folder / "a-dog.flac")
    subprocess.run([espeak, "-v", "en", "-w", str(folder / "b-speech.wav"),
                    "Good morning. This is only people talking in the kitchen, nothing to report."],
                   check=True, timeout=60)
    return folder


def mn04_profile(path, port, listen: bool = True, extra: str = "") -> str:
    path.write_text(
        "version: 1\nmodel: {bundle: stable.eqm}\naudio: {window: 2.0, hop: 1.0}\ndevice: pi-garden\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, level_interval: 0.5, backoff: [1, 1]}}\n"
        "clips: {enabled: true}\nlogging: {flush_interval: 0}\n"
        + ("listen: {speech: [Speech]}\n" if listen else "") + extra)
    return str(path)


def test_events_states_level_and_discovery_reach_a_real_subscriber(tmp_path, broker, weights_dir, us8k):
    """A run on a real dog bark and espeak-ng speech: discovery configs valid under Home
    Assistant's schema, state ON then OFF, one event message per event record with the
    clip's path (the speech event's clip withheld), level readings, online then offline;
    a later run without the speech group removes its entity."""
    rec = dog_and_speech(tmp_path / "rec")
    sub = Subscriber(broker.port)
    logs = tmp_path / "logs"
    prof = mn04_profile(tmp_path / "p.yaml", broker.port)
    r = run_cli(["run", "--profile", prof, "--source", f"dir:{rec}", "--fast", "--log-dir", str(logs)])
    assert r.returncode == 0, r.stderr
    assert "MQTT to mqtt://127.0.0.1" in r.stderr
    base = "edgeqmoe/pi-garden"
    sub.wait(lambda: (b"offline", False) in sub.on(f"{base}/availability"), "availability offline")
    sub.close()

    start = next(d for d in read_jsonl(logs / "daemon.jsonl") if d["event"] == "start")
    classes = start["classes"] + ["speech"]
    configs = {t: p for _, t, p, _ in sub.msgs if t.startswith("homeassistant/")}
    checked = dict(check_discovery(t, p) for t, p in configs.items())
    assert len(configs) == len(classes) + 2 and set(checked) == {"event", "binary_sensor", "sensor"}
    assert checked["event"]["event_types"] == classes and checked["sensor"]["unit_of_measurement"] == "dBFS"
    binary = [json.loads(p) for t, p in configs.items() if "/binary_sensor/" in t]
    assert sorted(c["state_topic"] for c in binary) == sorted(f"{base}/state/{c}" for c in classes)
    assert {c["device"]["identifiers"][0] for c in map(json.loads, configs.values())} == {"edgeqmoe_pi-garden"}
    # Home Assistant's order: configs, then states, then 'online'
    order = [t for _, t, _, _ in sub.msgs]
    online = order.index(f"{base}/availability")
    assert max(order.index(t) for t in configs) < online and order.index(f"{base}/state/dog_bark") < online

    states = [p for p, _ in sub.on(f"{base}/state/dog_bark")]
    states = [p for i, p in enumerate(states) if i == 0 or p != states[i - 1]]
    assert states[-2:] == [b"ON", b"OFF"] and len(states) <= 3, states
    assert [p for p, _ in sub.on(f"{base}/availability")] == [b"online", b"offline"]
    events = [json.loads(p) for p, _ in sub.on(f"{base}/event")]
    records = list(read_jsonl(logs / "events.jsonl"))
    assert [e["class"] for e in events] == [e["class"] for e in records] == ["dog_bark", "speech"]
    dog, speech = events
    assert dog["event_type"] == "dog_bark" and dog["device"] == "pi-garden" and dog["profile"] == "p"
    assert dog["file"].endswith("a-dog.flac") and dog["offset_s"] == 0.0 and dog["end"] > dog["start"]
    assert os.path.isfile(dog["clip"]) and dog["clip"].endswith("_dog_bark.flac")
    assert "clip" not in speech and "speech" in speech["clip_withheld"] and speech["source"] == "audioset"
    levels = [float(p) for p, _ in sub.on(f"{base}/level")]
    assert levels and all(-200 <= v <= 0 for v in levels)
    stats = list(read_jsonl(logs / "stats.jsonl"))[-1]
    assert stats["mqtt_dropped_total"] == 0 and stats["mqtt_published_total"] > len(configs)
    print(f"\nsubscriber received {len(sub.msgs)} messages: {len(configs)} discovery configs, "
          f"{len(events)} events {[(e['class'], round(e['score'], 3)) for e in events]}, "
          f"{len(levels)} levels ({min(levels):.1f}..{max(levels):.1f} dBFS), dog_bark states "
          f"{[p.decode() for p, _ in sub.on(f'{base}/state/dog_bark')]}")

    # retained: what Home Assistant finds when it (re)starts; then the speech group leaves
    later = Subscriber(broker.port)
    later.wait(lambda: later.on(f"{base}/availability"), "retained availability")
    assert later.on(f"{base}/availability") == [(b"offline", True)]
    later.wait(lambda: len([1 for _, t, _, _ in later.msgs if t.startswith("homeassistant/")]) == len(configs),
               "retained configs")
    later.close()
    prof2 = mn04_profile(tmp_path / "p.yaml", broker.port, listen=False)
    r = run_cli(["run", "--profile", prof2, "--source", f"file:{rec / 'a-dog.flac'}", "--fast", "--log-dir",
                 str(tmp_path / "logs2")])
    assert r.returncode == 0, r.stderr
    after = Subscriber(broker.port)
    after.wait(lambda: after.on(f"{base}/availability"), "retained availability")
    time.sleep(0.5)  # the broker sends every retained message at subscription time
    retained = {t for _, t, p, r in after.msgs if r and p}
    after.close()
    assert "homeassistant/binary_sensor/edgeqmoe_pi-garden/speech/config" not in retained
    assert f"{base}/state/speech" not in retained
    assert "homeassistant/binary_sensor/edgeqmoe_pi-garden/dog_bark/config" in retained
    assert len([t for t in retained if t.startswith("homeassistant/")]) == len(configs) - 1


def _wait_log(path, event, n=1, timeout=120.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in read_jsonl(path) if d.get("event") == event] if os.path.exists(path) else []
        if len(found) >= n:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the daemon ended before {event!r} x{n}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} x{n} in {path} after {timeout:.0f} s")


def test_broker_killed_and_restarted_mid_run_loses_no_window(tmp_path, weights_dir, us8k):
    """The broker goes away while the daemon listens (real time) and comes back: every
    window is in the log, exactly as in a run without MQTT; the outage and the reconnect
    are logged; a persistent subscriber gets every event record as a message."""
    broker = Broker(tmp_path / "broker", persistence=True).start()
    src = tmp_path / "rec"
    src.mkdir()
    for i, name in enumerate(("101415-3-0-2.flac", "101415-3-0-3.flac", "101415-3-0-8.flac", "102106-3-0-0.flac",
                              "103074-7-0-0.flac", "103074-7-1-0.flac")):
        shutil.copy(os.path.join(US8K, "fold1", name), src / f"{i}-{name}")
    sub = Subscriber(broker.port, client_id="test-subscriber", persistent=True)
    logs = tmp_path / "logs"
    prof = mn04_profile(tmp_path / "p.yaml", broker.port, listen=False)
    d = logs / "daemon.jsonl"
    proc = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", prof, "--source", f"dir:{src}",
                             "--realtime", "--log-dir", str(logs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_log(d, "source_open", proc=proc)
        _wait_log(d, "mqtt_connected", proc=proc)
        broker.stop(signal.SIGTERM)
        down = _wait_log(d, "mqtt_disconnected", proc=proc)[0]
        time.sleep(6.0)  # longer than a file (4 s): at least one event ends while it is away
        broker.start()
        up = _wait_log(d, "mqtt_connected", n=2, proc=proc)[1]
        assert proc.wait(300) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    base = "edgeqmoe/pi-garden"
    sub.wait(lambda: (b"offline", False) in sub.on(f"{base}/availability"), "availability offline")
    sub.close()
    broker.stop()

    # the same folder with no MQTT at all, as fast as it goes: the same windows
    ref = tmp_path / "ref"
    r = run_cli(["run", "--profile", "stable", "--source", f"dir:{src}", "--fast", "--log-dir", str(ref)])
    assert r.returncode == 0, r.stderr
    got = [(w["fi"], w["fo"]) for w in read_jsonl(logs / "windows.jsonl")]
    want = [(w["fi"], w["fo"]) for w in read_jsonl(ref / "windows.jsonl")]
    assert got == want and len(got) == 18
    assert "connection lost" in down["reason"] and up["failures"] >= 1 and up["after_s"] > 0
    from edgeqmoe.inspect.logs import format_summary, summary

    s = summary(logs)
    assert s["mqtt"]["outages"] == 1 and s["mqtt"]["longest_outage_s"] == up["after_s"] and s["mqtt"]["dropped"] == 0
    assert s["mqtt"]["published"] > 0 and "1 outage(s)" in format_summary(s)
    records = list(read_jsonl(logs / "events.jsonl"))
    events = [json.loads(p) for p, _ in sub.on(f"{base}/event")]
    assert sorted((e["class"], e["file"]) for e in events) == sorted((e["class"], e["file"]) for e in records)
    during = [e for e in records if down["t_wall"] <= e["t_wall"] <= up["t_wall"]]
    assert during, "no event ended while the broker was away"
    stats = list(read_jsonl(logs / "stats.jsonl"))[-1]
    assert stats["mqtt_dropped_total"] == 0
    print(f"\nbroker away {up['after_s']} s ({up['failures']} failed attempts); {len(got)} windows logged as in "
          f"the run without MQTT; {len(records)} events, {len(during)} of them while it was away, all "
          f"{len(events)} received by the subscriber; {stats['mqtt_published_total']} messages published")


WEIGHTFREE = "version: 1\nmodel: {bundle: balanced-weightfree.eqm}\naudio: {window: 2.0, hop: 1.0}\n"


def test_no_broker_bounded_queue_credentials_and_secrets(tmp_path, us8k):
    """Nobody listening on the port: the run is whole, the outage said once, the queue
    held at its bound. A password is read from the environment (never the profile) and
    a broker that wants it lets the daemon in; a wrong one is refused and said."""
    src = os.path.join(US8K, "fold1", "101415-3-0-2.flac")
    prof = tmp_path / "p.yaml"
    prof.write_text(WEIGHTFREE + f"mqtt: {{host: 127.0.0.1, port: {free_port()}, queue: 10, backoff: [1, 2]}}\n"
                    "logging: {stats_interval: 1}\n")
    r = run_cli(["run", "--profile", str(prof), "--source", f"file:{src}", "--fast", "--log-dir", str(tmp_path / "a")])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("still classifying and logging") == 1, r.stderr
    ds = list(read_jsonl(tmp_path / "a" / "daemon.jsonl"))
    assert [d["event"] for d in ds].count("mqtt_disconnected") == 1
    stats = list(read_jsonl(tmp_path / "a" / "stats.jsonl"))[-1]
    assert stats["mqtt_connected"] is False and stats["mqtt_queued"] <= 10
    assert len(list(read_jsonl(tmp_path / "a" / "windows.jsonl"))) == 3

    # a password in the profile text is refused with what to do instead
    bad = tmp_path / "secret.yaml"
    bad.write_text(WEIGHTFREE + "mqtt: {host: 127.0.0.1, username: u, password: hunter2}\n")
    r = run_cli(["run", "--profile", str(bad), "--source", f"file:{src}", "--fast", "--log-dir", str(tmp_path / "b")])
    assert r.returncode == 2 and "mqtt.password" in r.stderr and "EDGEQMOE_MQTT_PASSWORD" in r.stderr

    # a password file that is not there: exit 2 before anything runs, naming it
    bad.write_text(WEIGHTFREE + f"mqtt: {{host: 127.0.0.1, username: u, password_file: {tmp_path / 'nope'}}}\n")
    r = run_cli(["run", "--profile", str(bad), "--source", f"file:{src}", "--fast", "--log-dir", str(tmp_path / "c")])
    assert r.returncode == 2 and "mqtt.password_file" in r.stderr and str(tmp_path / "nope") in r.stderr, r.stderr

    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pw_file = tmp_path / "broker-users"
    subprocess.run([passwd, "-b", "-c", str(pw_file), "edge", "s3cret pass"], check=True, timeout=30,
                   capture_output=True)
    os.chmod(pw_file, 0o600)
    b = Broker(tmp_path / "auth", extra=f"allow_anonymous false\npassword_file {pw_file}").start()
    try:
        for password, ok in (("s3cret pass", True), ("wrong", False)):
            prof.write_text(WEIGHTFREE + f"mqtt: {{host: 127.0.0.1, port: {b.port}, username: edge}}\n")
            out = tmp_path / f"auth-{ok}"
            r = subprocess.run([PY, "-m", "edgeqmoe.cli", "run", "--profile", str(prof), "--source", f"file:{src}",
                                "--fast", "--log-dir", str(out)], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "EDGEQMOE_MQTT_PASSWORD": password})
            assert r.returncode == 0, r.stderr
            said = [d["event"] for d in read_jsonl(out / "daemon.jsonl") if d["event"].startswith("mqtt")]
            assert ("mqtt_connected" in said) == ok, said
            if not ok:
                why = next(d for d in read_jsonl(out / "daemon.jsonl") if d["event"] == "mqtt_disconnected")["reason"]
                assert "refused" in why and "authori" in why.lower(), why
    finally:
        b.stop()


def test_the_queue_is_bounded_and_never_waits(tmp_path):
    """With no broker, 50 events queue 10 (the setting) and count 40 as dropped; the
    calls return at once (nothing in the audio path waits on the network)."""
    from edgeqmoe.daemon.mqtt import MqttLink
    from edgeqmoe.daemon.profiles import MqttSettings

    said = []
    link = MqttLink(MqttSettings(host="127.0.0.1", port=free_port(), queue=10), "test", "p", ["dog_bark"],
                    lambda event, **f: said.append(event), lambda msg: None).start()
    try:
        t0 = time.perf_counter()
        for i in range(50):
            link.event({"event_type": "dog_bark", "i": i})
        spent = time.perf_counter() - t0
        assert len(link.q) == 10 and link.dropped == 40
        assert [json.loads(p)["i"] for _, p, _ in link.q] == list(range(40, 50))  # the newest are kept
        link.level(-30.0)
        print(f"\n50 events queued in {spent * 1e3:.2f} ms with no broker")
    finally:
        link.close(timeout=1.0)


def test_discovery_ids_are_safe_for_any_class_name():
    from edgeqmoe.daemon.mqtt import Topics
    from edgeqmoe.daemon.profiles import MqttSettings

    t = Topics(MqttSettings(host="x"), "pi.garden-2")
    for topic, cfg in t.discovery(["dog_bark", "Glass, breaking/2", "café"], "0").items():
        check_discovery(topic, json.dumps(cfg).encode())
        assert "+" not in cfg["state_topic"] and "#" not in cfg["state_topic"]


def _openssl(*args, cwd):
    openssl = shutil.which("openssl")
    if not openssl:
        if IN_CI:
            pytest.fail("CI must have openssl (tools/setup.sh --dev)")
        pytest.skip("openssl not installed")
    subprocess.run([openssl, *args], cwd=cwd, check=True, timeout=60, capture_output=True)


def test_tls_to_a_broker_with_its_own_ca(tmp_path, us8k):
    """mosquitto serving TLS with a certificate of a CA made here: the daemon trusting
    that CA (mqtt.ca_file) connects over TLS; trusting another CA, it says why it cannot
    and runs to the end all the same."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=edgeqmoe test {ca}", cwd=certs)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=certs)
    b = Broker(tmp_path / "tls", extra=f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
                                       f"keyfile {certs / 'server.key'}").start()
    src = os.path.join(US8K, "fold1", "101415-3-0-2.flac")
    try:
        for ca, ok in (("ca.crt", True), ("other-ca.crt", False)):
            prof = tmp_path / "p.yaml"
            prof.write_text(WEIGHTFREE + f"mqtt: {{host: 127.0.0.1, port: {b.port}, tls: true, "
                                         f"ca_file: {certs / ca}}}\n")
            out = tmp_path / f"tls-{ok}"
            r = run_cli(["run", "--profile", str(prof), "--source", f"file:{src}", "--fast", "--log-dir", str(out)])
            assert r.returncode == 0, r.stderr
            assert f"MQTT to mqtts://127.0.0.1:{b.port}/" in r.stderr
            ds = list(read_jsonl(out / "daemon.jsonl"))
            said = [d["event"] for d in ds if d["event"].startswith("mqtt")]
            assert ("mqtt_connected" in said) == ok, said
            if not ok:
                why = next(d for d in ds if d["event"] == "mqtt_disconnected")["reason"]
                print(f"\nwith the wrong CA: {why}")
            assert len(list(read_jsonl(out / "windows.jsonl"))) == 3
    finally:
        b.stop()


def test_live_microphone_to_clip_and_home_assistant(tmp_path, broker, virtual_mic, weights_dir, us8k):
    """The whole path, live: a dog bark played into the virtual microphone, the daemon
    listening (stable profile, clips on, MQTT on): the subscriber gets the dog_bark
    state ON and OFF and an event message naming a FLAC clip that holds the bark."""
    import soundfile as sf

    env = {**os.environ, **virtual_mic}
    sub = Subscriber(broker.port)
    logs = tmp_path / "logs"
    prof = mn04_profile(tmp_path / "p.yaml", broker.port, listen=False)
    proc = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", prof, "--log-dir", str(logs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    base = "edgeqmoe/pi-garden"
    try:
        _wait_log(logs / "daemon.jsonl", "source_open", proc=proc)
        sub.wait(lambda: (b"online", False) in sub.on(f"{base}/availability"), "online")
        time.sleep(1.0)
        subprocess.run(["paplay", "--device=edgeqmoe_sink", "--latency-msec=20",
                        os.path.join(US8K, "fold1", "101415-3-0-2.flac")], env=env, check=True, timeout=30)
        sub.wait(lambda: sub.on(f"{base}/event"), "the event message", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()
    sub.wait(lambda: (b"offline", False) in sub.on(f"{base}/availability"), "offline")
    sub.close()
    events = [json.loads(p) for p, _ in sub.on(f"{base}/event")]
    dogs = [e for e in events if e["class"] == "dog_bark"]
    assert dogs and b"ON" in [p for p, _ in sub.on(f"{base}/state/dog_bark")], events
    clip = dogs[0]["clip"]
    info = sf.info(clip)
    assert info.format == "FLAC" and info.samplerate == 16000 and 2.0 <= info.duration <= 8.0, info
    audio, _ = sf.read(clip, dtype="float32")
    level = 10 * np.log10(np.mean(audio ** 2) + 1e-20)
    print(f"\nlive: {len(events)} event message(s) {[(e['class'], e['score']) for e in events]}; clip "
          f"{os.path.basename(clip)} {info.duration:.2f} s at {level:.1f} dBFS RMS")
    assert level > -40  # the bark, not silence


def test_a_reload_that_drops_a_listen_group_removes_its_entity(tmp_path, broker, weights_dir, us8k):
    """The profile loses its 'speech' group while the daemon runs: after the reload the
    group's retained discovery config and state are cleared and the event entity's
    types no longer name it."""
    src = tmp_path / "rec"
    src.mkdir()
    for name in ("101415-3-0-2.flac", "101415-3-0-3.flac", "101415-3-0-8.flac"):
        shutil.copy(os.path.join(US8K, "fold1", name), src / name)
    logs = tmp_path / "logs"
    prof = mn04_profile(tmp_path / "p.yaml", broker.port)
    proc = subprocess.Popen([PY, "-m", "edgeqmoe.cli", "run", "--profile", prof, "--source", f"dir:{src}",
                             "--realtime", "--log-dir", str(logs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    speech_cfg = "homeassistant/binary_sensor/edgeqmoe_pi-garden/speech/config"
    event_cfg = "homeassistant/event/edgeqmoe_pi-garden/sound/config"
    sub = Subscriber(broker.port)
    try:
        sub.wait(lambda: any(p for p, _ in sub.on(speech_cfg)), "the speech entity")
        mn04_profile(tmp_path / "p.yaml", broker.port, listen=False)  # saved: the daemon reloads it
        _wait_log(logs / "daemon.jsonl", "reload", proc=proc)
        sub.wait(lambda: sub.on(speech_cfg)[-1][0] == b"", "the speech entity removed")
        assert proc.wait(120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    sub.close()
    types = json.loads([p for p, _ in sub.on(event_cfg) if p][-1])["event_types"]
    assert "speech" not in types and "dog_bark" in types
    assert sub.on("edgeqmoe/pi-garden/state/speech")[-1][0] == b""


def test_mqtt_check_says_whether_the_broker_lets_us_in(tmp_path):
    """`edgeqmoe mqtt check`: connected (with the password from the environment), refused
    (a wrong one), and nobody listening, each said in one line; nothing is published."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pw_file = tmp_path / "users"
    subprocess.run([passwd, "-b", "-c", str(pw_file), "edge", "right"], check=True, timeout=30, capture_output=True)
    os.chmod(pw_file, 0o600)
    b = Broker(tmp_path / "auth", extra=f"allow_anonymous false\npassword_file {pw_file}").start()
    try:
        prof = tmp_path / "p.yaml"
        prof.write_text(WEIGHTFREE + f"device: shed\nmqtt: {{host: 127.0.0.1, port: {b.port}, username: edge}}\n")
        for password, code, said in (("right", 0, "connected as edge"), ("wrong", 2, "refused")):
            r = subprocess.run([PY, "-m", "edgeqmoe.cli", "mqtt", "check", "-p", str(prof)], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "EDGEQMOE_MQTT_PASSWORD": password})
            assert r.returncode == code and said in (r.stdout + r.stderr), r.stdout + r.stderr
        assert "edgeqmoe/shed/" in subprocess.run([PY, "-m", "edgeqmoe.cli", "mqtt", "check", "-p", str(prof)],
                                                  capture_output=True, text=True, timeout=120,
                                                  env={**os.environ, "EDGEQMOE_MQTT_PASSWORD": "right"}).stdout
        sub = Subscriber(b.port, auth=("edge", "right"))
        time.sleep(0.5)  # a retained message would arrive at once
        sub.close()
        assert sub.msgs == []
    finally:
        b.stop()
    prof.write_text(WEIGHTFREE + f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}\n")
    r = run_cli(["mqtt", "check", "-p", str(prof), "--timeout", "3"])
    assert r.returncode == 2 and "cannot connect" in r.stderr, r.stderr
