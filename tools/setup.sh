#!/usr/bin/env bash
# Set up edgeqmoe on a fresh Debian / Raspberry Pi OS machine, from this checkout:
# system packages, a virtual environment in .venv, and edgeqmoe with its C kernels.
#   tools/setup.sh          what running edgeqmoe needs (no torch: mn04 runs on ONNX Runtime)
#   tools/setup.sh --train  plus torch (CPU build), for training, fine-tuning and export
#   tools/setup.sh --dev    plus torch and what the test suite needs (ARM cross compiler and
#                           qemu for the NEON tests, PulseAudio for the virtual mic,
#                           mosquitto for the MQTT tests, espeak-ng for speech)
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
TRAIN=0
[ "${1:-}" = "--dev" ] && DEV=1 && TRAIN=1
[ "${1:-}" = "--train" ] && TRAIN=1
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo

pkgs="gcc libportaudio2 libsndfile1"
[ $DEV = 1 ] && pkgs="$pkgs systemd espeak-ng gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user pulseaudio pulseaudio-utils libasound2-plugins mosquitto openssl"
if command -v apt-get >/dev/null 2>&1; then
    missing=""
    for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        # wait (up to 10 min) for another apt, such as unattended-upgrades on a Pi's first boot
        lock="-o DPkg::Lock::Timeout=600"
        $SUDO apt-get $lock update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get $lock install -y -qq --no-install-recommends $missing
    fi
else
    echo "setup: no apt-get here; install these yourself: $pkgs" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || { echo "setup: '$PY -m venv' failed; on Debian install python3-venv" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU build (a bare 'torch' pulls a multi-GB CUDA build on x86-64)
if [ $TRAIN = 1 ]; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
if [ $DEV = 1 ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
elif [ $TRAIN = 1 ]; then
    .venv/bin/python -m pip install -q -e ".[train]"
else
    .venv/bin/python -m pip install -q -e .
fi
echo "setup: done; run .venv/bin/edgeqmoe --help"
