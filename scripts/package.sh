#!/usr/bin/env bash
# Builds the .deb a technician installs with `apt install ./smartwait-gateway_*.deb`
# (binary in /usr/bin, the unit enabled and started, /etc/smartwait-gateway/gateway.toml
# as a conffile), then checks its contents and lays it out in a throwaway root.
# Usage: scripts/package.sh [--target aarch64-unknown-linux-gnu]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --version 3.8.0
deb=$(cargo deb "$@" | tail -n 1)
echo "package: $deb ($(stat -c %s "$deb") bytes)"
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/smartwait-gateway ./etc/smartwait-gateway/gateway.toml \
            ./usr/lib/systemd/system/smartwait-gateway.service ./usr/share/doc/smartwait-gateway/README.md; do
  grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path" >&2; echo "$contents" >&2; exit 1; }
done
control=$(mktemp -d); root=$(mktemp -d)
trap 'rm -rf "$control" "$root"' EXIT
dpkg-deb -e "$deb" "$control"
grep -qx "/etc/smartwait-gateway/gateway.toml" "$control/conffiles" || { echo "gateway.toml is not a conffile" >&2; exit 1; }
grep -q "systemctl" "$control/postinst" || { echo "postinst does not enable the unit" >&2; exit 1; }
dpkg-deb -x "$deb" "$root"
if [ "$(dpkg-deb -f "$deb" Architecture)" = "$(dpkg --print-architecture)" ]; then
  "$root/usr/bin/smartwait-gateway" --config "$root/etc/smartwait-gateway/gateway.toml" check-config >/dev/null
  echo "the packaged binary reads the packaged config"
fi
echo "package layout OK: $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) $(dpkg-deb -f "$deb" Architecture)"
