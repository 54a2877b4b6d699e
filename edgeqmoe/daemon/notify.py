"""systemd's notify protocol, spoken directly (no library): READY when the model is
loaded and the input open, a watchdog ping from the window loop, STATUS lines, STOPPING.

Under ``Type=notify`` with ``WatchdogSec=`` (deploy/edgeqmoe.service) systemd restarts a
daemon whose loop stops pinging: a hung loop is restarted, a slow one is not. Outside
systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Optional


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: Optional[str] = ("\0" + path[1:]) if path.startswith("@") else (path or None)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # ping three times per period: one late loop iteration never costs a restart
        self.ping_every = int(usec) / 1e6 / 3 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping = 0.0
        self._sock: Optional[socket.socket] = None

    def send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            pass  # the manager went away: nothing to tell, and nothing to stop for

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self, now: Optional[float] = None) -> None:
        """From the window loop, as often as it likes: sent at most three times a period."""
        if self.ping_every is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.ping_every:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def next_ping(self, now: float) -> float:
        """Seconds until the next ping is due (inf outside a systemd watchdog): an idle
        loop sleeps no longer than this."""
        if self.ping_every is None:
            return float("inf")
        return max(0.0, self._last_ping + self.ping_every - now)

    def stopping(self) -> None:
        self.send("STOPPING=1")
