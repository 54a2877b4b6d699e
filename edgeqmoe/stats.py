"""Statistics shared by the daemon, the log readers and the benchmarks: the stages of a
window, percentile summaries, the CO2 of an energy figure, and the two-sample test that
compares the latency of two runs. Neutral ground: it imports nothing of edgeqmoe."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

#: stages of a window, as ``stages_ms`` of a window record names them (total last)
STAGES = ("embed", "head", "decision", "total")
#: a variance below this counts as none (a run of identical timings): ratios to it are undefined
VARIANCE_FLOOR = 1e-12


def percentiles(values: Sequence[float], digits: int = 4) -> Dict[str, float]:
    """p50, p95, p99, max, mean and std of ``values`` ({} when empty)."""
    if len(values) == 0:
        return {}
    x = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {k: round(float(v), digits) for k, v in (("p50", p50), ("p95", p95), ("p99", p99), ("max", x.max()),
                                                     ("mean", x.mean()), ("std", x.std()))}


def co2_ug(energy_mj: float, grid_g_per_kwh: float) -> float:
    """Micrograms of CO2 for ``energy_mj`` millijoules at a grid intensity in gCO2/kWh."""
    kwh = energy_mj / 1e3 / 3.6e6
    return kwh * grid_g_per_kwh * 1e6


def variance_reduction(var_a: float, var_b: float) -> Optional[float]:
    """1 - var_b / var_a; None (undefined) when A's variance is about zero."""
    if not math.isfinite(var_a) or var_a <= VARIANCE_FLOOR:
        return None
    return float(1 - var_b / var_a)


def compare_samples(a: Sequence[float], b: Sequence[float]) -> Dict:
    """Two independent samples (e.g. latencies of two runs): Levene (Brown-Forsythe)
    on the variances with the reduction of b against a, Welch's t on the means, Cohen's d."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1), b.var(ddof=1)
    with np.errstate(all="ignore"):
        lev = stats.levene(a, b, center="median")
        welch = stats.ttest_ind(a, b, equal_var=False)
    pooled = np.sqrt((va + vb) / 2)

    def p(v):
        return float(v) if math.isfinite(v) else 1.0  # identical samples: no evidence of a difference

    return {"n_a": int(a.size), "n_b": int(b.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "std_a": float(np.sqrt(va)), "std_b": float(np.sqrt(vb)),
            "variance_reduction": variance_reduction(va, vb),
            "levene_W": float(lev.statistic), "levene_p": p(lev.pvalue),
            "welch_t": float(welch.statistic), "welch_p": p(welch.pvalue),
            "cohens_d": float((b.mean() - a.mean()) / pooled) if pooled > 0 else 0.0}


def percent(v: Optional[float]) -> str:
    """A variance reduction as a person reads it: '12.3%', or 'undefined'."""
    return "undefined (no variance in the baseline)" if v is None else f"{100 * v:.1f}%"
