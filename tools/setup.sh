#!/usr/bin/env bash
# First command of the README: install what is missing, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build
build/maskjit demo
