#!/usr/bin/env bash
# Installs maskjit into a staging prefix and builds examples/ against the
# installed maskjit.pc, as a user would; then runs them. Also checks that the
# README's C example is examples/quickstart.c verbatim.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
[ -d build ] || meson setup build >/dev/null
meson install -C build --destdir "$stage" >/dev/null
prefix=$(meson introspect build --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
libdir=$(meson introspect build --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="libdir"))')
export PKG_CONFIG_SYSROOT_DIR="$stage"
export PKG_CONFIG_PATH="$stage$prefix/$libdir/pkgconfig"
for src in examples/*.c; do
    exe="$stage/$(basename "$src" .c)"
    # shellcheck disable=SC2046
    cc -std=c17 -Wall -Wextra -Werror -o "$exe" "$src" $(pkg-config --cflags --libs --static maskjit)
    echo "check-install: built $src against maskjit.pc; running it"
    "$exe"
done
# The README shows examples/quickstart.c; keep them the same text.
python3 - <<'PY'
import re, sys
readme = open("README.md").read()
blocks = re.findall(r"```c\n(.*?)```", readme, re.S)
example = open("examples/quickstart.c").read()
if example not in blocks:
    sys.exit("check-install: README.md's C example differs from examples/quickstart.c")
print("check-install: README's C example matches examples/quickstart.c")
PY
