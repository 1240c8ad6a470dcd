#!/usr/bin/env bash
# The include direction of docs/design.md: a file includes headers of its own
# layer and of the layers below it, never above. Also: every library header
# is in meson.build's lib_headers (the compile cache keys on them).
#
#   tools/check_layers.sh [BUILD]   exit 1 and one line per violation
#
# With a meson build directory, also the calls: a library object may use
# only symbols defined in its own layer or the layers it may include (the
# public API included: everything is one archive, so the linker cannot tell).
set -uo pipefail
cd "$(dirname "$0")/.."

# Layer of a path (the folders of docs/design.md's tree).
layer_of() {
    case $1 in
    include/*) echo public ;;
    src/core/*) echo core ;;
    src/nn/*) echo nn ;;
    src/io/*) echo io ;;
    ir/*) echo ir ;;
    src/trace/*) echo trace ;;
    jit/*) echo jit ;;
    bench/*) echo bench ;;
    cli/*) echo cli ;;
    *) echo other ;;
    esac
}
# What each layer may include besides itself and the public headers.
declare -A may=(
    [public]=""
    [core]=""
    [nn]="core"
    [io]="core"
    [ir]="core nn io"
    [trace]="core nn io ir"
    [jit]="core nn io ir"
    [bench]="core nn io ir jit"
    [cli]="core nn io ir trace jit bench"
)

bad=0
while IFS= read -r f; do
    from=$(layer_of "$f")
    [ "$from" = other ] && { echo "check_layers: $f is in no layer (add it to tools/check_layers.sh and docs/design.md)"; bad=1; continue; }
    dir=$(dirname "$f")
    while IFS= read -r inc; do
        # resolved as the compiler does: next to the file, then -I. and -Iinclude
        if [ -f "$dir/$inc" ]; then t=$dir/$inc
        elif [ -f "$inc" ]; then t=$inc
        elif [ -f "include/$inc" ]; then t=include/$inc
        else continue # generated (code_id.h)
        fi
        t=$(realpath -m --relative-to=. "$t")
        to=$(layer_of "$t")
        [ "$to" = "$from" ] || [ "$to" = public ] && continue
        case " ${may[$from]} " in
        *" $to "*) ;;
        *) echo "check_layers: $f ($from) includes $t ($to): $from may include ${may[$from]:-only itself}"; bad=1 ;;
        esac
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done < <(git ls-files -co --exclude-standard -- include src ir jit bench cli | grep -E '\.(c|h|def)$')

# Library headers (not bench/ or cli/) that the cache key would miss.
for h in $(git ls-files -co --exclude-standard -- include src ir jit | grep -E '\.(h|def)$'); do
    grep -q "'$h'" meson.build || { echo "check_layers: $h is not in meson.build's lib_headers (the cache key)"; bad=1; }
done
# Calls, from the symbols of the library's objects (meson names them
# <path with / as _>.o, e.g. src_core_ops.c.o).
if [ $# -ge 1 ] && compgen -G "$1/libmaskjit.a.p/*.o" >/dev/null; then
    obj_layer() {
        case ${1##*/} in
        src_core_*) echo core ;; src_nn_*) echo nn ;; src_io_*) echo io ;; src_trace_*) echo trace ;;
        ir_*) echo ir ;; jit_*) echo jit ;; *) echo other ;;
        esac
    }
    defs=$(mktemp)
    for o in "$1"/libmaskjit.a.p/*.o; do
        nm --defined-only "$o" | awk -v l="$(obj_layer "$o")" '$2 ~ /^[TDBR]$/ {print $3, l}'
    done >"$defs"
    for o in "$1"/libmaskjit.a.p/*.o; do
        from=$(obj_layer "$o")
        while read -r sym to; do
            [ "$to" = "$from" ] && continue
            case " ${may[$from]} " in
            *" $to "*) ;;
            *) echo "check_layers: ${o##*/} ($from) calls $sym of $to"; bad=1 ;;
            esac
        done < <(nm -u "$o" | awk '{print $2}' | sort -u | join - <(sort -u "$defs"))
    done
    rm -f "$defs"
fi
[ $bad = 0 ] && echo "check_layers: ok"
exit $bad
