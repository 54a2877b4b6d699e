"""The daemon's Prometheus metrics, each named, typed and described once (``METRICS``):
an optional HTTP endpoint (``metrics.http_port`` of a profile; prometheus_client serves it
from a thread of its own, the window loop only increments numbers) and the textfile
``edgeqmoe.prom`` that every run writes for node_exporter (``write_textfile``). A counter
is ``NAME_total`` in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

#: upper bounds of the window-time histogram, seconds (a window takes ms on a laptop,
#: tens of ms on a Pi; a hop is 0.5-1 s)
WINDOW_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


#: name (without the edgeqmoe_ prefix) -> (type, help); counters are exposed as NAME_total
METRICS = {
    "windows": ("counter", "Windows classified since start (quiet ones included)."),
    "events": ("counter", "Events that ended, by class (listen: groups too)."),
    "dropped_samples": ("counter", "Audio samples that did not fit the ring buffer."),
    "deadline_misses": ("counter", "Windows that took longer than the hop."),
    "window_seconds": ("histogram", "Time to process one window."),
    "capture_lag_seconds": ("gauge", "Largest capture lag in the last stats interval."),
    "rss_bytes": ("gauge", "Resident memory."),
    "stage_seconds": ("gauge", "Per-window stage latency quantiles over the last stats interval."),
    "power_watts": ("gauge", "Average power over the last stats interval."),
}


def metric_name(key: str) -> str:
    """The exposed name of ``METRICS[key]``."""
    return f"edgeqmoe_{key}" + ("_total" if METRICS[key][0] == "counter" else "")


class Metrics:
    def __init__(self, host: str, port: int):
        from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

        self.registry = CollectorRegistry()  # one per daemon: nothing global

        def make(kind, key, **kw):  # prometheus_client adds _total to a counter itself
            return kind(f"edgeqmoe_{key}", METRICS[key][1], registry=self.registry, **kw)

        self.windows = make(Counter, "windows")
        self.events = make(Counter, "events", labelnames=["class"])
        self.dropped = make(Counter, "dropped_samples")
        self.misses = make(Counter, "deadline_misses")
        self.window_seconds = make(Histogram, "window_seconds", buckets=WINDOW_BUCKETS)
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.url = f"http://{host}:{self.server.server_port}/metrics"
        self._dropped_seen = 0

    def window(self, seconds: float, missed: bool, dropped_total: int) -> None:
        self.windows.inc()
        self.window_seconds.observe(seconds)
        if missed:
            self.misses.inc()
        if dropped_total > self._dropped_seen:  # the ring's count restarts when a device is reopened
            self.dropped.inc(dropped_total - self._dropped_seen)
        self._dropped_seen = dropped_total

    def event(self, name: str) -> None:
        self.events.labels(name).inc()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_textfile(path: Path, rec: Dict, totals: Dict[str, float]) -> None:
    """node_exporter's textfile-collector format, replaced atomically: the running
    totals (``totals``: windows, deadline_misses, dropped_samples) and the gauges of the
    stats record ``rec``."""
    from .sinks import replace_file

    lines = []

    def put(key, samples):
        name = metric_name(key)
        lines.extend([f"# HELP {name} {METRICS[key][1]}", f"# TYPE {name} {METRICS[key][0]}"])
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    for key in ("windows", "deadline_misses", "dropped_samples"):
        put(key, [("", totals[key])])
    put("capture_lag_seconds", [("", rec["capture_lag_ms_max"] / 1e3)])
    put("rss_bytes", [("", int(rec["rss_mb"] * 2**20))])
    put("stage_seconds", [(f'{{stage="{stage}",quantile="0.{q[1:]}"}}', v / 1e3)
                          for stage, qs in rec["stages_ms"].items() for q, v in qs.items() if q.startswith("p")])
    if rec.get("power_w") is not None:
        put("power_watts", [(f'{{method="{rec.get("power_method")}"}}', rec["power_w"])])
    replace_file(path, ("\n".join(lines) + "\n").encode())


def start(settings) -> Optional[Metrics]:
    """The endpoint of a profile's ``metrics`` section, or None when it is off."""
    if settings.http_port is None:
        return None
    try:
        return Metrics(settings.http_host, settings.http_port)
    except OSError as e:
        raise OSError(f"metrics endpoint {settings.http_host}:{settings.http_port} cannot listen ({e.strerror}); "
                      "choose another metrics.http_port, or null to turn it off") from None
