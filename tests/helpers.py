"""Helpers shared by the tests: the command line in a subprocess, waiting for a
condition, and the daemon's records of a log folder."""
import os
import subprocess
import sys
import time

PY = sys.executable


def run_cli(args, env=None, timeout=300, **kw):
    """``edgeqmoe ARGS`` in a fresh interpreter (``env`` added to this one's)."""
    return subprocess.run([PY, "-m", "edgeqmoe.cli", *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def wait_for(cond, timeout=60.0, step=0.05):
    """Poll ``cond`` until it is true or ``timeout`` s pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def daemon_records(log_dir):
    """The daemon's own records (daemon.jsonl and its rotations), oldest first."""
    from edgeqmoe.daemon.sinks import log_files, read_jsonl

    return list(read_jsonl(log_files(log_dir, "daemon")))
