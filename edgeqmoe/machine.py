"""Facts about this machine: CPU model and features, cores, versions, kernel variants.
What a benchmark ran on, and what the power model needs to know."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any, Dict


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def machine_info(extra: Dict[str, Any] | None = None) -> Dict[str, Any]:
    from .kernels import available_variants, cpu_features
    import numpy

    info = {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_mhz": cpu_mhz(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_features": cpu_features(),
        "kernel_variants": available_variants(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    info.update(extra or {})
    return info


def describe(info: Dict[str, Any]) -> str:
    mhz = f" @ {info['cpu_mhz']:.0f} MHz" if info.get("cpu_mhz") else ""
    return (f"{info['cpu']}{mhz}, {info['cores']} cores, {info['arch']}; features: {info['cpu_features']}; "
            f"python {info['python']}, numpy {info['numpy']}" + (f", torch {info['torch']}" if "torch" in info else ""))


def apply_threads(n: int) -> Dict[str, Any]:
    """``runtime.threads`` for every thread pool this process uses: BLAS and OpenMP
    (numpy's OpenBLAS left to itself starts one thread per core and spins them for each
    small product of the front end), and torch's when torch is loaded. Returns what was
    set, for the start record."""
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(n)
    out: Dict[str, Any] = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    torch = sys.modules.get("torch")  # only when something loaded it: never imported for this
    if torch is not None:
        torch.set_num_threads(n)
        out["torch"] = torch.get_num_threads()
    return out
