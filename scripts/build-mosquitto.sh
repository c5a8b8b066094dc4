#!/usr/bin/env bash
# Build the vendored Mosquitto release from third_party/ once, into an ignored folder, for the
# end-to-end suite's second broker (tests/harness.py: POLICYD_BROKER). Only the broker and the
# library it is built from; no docs, no install.
#   scripts/build-mosquitto.sh 2.1.2 .build/mosquitto-2.1.2   -> .build/mosquitto-2.1.2/src/mosquitto
set -euo pipefail

version=$1
dest=$2
root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/third_party/mosquitto-$version"
tarball="mosquitto-$version.tar.gz"

# A tarball that does not match its recorded checksum is never built.
(cd "$vendor" && sha256sum --check --quiet "$tarball.sha256")

tmp="$dest.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
tar xzf "$vendor/$tarball" -C "$tmp" --strip-components=1
# Features the tests do not use are off: fewer build dependencies (libcjson-dev and libssl-dev remain).
flags=(WITH_DOCS=no WITH_SQLITE=no WITH_HTTP_API=no WITH_EDITLINE=no WITH_GMOCK=no
       WITH_ARGON2=no WITH_WEBSOCKETS=no)
make -C "$tmp/libcommon" -j"$(nproc)" "${flags[@]}" >"$tmp/build.log" 2>&1 \
  && make -C "$tmp/src" -j"$(nproc)" "${flags[@]}" >>"$tmp/build.log" 2>&1 \
  || { tail -n 40 "$tmp/build.log" >&2; echo "building mosquitto $version failed (log: $tmp/build.log)" >&2; exit 1; }
rm -rf "$dest"
mv "$tmp" "$dest"
echo "built mosquitto $version: $dest/src/mosquitto"
