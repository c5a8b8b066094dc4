#!/usr/bin/env bash
# Install the Debian 12 packages the project builds and runs with (root only).
# Idempotent: installs only what is missing, so repeated `make` runs are fast.
set -euo pipefail

PACKAGES=(
  mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev   # the broker, its CLI clients, plugin headers
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler            # gRPC C core and protobuf-c for the shim
  libssl-dev pkg-config gcc make openssl                       # toolchain, TLS
  libcjson-dev                                                 # building the vendored Mosquitto 2.1 (make test)
  python3 python3-venv python3-dev                             # the daemon's virtualenv
  valgrind                                                     # `make valgrind` (memcheck of broker + plugin)
  clang-14 libclang-rt-14-dev                                  # libFuzzer targets in fuzz/ (make fuzz-short)
  systemd                                                      # systemd-analyze verify for the example units' test
  etcd-server etcd-client                                      # the fleet source's e2e tests (a 3-member cluster)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
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
