#!/usr/bin/env bash
# Raspberry Pi 4/5 (64-bit) build: installs the cross toolchain pieces when
# missing, builds the release binary for aarch64-unknown-linux-gnu, reports its
# size, and runs the whole test suite against aarch64 builds under qemu-aarch64
# user emulation (test binaries and the gateway binary they start).
# Usage: scripts/cross-test.sh [cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

cargo build --release --target "$target" -p smartwait-gateway
binary="target/$target/release/smartwait-gateway"
echo "aarch64 release binary: $(stat -c %s "$binary") bytes ($(file -b "$binary" | cut -d, -f1-2))"

# Everything the tests need on the host (redis-server, Node.js, socket.io-client).
scripts/test --no-run >/dev/null
runner="qemu-aarch64 -L $sysroot"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$runner" SMARTWAIT_TEST_BINARY_RUNNER="$runner" \
  cargo test --target "$target" -p smartwait-gateway "$@"
