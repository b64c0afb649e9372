#!/usr/bin/env bash
# Raspberry Pi builds: installs the cross toolchain pieces when missing,
# builds the release binary for the Pi's target, reports its size, and runs
# the whole test suite against builds for that target under qemu user
# emulation (test binaries and the gateway binary they start).
#   aarch64 (default): Pi 4/5 with a 64-bit OS, aarch64-unknown-linux-gnu
#   armv7:             Pi 3, or any Pi with a 32-bit OS, armv7-unknown-linux-gnueabihf
# Usage: scripts/cross-test.sh [aarch64|armv7] [cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

arch="aarch64"
if [ $# -gt 0 ] && { [ "$1" = aarch64 ] || [ "$1" = armv7 ]; }; then
  arch="$1"
  shift
fi
case "$arch" in
  aarch64)
    target=aarch64-unknown-linux-gnu sysroot=/usr/aarch64-linux-gnu
    gcc=aarch64-linux-gnu-gcc gcc_packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    qemu=qemu-aarch64 runner_env=CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER ;;
  armv7)
    target=armv7-unknown-linux-gnueabihf sysroot=/usr/arm-linux-gnueabihf
    gcc=arm-linux-gnueabihf-gcc gcc_packages=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
    qemu=qemu-arm runner_env=CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER ;;
esac

need_apt=()
command -v "$gcc" >/dev/null 2>&1 || need_apt+=("${gcc_packages[@]}")
command -v "$qemu" >/dev/null 2>&1 || need_apt+=(qemu-user)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

cargo build --release --target "$target" -p smartwait-gateway
binary="target/$target/release/smartwait-gateway"
echo "$arch release binary: $(stat -c %s "$binary") bytes ($(file -b "$binary" | cut -d, -f1-2))"

# Everything the tests need on the host (redis-server, Node.js, the npm clients, chromium).
scripts/test --no-run >/dev/null
runner="$qemu -L $sysroot"
env "$runner_env=$runner" SMARTWAIT_TEST_BINARY_RUNNER="$runner" \
  cargo test --target "$target" -p smartwait-gateway "$@"
