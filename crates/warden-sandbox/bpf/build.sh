#!/bin/sh
# Rebuilds confine.bpf.o from confine.bpf.c. Needs clang and libbpf-dev
# (apt-get install -y clang llvm libbpf-dev). The object is committed, so building Warden needs
# neither; CI runs `./build.sh --check` to prove the committed object is this source's.
set -eu
cd "$(dirname "$0")"
out=confine.bpf.o
if [ "${1:-}" = "--check" ]; then
    out=$(mktemp)
    trap 'rm -f "$out"' EXIT
fi
clang -O2 -g -target bpf -Wall -Werror \
    -I/usr/include/"$(uname -m)"-linux-gnu \
    -fdebug-prefix-map="$(pwd)"=. \
    -c confine.bpf.c -o "$out"
if [ "${1:-}" = "--check" ]; then
    cmp -s "$out" confine.bpf.o || {
        echo "confine.bpf.o is not what confine.bpf.c builds to: run crates/warden-sandbox/bpf/build.sh and commit it" >&2
        exit 1
    }
    echo "confine.bpf.o matches its source"
fi
