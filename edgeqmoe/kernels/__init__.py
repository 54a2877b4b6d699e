"""Packed low-bit kernels: formats (``formats``), the C kernels (``_ckernels``) and the
choice between kernel variants.

Variants, best first where the CPU has them: ``avx512vbmi`` (``avx512`` plus VBMI byte
permutes: q1 by table lookup), ``avx512`` (AVX-512 F/BW/VL + VNNI +
VPOPCNTDQ), ``avx2``, ``dotprod`` (ARMv8.2 sdot), ``neon``, and ``generic`` (portable
scalar C). ``ref`` is the numpy reference of ``formats``.

A choice is one of ``ref``, ``generic``, ``simd`` (the best SIMD variant) or a
variant's name. It comes from the caller (profile or CLI), else the environment
variable ``EDGEQMOE_KERNEL``, else ``simd``. ``EDGEQMOE_ISA`` caps what ``simd`` may
pick (``avx2`` on an AVX-512 machine, ``neon`` on a dotprod one), so that the
narrower instruction sets can be measured and used on any machine that has them.
"""

from __future__ import annotations

import os
from typing import List, Optional

from . import _ckernels
from .formats import FORMATS, Format, get_format, padded_k

__all__ = [
    "FORMATS",
    "Format",
    "get_format",
    "padded_k",
    "available_variants",
    "resolve_variant",
    "cpu_features",
    "KernelChoiceError",
]

CHOICES = ("ref", "generic", "simd")
#: Order of SIMD variants from the widest down; EDGEQMOE_ISA cuts this list.
_SIMD_ORDER = ("avx512vbmi", "avx512", "avx2", "dotprod", "neon")


class KernelChoiceError(ValueError):
    """A kernel choice that names nothing this machine can run."""


def cpu_features() -> str:
    """CPU features detected at run time by the C module (space separated)."""
    return _ckernels.cpu_features()


def available_variants() -> List[str]:
    """C variants this CPU runs, best first (``generic`` last)."""
    return list(_ckernels.variants())


def resolve_variant(choice: Optional[str] = None, isa: Optional[str] = None) -> str:
    """Turn a choice (see module doc) into a concrete variant name, or ``ref``."""
    choice = (choice or os.environ.get("EDGEQMOE_KERNEL") or "simd").strip().lower()
    isa = (isa if isa is not None else os.environ.get("EDGEQMOE_ISA", "")).strip().lower()
    avail = available_variants()
    if choice in ("ref", "generic"):
        return choice
    if choice == "simd":
        simd = [v for v in avail if v != "generic"]
        if isa:
            if isa not in _SIMD_ORDER:
                raise KernelChoiceError(
                    f"EDGEQMOE_ISA={isa!r} is not an instruction set edgeqmoe knows; "
                    f"use one of {', '.join(_SIMD_ORDER)}")
            allowed = _SIMD_ORDER[_SIMD_ORDER.index(isa):]
            simd = [v for v in simd if v in allowed]
        return simd[0] if simd else "generic"
    if choice in avail:
        return choice
    raise KernelChoiceError(
        f"kernel {choice!r} is not available on this CPU ({cpu_features() or 'no SIMD features'}); "
        f"choose one of {', '.join(dict.fromkeys(CHOICES + tuple(avail)))}")
