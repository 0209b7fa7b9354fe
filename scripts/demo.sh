#!/usr/bin/env bash
# `make run`: builds the binaries and starts the driver locally on a private socket.
# Later stages add mock-rds and a full volume round trip.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "==> starting rds-csi (controller) on unix://$dir/csi.sock; Ctrl-C stops it"
./target/debug/rds-csi serve --controller --endpoint "unix://$dir/csi.sock" --metrics-address ""
