#!/usr/bin/env bash
# System tools the deployment checks (tests/deploy/) run for real: Debian's docker-compose (a compose
# implementation whose `config` validates deploy/compose.yaml without a Docker daemon) and promtool (from
# Debian's `prometheus` package) for deploy/prometheus/, and Debian's Chromium for the page's browser test
# (tests/e2e/test_page.py drives it with the `playwright` package; Playwright's own browser download is
# never used), and redis-server for the shared job store's test (tests/integration/test_adapters_cosmos.py starts
# and stops its own; the package's daemon is not used). Idempotent: installs only what is missing.
# Not root, or no apt-get: says so and exits 0, and the tests that need the tool skip with that reason.
set -uo pipefail

declare -A TOOL_PKG=([docker-compose]=docker-compose [promtool]=prometheus [chromium]=chromium [redis-server]=redis-server)
missing=()
for tool in "${!TOOL_PKG[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${TOOL_PKG[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_tools: docker-compose, promtool, chromium and redis-server already present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_tools: not root, skipping apt-get install ${missing[*]} (tests needing them will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_tools: no apt-get on this host, skipping ${missing[*]} (tests needing them will skip)"
    exit 0
fi

# Installing `prometheus` would start a Prometheus daemon through invoke-rc.d; we only want promtool.
# A temporary policy-rc.d (exit 101 = "action forbidden") stops that, unless the host already has one.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" -eq 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
# An empty or stale package list finds nothing: update once before installing.
apt-get update -qq || echo "install_system_tools: apt-get update failed, trying with the lists there are"
# --no-install-recommends: docker-compose otherwise recommends a whole Docker engine.
if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "install_system_tools: installed ${missing[*]}"
else
    echo "install_system_tools: apt-get install ${missing[*]} failed (tests needing them will skip)"
fi
exit 0
