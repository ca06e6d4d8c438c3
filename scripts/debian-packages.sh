#!/usr/bin/env bash
# Installs the Debian packages whose real binaries the tests run: prometheus (promtool and the
# server, tests/integration/test_deploy_*), haproxy (the gRPC balancer), and nodejs and npm (the
# Node client's test, tests/e2e/test_node_client.py). Only missing ones are installed, so a second
# run does nothing.
set -euo pipefail
DEBIAN_PACKAGES=(prometheus haproxy)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Node.js and npm count by command, not by Debian package: NodeSource's nodejs bundles npm and
# conflicts with Debian's npm, so asking dpkg would try to install one beside the other.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
