#!/usr/bin/env bash
# Installs the Debian packages whose real binaries the integration tests run: prometheus
# (promtool and the server, tests/integration/test_deploy_*) and haproxy (the gRPC balancer).
# Only missing packages are installed, so a second run does nothing.
set -euo pipefail
DEBIAN_PACKAGES=(prometheus haproxy)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
