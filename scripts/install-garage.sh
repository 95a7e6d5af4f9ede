#!/usr/bin/env bash
# Builds garage (a real distributed S3-compatible object store) into target/tools/garage for
# scripts/bench's object-storage figures. About 8 minutes on two cores; kept between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/target/tools/garage"
if [ -x "$root/bin/garage" ]; then
    exit 0
fi
cargo install garage --version 2.5.0 --locked --root "$root"
