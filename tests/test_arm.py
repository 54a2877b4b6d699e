"""The kernel self-test (every variant against the generic twin), natively and for
64-bit ARM: cross-compiled with Debian's gcc-aarch64-linux-gnu and run under
qemu-aarch64, once with dotprod (-cpu max) and once with plain NEON (cortex-a53)."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "edgeqmoe", "kernels", "csrc")
SOURCES = [os.path.join(HERE, "kernels_selftest.c")] + [
    os.path.join(CSRC, f) for f in ("eq_core.c", "eq_program.c", "eq_generic.c", "eq_x86.c", "eq_arm.c", "eq_cnn.c", "eq_cnn_x86.c", "eq_cnn_arm.c")]
IN_CI = os.environ.get("CI") == "true"


def build(cc, out, extra):
    # no fused multiply-adds, as setup.py builds the module: the float parts must round alike
    cmd = [cc, "-O2", "-std=gnu11", "-ffp-contract=off", "-I", CSRC, *extra, *SOURCES, "-o", out, "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_selftest_native(tmp_path):
    exe = str(tmp_path / "selftest")
    build(shutil.which("cc") or "gcc", exe, [])
    res = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK:" in res.stdout


@pytest.mark.parametrize("cpu,variants", [("max", ["dotprod", "neon"]), ("cortex-a53", ["neon"])])
def test_selftest_aarch64_under_qemu(tmp_path, cpu, variants):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cc and qemu):
        if IN_CI:
            pytest.fail("CI must install gcc-aarch64-linux-gnu and qemu-user (see .ci/run)")
        pytest.skip("gcc-aarch64-linux-gnu / qemu-user not installed")
    exe = str(tmp_path / "selftest-aarch64")
    build(cc, exe, ["-static", "-march=armv8-a"])
    res = subprocess.run([qemu, "-cpu", cpu, exe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for v in variants:
        assert f"variant {v}: 197 checks, 0 mismatches" in res.stdout, res.stdout
        assert f"variant {v}, integer embedder: 16 checks, 0 mismatches" in res.stdout, res.stdout
    if cpu == "cortex-a53":
        assert "dotprod" not in res.stdout
