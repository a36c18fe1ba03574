#!/bin/sh
# Build the fully static release binary that every deployment uses:
#   target/x86_64-unknown-linux-musl/release/fibd (or under $CARGO_TARGET_DIR).
# The size and speed settings live in Cargo.toml's [profile.release].
set -eu

TARGET=x86_64-unknown-linux-musl
cd "$(dirname "$0")/.."

# rustup is the only source of the musl standard library here; a toolchain
# without rustup must already have the target.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$TARGET"; then
        rustup target add "$TARGET"
    fi
fi

cargo build --release --locked --target "$TARGET"

bin="${CARGO_TARGET_DIR:-target}/$TARGET/release/fibd"
if ! command -v file >/dev/null 2>&1; then
    echo "build-static: 'file' is needed to check the binary (apt-get install file)" >&2
    exit 1
fi
desc=$(file -b "$bin")
# Rust's musl target produces a static PIE; `file` calls that "static-pie
# linked". Anything with an interpreter or "dynamically linked" is wrong.
case $desc in
    *"statically linked"* | *"static-pie linked"*) ;;
    *)
        echo "build-static: $bin is not statically linked: $desc" >&2
        exit 1
        ;;
esac
case $desc in
    *interpreter*)
        echo "build-static: $bin needs a dynamic loader: $desc" >&2
        exit 1
        ;;
esac
size=$(wc -c <"$bin" | tr -d ' ')
echo "build-static: $bin ($size bytes, static)"
