#!/usr/bin/env bash
# Install edgeqmoe as a service on Raspberry Pi OS / Debian, from this checkout.
#   sudo deploy/install.sh [PROFILE]      PROFILE: stable (default), balanced, energy, ...
# Creates the 'edgeqmoe' user (in group audio), /opt/edgeqmoe/venv, /etc/edgeqmoe,
# /var/lib/edgeqmoe (weights), /var/log/edgeqmoe, and enables edgeqmoe.service.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
SRC=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${1:-stable}
# wait (up to 10 min) for another apt, such as unattended-upgrades on a Pi's first boot
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc libportaudio2 libsndfile1
id edgeqmoe >/dev/null 2>&1 || useradd --system --home /var/lib/edgeqmoe --shell /usr/sbin/nologin -G audio edgeqmoe
install -d -m 0750 -o edgeqmoe -g audio /var/lib/edgeqmoe /var/lib/edgeqmoe/weights /var/lib/edgeqmoe/cache \
    /var/log/edgeqmoe
install -d /opt/edgeqmoe /etc/edgeqmoe
python3 -m venv /opt/edgeqmoe/venv
/opt/edgeqmoe/venv/bin/pip install -q --upgrade pip
# no torch: the daemon runs mn04 on ONNX Runtime (torch is only for training: edgeqmoe[train])
# pip builds in the tree it installs from: never let root build inside a checkout that a
# user owns (root-owned build/ and egg-info left behind). Build from a root-owned copy.
BUILD=$(mktemp -d /tmp/edgeqmoe-build.XXXXXX)
trap 'rm -rf "$BUILD"' EXIT
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude='*.so' --exclude='__pycache__' --no-same-owner -cf - . | tar -C "$BUILD" --no-same-owner -xf -
chown -R root:root "$BUILD"
/opt/edgeqmoe/venv/bin/pip install -q --no-cache-dir "$BUILD"
if [ ! -f /etc/edgeqmoe/profile.yaml ]; then
    cp "$SRC/edgeqmoe/profiles/$PROFILE.yaml" /etc/edgeqmoe/profile.yaml
fi
/opt/edgeqmoe/venv/bin/edgeqmoe profiles validate /etc/edgeqmoe/profile.yaml
# the pretrained embedder weights: fetched if online, else the weight-free fallback runs
sudo -u edgeqmoe EDGEQMOE_WEIGHTS_DIR=/var/lib/edgeqmoe/weights \
    /opt/edgeqmoe/venv/bin/edgeqmoe weights fetch mn04 --to /var/lib/edgeqmoe/weights \
    || echo "install.sh: weights not fetched (offline?); the daemon runs on the weight-free fallback until they are"
# mn04 for our integer kernels (and ONNX Runtime when installed), converted once now rather than at the first start
sudo -u edgeqmoe EDGEQMOE_WEIGHTS_DIR=/var/lib/edgeqmoe/weights EDGEQMOE_CACHE_DIR=/var/lib/edgeqmoe/cache \
    /opt/edgeqmoe/venv/bin/edgeqmoe weights convert || true
install -m 0644 "$SRC/deploy/edgeqmoe.service" /etc/systemd/system/edgeqmoe.service
systemd-analyze verify /etc/systemd/system/edgeqmoe.service
systemctl daemon-reload
systemctl enable --now edgeqmoe.service
echo "install.sh: edgeqmoe is running; logs: /var/log/edgeqmoe, 'edgeqmoe logs summary /var/log/edgeqmoe'"
