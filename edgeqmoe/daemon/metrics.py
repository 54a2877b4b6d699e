"""An optional HTTP endpoint for Prometheus (``metrics.http_port`` of a profile), beside
the textfile that every run writes: counters of windows, events per class, dropped audio
and deadline misses, and a histogram of the time each window took. prometheus_client
serves it from a thread of its own; the window loop only increments numbers.
"""

from __future__ import annotations

from typing import Optional

#: upper bounds of the window-time histogram, seconds (a window takes ms on a laptop,
#: tens of ms on a Pi; a hop is 0.5-1 s)
WINDOW_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Metrics:
    def __init__(self, host: str, port: int):
        from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

        self.registry = CollectorRegistry()  # one per daemon: nothing global
        self.windows = Counter("edgeqmoe_windows", "Windows classified (quiet ones included).",
                               registry=self.registry)
        self.events = Counter("edgeqmoe_events", "Events that ended, by class (listen: groups too).", ["class"],
                              registry=self.registry)
        self.dropped = Counter("edgeqmoe_dropped_samples", "Audio samples that did not fit the ring buffer.",
                               registry=self.registry)
        self.misses = Counter("edgeqmoe_deadline_misses", "Windows that took longer than the hop.",
                              registry=self.registry)
        self.window_seconds = Histogram("edgeqmoe_window_seconds", "Time to process one window.",
                                        buckets=WINDOW_BUCKETS, registry=self.registry)
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


def start(settings) -> Optional[Metrics]:
    """The endpoint of a profile's ``metrics`` section, or None when it is off."""
    if settings.http_port is None:
        return None
    try:
        return Metrics(settings.http_host, settings.http_port)
    except OSError as e:
        raise OSError(f"metrics endpoint {settings.http_host}:{settings.http_port} cannot listen ({e.strerror}); "
                      "choose another metrics.http_port, or null to turn it off") from None
