#!/usr/bin/env bash
# Install the Debian 12 packages a step needs (root only), by group:
#   build  what `make build` needs: compilers, headers, the daemon's virtualenv
#   run    what `make demo` adds: the broker and its clients
#   test   what `make test` adds: valgrind, libFuzzer, systemd-analyze, etcd
# Usage: install-system-deps.sh GROUP... (default: build). Idempotent: installs only what is
# missing, so repeated `make` runs are fast. A production build host needs only `build`.
set -euo pipefail

declare -A GROUPS_OF=(
  [build]="mosquitto-dev libmosquitto-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
           libssl-dev pkg-config gcc make openssl python3 python3-venv python3-dev"
  [run]="mosquitto mosquitto-clients"
  [test]="valgrind clang-14 libclang-rt-14-dev systemd etcd-server etcd-client libcjson-dev"
)
# build: plugin headers, gRPC C core and protobuf-c for the shim, toolchain, TLS, the venv.
# test: `make valgrind`, libFuzzer targets in fuzz/, systemd-analyze verify of the example
#       units, the fleet source's 3-member etcd cluster, building the vendored Mosquitto 2.1.

PACKAGES=()
for group in "${@:-build}"; do
  if [ -z "${GROUPS_OF[$group]+x}" ]; then
    echo "unknown group $group (build, run, test)" >&2
    exit 2
  fi
  # shellcheck disable=SC2206
  PACKAGES+=(${GROUPS_OF[$group]})
done

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages (${*:-build}): all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "+ apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts a default broker on 1883 when it installs mosquitto; the demo
# and tests run their own brokers and do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  echo "note: the system mosquitto service is running (port 1883); policyd's demo uses 8883"
fi
