#!/usr/bin/env bash
# A virtual microphone for tests and demos on machines without a sound card.
#   eval "$(tools/virtual_mic.sh up)"     start; prints the environment to export
#   tools/virtual_mic.sh down             stop what 'up' started
# A private PulseAudio server (fine as root) gets one null sink "edgeqmoe_sink" whose
# monitor is the default capture source, so sounddevice's InputStream records what is
# played into it:  paplay --device=edgeqmoe_sink --latency-msec=20 FILE.wav
# A reader kept on the monitor makes the sink render in small blocks (otherwise a new
# capture stream waits for the end of a 2 s idle block).
# Needs: pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 (tools/setup.sh --dev)
set -euo pipefail
DIR=${EDGEQMOE_VMIC_DIR:-${TMPDIR:-/tmp}/edgeqmoe-vmic}
RATE=${EDGEQMOE_VMIC_RATE:-16000}
env_line() {
    echo "export PULSE_SERVER=unix:$DIR/native PULSE_RUNTIME_PATH=$DIR PULSE_STATE_PATH=$DIR/state PULSE_COOKIE=$DIR/cookie"
}
case "${1:-up}" in
up)
    command -v pulseaudio >/dev/null || { echo "virtual_mic: pulseaudio is not installed (tools/setup.sh --dev)" >&2; exit 1; }
    mkdir -p "$DIR/state"; chmod 700 "$DIR"
    cat > "$DIR/server.pa" <<PA
load-module module-native-protocol-unix auth-anonymous=1 auth-cookie-enabled=0 socket=$DIR/native
load-module module-null-sink sink_name=edgeqmoe_sink rate=$RATE channels=1 sink_properties=device.description=edgeqmoe-virtual-mic
set-default-sink edgeqmoe_sink
set-default-source edgeqmoe_sink.monitor
PA
    eval "$(env_line)"
    export PULSE_SERVER PULSE_RUNTIME_PATH PULSE_STATE_PATH PULSE_COOKIE
    if ! pactl info >/dev/null 2>&1; then
        pulseaudio --daemonize=yes -n -F "$DIR/server.pa" --exit-idle-time=-1 --use-pid-file=yes \
            --log-target=file:"$DIR/pulse.log" 2>/dev/null || true
        for _ in $(seq 100); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
        pactl info >/dev/null || { echo "virtual_mic: PulseAudio did not start; see $DIR/pulse.log" >&2; exit 1; }
        setsid parec --latency-msec=10 -d edgeqmoe_sink.monitor --rate=8000 --channels=1 >/dev/null 2>&1 &
        echo $! > "$DIR/keeper.pid"
        for _ in $(seq 60); do
            lat=$(pactl list sinks | sed -n 's/^\s*Latency: \([0-9]*\) usec.*/\1/p' | head -1)
            [ -n "$lat" ] && [ "$lat" -lt 100000 ] && break
            sleep 0.1
        done
    fi
    env_line
    ;;
down)
    [ -f "$DIR/keeper.pid" ] && kill "$(cat "$DIR/keeper.pid")" 2>/dev/null || true
    rm -f "$DIR/keeper.pid"
    eval "$(env_line)"
    export PULSE_SERVER PULSE_RUNTIME_PATH PULSE_STATE_PATH PULSE_COOKIE
    pactl exit >/dev/null 2>&1 || true
    [ -f "$DIR/pid" ] && kill "$(cat "$DIR/pid")" 2>/dev/null || true
    ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
