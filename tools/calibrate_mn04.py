"""Calibrate the integer mn04 on real windows, and measure it against full precision.

Runs the folded float network (``edgeqmoe.embed.mn04_int8.float_forward``) on 1 s
windows of real clips and records every feature map's per-channel min, max and mean:
the calibration that ships in the package (``edgeqmoe/embed/mn04-int8-calibration
.safetensors``: scales and means, no weights). Then builds the integer network from it
and compares it with mn04 in fp32 (ONNX Runtime, equal to torch within cosine 0.9999)
on windows: embedding cosine (mean, min) and AudioSet top-1 agreement.

    .venv/bin/python tools/calibrate_mn04.py --data ../shared/data/us8k16k \\
        --weights ../shared/models --out edgeqmoe/embed/mn04-int8-calibration.safetensors

``--calibrate odd --test even`` calibrates on every other clip and measures on the
others (held out); the shipped file is calibrated on all clips (``--calibrate all``).
Prints what it measured and the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def mels_of(clips, every: int = 1) -> np.ndarray:
    """1 s windows (hop 1 s) of each clip as mn04 log-mel, (N, 128, 100)."""
    from edgeqmoe.audio.frontend import MN04_MEL, log_mel
    from edgeqmoe.audio.io import load
    from edgeqmoe.audio.windowing import frame
    from edgeqmoe.embed.base import resample

    out = [log_mel(resample(frame(load(c.path, 16000), 16000, 16000), 16000, 32000), MN04_MEL)
           for c in clips[::every]]
    return np.concatenate(out).astype(np.float32)


def pick(clips, which: str):
    return {"all": clips, "odd": clips[1::2], "even": clips[0::2], "none": []}[which]


def main() -> None:
    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.embed import mn04_int8 as M
    from edgeqmoe.embed.mn04_onnx import MN04OnnxEmbedder
    from edgeqmoe.embed.ptfile import read_state_dict
    from edgeqmoe.embed.weights import MN04_WEIGHTS, resolve
    from edgeqmoe.kernels import resolve_variant
    from edgeqmoe.machine import apply_threads, describe, machine_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--calibrate", choices=("all", "odd", "even", "none"), default="all",
                    help="clips to calibrate on (none: use the shipped calibration)")
    ap.add_argument("--test", choices=("all", "odd", "even", "none"), default="all", help="clips to measure on")
    ap.add_argument("--every", type=int, default=1, help="every Nth clip of those (a quick run: 50)")
    ap.add_argument("--out", default=None, help="write the calibration here (safetensors)")
    ap.add_argument("--pointwise-bits", type=int, default=8, choices=(8, 4),
                    help="measure the network with its pointwise weights in this many bits (4: what 4-bit would cost)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    apply_threads(args.threads)

    weights = resolve(MN04_WEIGHTS, args.weights)
    net = M.layers(read_state_dict(weights))
    ds = read_dataset(args.data)
    print(f"machine: {describe(machine_info({'threads': args.threads}))}")
    t0 = time.time()
    if args.calibrate == "none":
        calib = M.load_calibration()
        print(f"calibration: the shipped file {M.CALIBRATION_FILE.name}")
    else:
        cal = mels_of(pick(ds.clips, args.calibrate), args.every)
        stats: dict = {}
        for i in range(0, len(cal), 128):
            M.float_forward(net, cal[i:i + 128], stats)
        calib = M.calibration_from_stats(stats)
        print(f"calibration: {len(cal)} windows of the {args.calibrate} clips (every {args.every}), "
              f"{len(calib)} arrays, {sum(a.size for a in calib.values())} values, {time.time() - t0:.1f} s")
    if args.out:
        from safetensors.numpy import save_file

        save_file(calib, args.out, metadata={"what": "mn04 int8 calibration: per-channel min, max, mean of each "
                                                     "feature map on 1 s windows of real clips",
                                             "clips": args.calibrate, "every": str(args.every)})
        print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")
    if args.test == "none":
        return
    test = mels_of(pick(ds.clips, args.test), args.every)
    ref_e, ref_l = MN04OnnxEmbedder(weights=str(weights)).forward_mel(test)
    engine = M.Engine.of(M.quantize(net, calib, args.pointwise_bits), resolve_variant("simd") if resolve_variant("simd") != "ref" else "generic")
    e, lg = engine.forward_mel(test)
    cos = (e * ref_e).sum(1) / np.linalg.norm(e, axis=1) / np.maximum(np.linalg.norm(ref_e, axis=1), 1e-12)
    top1 = float((lg.argmax(1) == ref_l.argmax(1)).mean())
    print(f"integer mn04 ({engine.variant}, pointwise weights {args.pointwise_bits} bits, "
          f"16 bits in {', '.join(M.WIDE_LAYERS)}) against fp32 on {len(test)} windows of the {args.test} clips: "
          f"embedding cosine mean {cos.mean():.5f} min {cos.min():.5f}, AudioSet top-1 agreement {100 * top1:.1f}%")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
