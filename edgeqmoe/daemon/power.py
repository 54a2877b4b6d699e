"""Energy and power, always labelled with how they were obtained.

``measured``: Intel/AMD RAPL package counters under /sys/class/powercap
(``energy_uj``, wrapping at ``max_energy_range_uj``); the Raspberry Pi 5 PMIC
(``vcgencmd pmic_read_adc``: volts x amps summed over rails); laptop battery discharge
(``/sys/class/power_supply/*/power_now`` or ``current_now`` x ``voltage_now``) while
discharging. ``modelled``: the process's CPU time times a per-device-class power
model, a documented constant (watts per fully busy core above idle), written next to
every modelled number.

The per-window energy of the daemon is the process's CPU time spent on the window
times the model's watts per busy core (modelled), or the counter delta over the
window's processing (measured, whole package: it includes other processes).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..stats import co2_ug

#: Active power of one fully busy core above idle, watts, per device class. Sources:
#: typical package power over active cores from vendor TDPs and published Raspberry
#: Pi measurements (Pi 4 ~2.7 W idle -> ~6.4 W all 4 cores busy; Pi 5 ~2.7 -> ~7 W).
POWER_MODEL_W_PER_CORE = {"rpi4": 0.9, "rpi5": 1.1, "laptop": 4.0, "desktop": 10.0, "server": 6.0}
POWERCAP = "/sys/class/powercap"
POWER_SUPPLY = "/sys/class/power_supply"


def detect_device_class() -> str:
    try:
        model = Path("/proc/device-tree/model").read_text(errors="ignore")
        if "Raspberry Pi 5" in model:
            return "rpi5"
        if "Raspberry Pi" in model:
            return "rpi4"
    except OSError:
        pass
    if any(Path(POWER_SUPPLY).glob("BAT*")):
        return "laptop"
    from ..machine import cpu_model

    cpu = cpu_model()
    return "server" if (os.cpu_count() or 1) >= 16 or any(w in cpu for w in ("EPYC", "Xeon")) else "desktop"


class RaplCounters:
    """Package-level RAPL zones readable now (intel-rapl:N, not their sub-zones)."""

    def __init__(self, root: str = POWERCAP):
        self.zones: List[Tuple[Path, int]] = []
        for z in sorted(Path(root).glob("*rapl:[0-9]*")):
            if z.name.count(":") != 1:
                continue
            try:
                int((z / "energy_uj").read_text())
                rng = int((z / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            self.zones.append((z, rng))
        self.last = self._read() if self.zones else None

    def _read(self) -> List[int]:
        return [int((z / "energy_uj").read_text()) for z, _ in self.zones]

    def joules_since_last(self) -> float:
        """Energy since the previous call, handling counter wrap-around."""
        now = self._read()
        total = 0
        for (_, rng), a, b in zip(self.zones, self.last, now):
            total += b - a if b >= a else (rng - a) + b
        self.last = now
        return total / 1e6


def read_pmic_watts(vcgencmd: str = "vcgencmd") -> Optional[float]:
    """Raspberry Pi 5 PMIC: sum over rails of volts x amps from
    ``vcgencmd pmic_read_adc`` (lines like ``VDD_CORE_A current(7)=2.3A`` and
    ``VDD_CORE_V volt(15)=0.8V``); None where the command or the PMIC is absent."""
    import re
    import shutil
    import subprocess

    exe = shutil.which(vcgencmd)
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "pmic_read_adc"], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    amps, volts = {}, {}
    for name, kind, value in re.findall(r"^\s*(\S+?)_([AV])\s+\w+\(\d+\)=([0-9.]+)[AV]", out, re.M):
        (amps if kind == "A" else volts)[name] = float(value)
    rails = set(amps) & set(volts)
    return sum(amps[r] * volts[r] for r in rails) if rails else None


def read_battery_watts(root: str = POWER_SUPPLY) -> Optional[float]:
    for b in sorted(Path(root).glob("BAT*")):
        try:
            if (b / "status").read_text().strip() != "Discharging":
                continue
            if (b / "power_now").exists():
                return int((b / "power_now").read_text()) / 1e6
            return int((b / "current_now").read_text()) * int((b / "voltage_now").read_text()) / 1e12
        except (OSError, ValueError):
            continue
    return None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class PowerMeter:
    """Chooses the method once (profile ``power.method``) and labels every number."""

    def __init__(self, method: str = "auto", device_class: str = "auto", grid_intensity: float = 300.0,
                 powercap_root: str = POWERCAP, supply_root: str = POWER_SUPPLY, vcgencmd: str = "vcgencmd"):
        self.vcgencmd = vcgencmd
        self.device_class = detect_device_class() if device_class == "auto" else device_class
        self.w_per_core = POWER_MODEL_W_PER_CORE[self.device_class]
        self.grid = grid_intensity
        self.supply_root = supply_root
        self.rapl = RaplCounters(powercap_root) if method in ("auto", "rapl") else None
        if method == "off":
            self.method = "off"
        elif self.rapl is not None and self.rapl.zones:
            self.method = "measured"
            self.source = f"RAPL ({', '.join(z.name for z, _ in self.rapl.zones)})"
        elif method in ("auto", "pmic") and read_pmic_watts(vcgencmd) is not None:
            self.method = "measured"
            self.source = "Raspberry Pi PMIC (vcgencmd pmic_read_adc)"
        elif method in ("auto", "battery") and read_battery_watts(supply_root) is not None:
            self.method = "measured"
            self.source = "battery discharge"
        else:
            self.method = "modelled" if method != "off" else "off"
            self.source = "cpu-time model"
        if method == "rapl" and self.method != "measured":
            self.note = "RAPL requested but not readable here: modelled instead"
        else:
            self.note = ""
        self.model = {"name": "cpu-time x watts-per-busy-core", "device_class": self.device_class,
                      "watts_per_core": self.w_per_core}
        self.model_name = f"cpu-time x {self.w_per_core} W/core ({self.device_class})"
        self._t = time.monotonic()
        self._cpu = cpu_seconds()

    def describe(self) -> Dict:
        d = {"method": self.method, "source": getattr(self, "source", ""), "grid_gco2_per_kwh": self.grid}
        if self.method == "modelled":
            d["model"] = self.model
        if self.note:
            d["note"] = self.note
        return d

    def window_energy_mj(self, cpu_s: float) -> Dict:
        """Energy of one window from the CPU seconds it took (always modelled: a package
        counter cannot be split per window)."""
        mj = cpu_s * self.w_per_core * 1e3
        return {"energy_mj": round(mj, 5), "energy_method": "modelled",
                "co2_ug": round(co2_ug(mj, self.grid), 6)}

    def interval(self) -> Dict:
        """Average power over the interval since the last call, with its method."""
        now, cpu = time.monotonic(), cpu_seconds()
        dt, dcpu = max(1e-9, now - self._t), cpu - self._cpu
        self._t, self._cpu = now, cpu
        out = {"interval_s": round(dt, 3), "cpu_s": round(dcpu, 4), "cpu_percent": round(100 * dcpu / dt, 2)}
        if self.method == "measured" and self.rapl is not None and self.rapl.zones:
            j = self.rapl.joules_since_last()
            out.update({"power_w": round(j / dt, 4), "energy_j": round(j, 4), "power_method": "measured",
                        "power_source": self.source})
        elif self.method == "measured":
            w = read_pmic_watts(self.vcgencmd) if "PMIC" in self.source else read_battery_watts(self.supply_root)
            out.update({"power_w": None if w is None else round(w, 4), "power_method": "measured",
                        "power_source": self.source})
        elif self.method == "modelled":
            w = dcpu / dt * self.w_per_core
            # the full model (name, device class, watts) is in the run's start record
            out.update({"power_w": round(w, 4), "energy_j": round(w * dt, 4), "power_method": "modelled",
                        "power_model": self.model_name})
        return out


def temperature_c() -> Optional[float]:
    for z in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        try:
            return int((z / "temp").read_text()) / 1000.0
        except (OSError, ValueError):
            continue
    return None
