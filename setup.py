"""Builds the C kernels (edgeqmoe.kernels._ckernels) during pip install.

Every SIMD variant is compiled in the same module with per-function target
attributes, so no global -m flags are needed and the module runs on any CPU of its
architecture; the variant is chosen at run time from CPU features.
"""
from setuptools import Extension, setup

SRC = "edgeqmoe/kernels/csrc/"

ext = Extension(
    "edgeqmoe.kernels._ckernels",
    sources=[SRC + f for f in ("eq_pymodule.c", "eq_py_head.c", "eq_py_cnn.c", "eq_py_mel.c", "eq_core.c",
                               "eq_program.c", "eq_generic.c", "eq_x86.c", "eq_arm.c", "eq_cnn.c", "eq_cnn_x86.c",
                               "eq_cnn_arm.c", "eq_mel.c")],
    depends=[SRC + f for f in ("eq_kernels.h", "eq_cnn.h", "eq_cnn_body.h", "eq_mel.h", "eq_mel_body.h", "eq_py.h")],
    include_dirs=[SRC],
    extra_compile_args=["-O3", "-std=gnu11", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall", "-Wno-unused-function"],
)

setup(ext_modules=[ext])
