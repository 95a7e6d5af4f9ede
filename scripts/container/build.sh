#!/usr/bin/env bash
# The build step of the container image: the Dockerfile's build stage runs exactly this
# script, and so does scripts/test (so a step that breaks fails the test run too).
# Usage: scripts/container/build.sh OUT_DIR   -> OUT_DIR/nephos (release build)
set -euo pipefail
out=${1:?usage: scripts/container/build.sh OUT_DIR}
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin nephos
mkdir -p "$out"
install -m 0755 target/release/nephos "$out/nephos"
"$out/nephos" --version
