"""``edgeqmoe bench kernels``: packed kernels against torch and numpy, side by side.

One thread, batch 1 by default. Two workloads: a single ``in x out`` linear layer
(default 1024 x 640) and the whole head (1024 -> 640 -> 320 -> 10 with activation
quantization, LayerNorm and ReLU). Implementations: torch fp32 (nn.Linear / the
equivalent nn.Module), torch dynamic int8 (fbgemm / qnnpack), numpy float32, and every
packed format through the project's own binding (``Head``), with the best SIMD variant
and optionally every other variant.

Timing: every implementation is called in turn, round after round, so that noise on a
shared machine falls on all of them alike; each call is timed on its own with
``perf_counter_ns``. Reported: median and p99 (microseconds) and the ratios of torch
fp32's and torch int8's medians to each median (> 1 means faster than torch).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from ..kernels import FORMATS, available_variants, resolve_variant
from ..model import Head, LayerNorm, PackedLinear, ReLU
from ..machine import describe, machine_info


@dataclass
class Candidate:
    impl: str
    what: str  # "layer" or "head"
    fn: Callable[[], object]
    variant: str = ""
    weight_bytes: int = 0


def _single_thread():
    """Limit torch and BLAS to one thread; returns a note of what was limited."""
    notes = []
    try:
        import torch

        torch.set_num_threads(1)
        notes.append("torch threads=1")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        notes.append("BLAS threads=1")
    except ImportError:
        notes.append("BLAS threads not limited (no threadpoolctl)")
    return ", ".join(notes)


def _random_head(rng, dims):
    Ws = [(rng.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i])).astype(np.float32) for i in range(len(dims) - 1)]
    bs = [(rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32) for i in range(len(dims) - 1)]
    return Ws, bs


def _torch_candidates(Wl, bl, Ws, bs, x):
    import warnings

    import torch

    cands = []
    xt = torch.from_numpy(x)
    with torch.no_grad():
        lin = torch.nn.Linear(Wl.shape[1], Wl.shape[0])
        lin.weight.copy_(torch.from_numpy(Wl))
        lin.bias.copy_(torch.from_numpy(bl))
        mods = []
        for i, (W, b) in enumerate(zip(Ws, bs)):
            m = torch.nn.Linear(W.shape[1], W.shape[0])
            m.weight.copy_(torch.from_numpy(W))
            m.bias.copy_(torch.from_numpy(b))
            mods.append(m)
            if i < len(Ws) - 1:
                mods += [torch.nn.LayerNorm(W.shape[0]), torch.nn.ReLU()]
        head = torch.nn.Sequential(*mods).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
        qhead = torch.ao.quantization.quantize_dynamic(head, {torch.nn.Linear}, dtype=torch.qint8)
    engine = torch.backends.quantized.engine

    def run(m):
        def f():
            with torch.inference_mode():
                return m(xt)
        return f

    cands.append(Candidate("torch_fp32", "layer", run(lin), weight_bytes=Wl.nbytes))
    cands.append(Candidate("torch_int8_dynamic", "layer", run(qlin), variant=engine, weight_bytes=Wl.size))
    cands.append(Candidate("torch_fp32", "head", run(head), weight_bytes=sum(W.nbytes for W in Ws)))
    cands.append(Candidate("torch_int8_dynamic", "head", run(qhead), variant=engine, weight_bytes=sum(W.size for W in Ws)))
    return cands


def _numpy_candidates(Wl, bl, Ws, bs, x):
    def layer():
        return x @ Wl.T + bl

    def head():
        h = x
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = h @ W.T + b
            if i < len(Ws) - 1:
                mu = h.mean(axis=1, keepdims=True)
                var = h.var(axis=1, keepdims=True)
                h = np.maximum((h - mu) / np.sqrt(var + 1e-5), 0)
        return h

    return [Candidate("numpy_fp32", "layer", layer, weight_bytes=Wl.nbytes),
            Candidate("numpy_fp32", "head", head, weight_bytes=sum(W.nbytes for W in Ws))]


def _packed_candidates(Wl, bl, Ws, bs, x, variants: List[str], formats: List[str]):
    cands = []
    for name in formats:
        layer = PackedLinear.from_float(Wl, bl, name)
        steps = []
        for i, (W, b) in enumerate(zip(Ws, bs)):
            steps.append(PackedLinear.from_float(W, b, name))
            if i < len(Ws) - 1:
                steps += [LayerNorm(np.ones(W.shape[0], np.float32), np.zeros(W.shape[0], np.float32)), ReLU()]
        for v in variants:
            hl = Head([layer], kernel=v)
            hh = Head(steps, kernel=v)
            out_l = np.empty((x.shape[0], layer.out_features), np.float32)
            out_h = np.empty((x.shape[0], hh.out_features), np.float32)
            # the daemon's hot path: preallocated output, one C call
            cands.append(Candidate(name, "layer", (lambda h=hl, o=out_l: h.run_into(x, o)), v, layer.nbytes))
            cands.append(Candidate(name, "head", (lambda h=hh, o=out_h: h.run_into(x, o)), v, hh.weight_nbytes))
    return cands


def measure(cands: List[Candidate], rounds: int, per_round: int, warmup: int = 50) -> Dict[int, np.ndarray]:
    for c in cands:
        for _ in range(warmup):
            c.fn()
    times = {i: [] for i in range(len(cands))}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for i, c in enumerate(cands):
            fn, ts = c.fn, times[i]
            for _ in range(per_round):
                t0 = clock()
                fn()
                ts.append(clock() - t0)
    return {i: np.asarray(t, dtype=np.float64) / 1e3 for i, t in times.items()}


def run_bench(in_features: int = 1024, out_features: int = 640, hidden=(640, 320), classes: int = 10,
              batch: int = 1, rounds: int = 20, per_round: int = 100, all_variants: bool = False,
              formats: Optional[List[str]] = None, with_torch: bool = True, seed: int = 0) -> Dict:
    threads = _single_thread()
    rng = np.random.default_rng(seed)
    dims = [in_features, *hidden, classes]
    Ws, bs = _random_head(rng, dims)
    (Wl,), (bl,) = _random_head(rng, [in_features, out_features])
    x = rng.standard_normal((batch, in_features)).astype(np.float32)
    formats = formats or list(FORMATS)
    best = resolve_variant("simd")
    variants = [best] + ([v for v in available_variants() if v != best] if all_variants else [])
    cands: List[Candidate] = []
    skipped = None
    if with_torch:
        try:
            import torch  # noqa: F401 - only to know whether the torch rows can be timed
        except ImportError:
            with_torch = False
            skipped = ("torch is not installed: no torch rows and no ratios to torch "
                       "(tools/setup.sh --train or pip install 'edgeqmoe[train]' adds it)")
    if with_torch:
        cands += _torch_candidates(Wl, bl, Ws, bs, x)
    cands += _numpy_candidates(Wl, bl, Ws, bs, x)
    cands += _packed_candidates(Wl, bl, Ws, bs, x, variants, formats)
    t = measure(cands, rounds, per_round)
    med = {i: float(np.median(v)) for i, v in t.items()}

    def ref(impl, what):
        for i, c in enumerate(cands):
            if c.impl == impl and c.what == what:
                return med[i]
        return None

    rows = []
    for i, c in enumerate(cands):
        fp32, int8 = ref("torch_fp32", c.what), ref("torch_int8_dynamic", c.what)
        n_in, n_out = (in_features, out_features) if c.what == "layer" else (in_features, classes)
        rows.append({
            "impl": c.impl, "variant": c.variant, "what": c.what, "in_features": n_in, "out_features": n_out,
            "batch": batch, "median_us": round(med[i], 3), "p99_us": round(float(np.percentile(t[i], 99)), 3),
            "mean_us": round(float(t[i].mean()), 3), "std_us": round(float(t[i].std()), 3),
            "n": int(t[i].size), "weight_bytes": int(c.weight_bytes),
            "ratio_vs_torch_fp32": round(fp32 / med[i], 2) if fp32 else None,
            "ratio_vs_torch_int8": round(int8 / med[i], 2) if int8 else None,
        })
    info = machine_info({"threads": threads, "default_variant": best,
                         "head_dims": dims, "rounds": rounds, "per_round": per_round})
    return {"machine": info, "rows": rows, **({"note": skipped} if skipped else {})}


def format_table(result: Dict) -> str:
    lines = [f"machine: {describe(result['machine'])}", f"threads: {result['machine']['threads']}"]
    lines += [f"note: {result['note']}"] if result.get("note") else []
    lines.append("")
    hdr = f"{'what':5} {'impl':20} {'variant':8} {'shape':>11} {'median us':>10} {'p99 us':>9} {'x torch fp32':>12} {'x torch int8':>12} {'weights B':>10}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in result["rows"]:
        shape = f"{r['in_features']}x{r['out_features']}"
        f32 = "" if r["ratio_vs_torch_fp32"] is None else f"{r['ratio_vs_torch_fp32']:.2f}"
        i8 = "" if r["ratio_vs_torch_int8"] is None else f"{r['ratio_vs_torch_int8']:.2f}"
        lines.append(f"{r['what']:5} {r['impl']:20} {r['variant']:8} {shape:>11} {r['median_us']:10.2f} "
                     f"{r['p99_us']:9.2f} {f32:>12} {i8:>12} {r['weight_bytes']:10d}")
    return "\n".join(lines)


def format_markdown(result: Dict) -> str:
    from ..machine import describe

    m = result["machine"]
    out = [f"Machine: {describe(m)}. {m['threads']}. Kernel variants: {', '.join(m['kernel_variants'])}.", "",
           "| what | impl | variant | median us | p99 us | x torch fp32 | x torch int8 | weight bytes |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        f32 = "" if r["ratio_vs_torch_fp32"] is None else f"{r['ratio_vs_torch_fp32']:.2f}"
        i8 = "" if r["ratio_vs_torch_int8"] is None else f"{r['ratio_vs_torch_int8']:.2f}"
        out.append(f"| {r['what']} {r['in_features']}x{r['out_features']} | {r['impl']} | {r['variant']} | "
                   f"{r['median_us']:.2f} | {r['p99_us']:.2f} | {f32} | {i8} | {r['weight_bytes']} |")
    return "\n".join(out)


def write_json(result: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
