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
    os.path.join(CSRC, f) for f in ("eq_core.c", "eq_program.c", "eq_generic.c", "eq_x86.c", "eq_arm.c", "eq_cnn.c",
                                    "eq_cnn_x86.c", "eq_cnn_arm.c", "eq_mel.c")]
IN_CI = os.environ.get("CI") == "true"


def build(cc, out, extra, sources=SOURCES):
    # no fused multiply-adds, as setup.py builds the module: the float parts must round alike
    cmd = [cc, "-O2", "-std=gnu11", "-ffp-contract=off", "-I", CSRC, *extra, *sources, "-o", out, "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def arm_toolchain():
    """(cross compiler, qemu-aarch64); a skip where they are missing (a failure in CI)."""
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cc and qemu):
        if IN_CI:
            pytest.fail("CI must install gcc-aarch64-linux-gnu and qemu-user (see .ci/run)")
        pytest.skip("gcc-aarch64-linux-gnu / qemu-user not installed")
    return cc, qemu


def test_selftest_native(tmp_path):
    exe = str(tmp_path / "selftest")
    build(shutil.which("cc") or "gcc", exe, [])
    res = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK:" in res.stdout


@pytest.mark.parametrize("cpu,variants", [("max", ["dotprod", "neon"]), ("cortex-a53", ["neon"])])
def test_selftest_aarch64_under_qemu(tmp_path, cpu, variants):
    cc, qemu = arm_toolchain()
    exe = str(tmp_path / "selftest-aarch64")
    build(cc, exe, ["-static", "-march=armv8-a"])
    res = subprocess.run([qemu, "-cpu", cpu, exe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for v in variants:
        assert f"variant {v}: 197 checks, 0 mismatches" in res.stdout, res.stdout
        assert f"variant {v}, integer embedder: 16 checks, 0 mismatches" in res.stdout, res.stdout
    if cpu == "cortex-a53":
        assert "dotprod" not in res.stdout


def _mel_case(tmp_path):
    """A 16 kHz window (non-finite samples included) and the mn04 front end's plan, as
    tests/mel_selftest.c reads them, and the float64 reference of its log-mel."""
    import numpy as np

    from edgeqmoe.audio.frontend import MN04_MEL, _plan, log_mel_reference, upsampler_taps

    spec = MN04_MEL
    x = (np.random.default_rng(5).standard_normal(8001) * 0.2).astype(np.float32)
    x[17], x[4000] = np.nan, np.inf
    he, ho = upsampler_taps(spec)
    _, win, start, length, weights = _plan(spec)
    head = np.array([len(x), 1, len(ho), spec.n_fft, len(win), spec.hop, spec.n_mels], np.int32)
    consts = np.array([spec.preemphasis, spec.log_offset, spec.shift, 1.0 / spec.scale], np.float32)
    path = tmp_path / "mel.in"
    path.write_bytes(b"".join(a.tobytes() for a in (head, consts, he, ho, win, start, length, weights, x)))
    return str(path), log_mel_reference(x, spec, sr=16000)


def _mel_check(tmp_path, run, exe, variant):
    import numpy as np

    inp, want = _mel_case(tmp_path)
    out = str(tmp_path / f"mel-{variant}.out")
    res = subprocess.run([*run, exe, inp, out, variant], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    got = np.fromfile(out, np.float32).reshape(want.shape)
    assert np.abs(got - want).max() < 3e-4, (variant, float(np.abs(got - want).max()))


MEL_SOURCES = [os.path.join(HERE, "mel_selftest.c"), os.path.join(CSRC, "eq_mel.c")]


def test_front_end_native_and_aarch64_under_qemu(tmp_path):
    """The C front end against its float64 reference: every x86 variant here, and on 64-bit
    ARM (its baseline vector unit, NEON) under qemu."""
    from edgeqmoe.audio.frontend import available_variants

    exe = str(tmp_path / "mel")
    build(shutil.which("cc") or "gcc", exe, [], MEL_SOURCES)
    for v in available_variants():
        _mel_check(tmp_path, [], exe, v)
    cc, qemu = arm_toolchain()
    arm = str(tmp_path / "mel-aarch64")
    build(cc, arm, ["-static", "-march=armv8-a"], MEL_SOURCES)
    _mel_check(tmp_path, [qemu, "-cpu", "cortex-a53"], arm, "generic")
