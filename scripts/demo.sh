#!/usr/bin/env bash
# `make demo`: the seed scenario end to end, printing each command as it runs.
#   certificates (policyd certs) -> policyd serve -> mosquitto + plugin on 8883
#   -> Device123 publishes to its own subtree (delivered) and to Device999's (refused)
# Everything started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
POLICYD="$VENV/bin/policyd"
PORT="${DEMO_PORT:-8883}"
# Outside the checkout: the broker drops to the `mosquitto` user, which must be
# able to reach its key, the plugin and the policyd socket (a checkout under
# /root is not traversable by it).
DEMO_DIR="${DEMO_DIR:-/tmp/policyd-demo}"

bold=$'\e[1m'; green=$'\e[32m'; red=$'\e[31m'; dim=$'\e[2m'; off=$'\e[0m'
[ -t 1 ] || { bold=; green=; red=; dim=; off=; }
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
run()  { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

if [ "$(id -u)" -eq 0 ]; then OWNER=(--owner mosquitto); GROUP=(--socket-group mosquitto); else OWNER=(); GROUP=(); fi
if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
  echo "port $PORT is already in use; set DEMO_PORT=... to use another" >&2; exit 1
fi

rm -rf "$DEMO_DIR"; mkdir -p "$DEMO_DIR/certs" "$DEMO_DIR/run"; chmod 755 "$DEMO_DIR" "$DEMO_DIR/certs" "$DEMO_DIR/run"
cd "$DEMO_DIR"

step "1. Certificates: a private CA, the broker's, one per device (CN = device id)"
run "$POLICYD" certs ca --dir certs
run "$POLICYD" certs server --dir certs --cn localhost --san localhost --san 127.0.0.1 "${OWNER[@]}"
run "$POLICYD" certs client --dir certs --cn Device123
run "$POLICYD" certs client --dir certs --cn Device999

step "2. Rules: each device reaches only /device/<its CN>/#"
run cp "$ROOT/examples/rules.yaml" rules.yaml
run "$POLICYD" validate rules.yaml

step "3. policyd serve (unix socket for the mosquitto user)"
printf '%s$ %s%s\n' "$dim" "$POLICYD serve --rules rules.yaml --listen unix:$DEMO_DIR/run/policyd.sock ${GROUP[*]} &" "$off"
"$POLICYD" serve --rules rules.yaml --listen "unix:$DEMO_DIR/run/policyd.sock" "${GROUP[@]}" > policyd.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S run/policyd.sock ] && break; sleep 0.1; done
[ -S run/policyd.sock ] || { cat policyd.log; exit 1; }

step "4. Mosquitto on $PORT: TLS, require_certificate, use_identity_as_username, our plugin"
cp "$ROOT/plugin_c/build/mosquitto_policyd.so" .; chmod 755 mosquitto_policyd.so
sed -e "s|^listener 8883 0.0.0.0|listener $PORT 127.0.0.1|" \
    -e "s|/etc/mosquitto/certs|$DEMO_DIR/certs|" \
    -e "s|^plugin .*|plugin $DEMO_DIR/mosquitto_policyd.so|" \
    -e "s|^plugin_opt_policyd_address .*|plugin_opt_policyd_address unix:$DEMO_DIR/run/policyd.sock|" \
    "$ROOT/examples/mosquitto.conf" > mosquitto.conf
printf 'log_dest file %s/mosquitto.log\n' "$DEMO_DIR" >> mosquitto.conf
grep -v '^#' mosquitto.conf | grep -v '^$' | sed 's/^/    /'
run touch mosquitto.log; chmod 666 mosquitto.log
printf '%s$ %s%s\n' "$dim" "mosquitto -c mosquitto.conf &" "$off"
mosquitto -c mosquitto.conf &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
(exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null || { echo "mosquitto did not start:"; cat mosquitto.log; exit 1; }

TLS=(-h 127.0.0.1 -p "$PORT" --cafile certs/ca.pem)
DEV123=("${TLS[@]}" --cert certs/Device123.pem --key certs/Device123.key)
DEV999=("${TLS[@]}" --cert certs/Device999.pem --key certs/Device999.key)

step "5. Device123 publishes to its own subtree: delivered"
printf '%s$ %s%s\n' "$dim" "mosquitto_sub ${DEV123[*]} -t '/device/Device123/#' -C 1 -W 5 -v &" "$off"
mosquitto_sub "${DEV123[@]}" -t '/device/Device123/#' -C 1 -W 5 -v > sub-own.out 2>&1 &
sub=$!; sleep 0.5
run mosquitto_pub "${DEV123[@]}" -t /device/Device123/temperature -m 22.5 -q 1 -V mqttv5
wait "$sub" || true
printf '    subscriber received: %s\n' "$(cat sub-own.out)"
grep -q '^/device/Device123/temperature 22.5$' sub-own.out \
  && echo "${green}ALLOWED and delivered${off}" || { echo "${red}expected delivery did not happen${off}"; exit 1; }

step "6. Device123 publishes into Device999's subtree: refused (PUBACK reason 135, not authorized)"
printf '%s$ %s%s\n' "$dim" "mosquitto_sub ${DEV999[*]} -t '/device/Device999/#' -C 1 -W 3 -v &" "$off"
mosquitto_sub "${DEV999[@]}" -t '/device/Device999/#' -C 1 -W 3 -v > sub-other.out 2>&1 &
sub=$!; sleep 0.5
run mosquitto_pub "${DEV123[@]}" -t /device/Device999/temperature -m 99 -q 1 -V mqttv5 -d 2>&1 | tee pub-denied.out || true
wait "$sub" || true
if grep -q 'temperature 99' sub-other.out; then echo "${red}message was delivered: policy not enforced${off}"; exit 1; fi
grep -q 'PUBACK.*rc135\|rc=135\|135' pub-denied.out \
  && echo "${red}REFUSED${off}: nothing delivered to Device999's subscriber" \
  || { echo "expected PUBACK reason 135"; exit 1; }

step "7. Why? Ask policyd to explain both decisions"
run "$POLICYD" check --rules rules.yaml --username Device123 --topic /device/Device123/temperature --access write || true
run "$POLICYD" check --rules rules.yaml --username Device123 --topic /device/Device999/temperature --access write --explain || true

step "8. What the broker logged"
grep -E 'policyd|Denied' mosquitto.log | tail -n 5 | sed 's/^/    /' || true

step "Done: stopping policyd and mosquitto"
