#!/usr/bin/env bash
# Search benchmark (issue #19): terminal recordings written as the bastion writes them, indexed
# by the real indexer (asciinema's emulator, then SQLite FTS5 trigram), then searched, with
# `grep -rlF` over the same recordings as the baseline. Not a test: it prints a Markdown table
# to paste into docs/PERFORMANCE.md.
#
#   bench/review.sh                       # 1 GB of output in 1000 recordings, 50 with the needle
#   MB=100 SESSIONS=100 NEEDLES=10 bench/review.sh
#
# The indexing rate is of one core (the indexer is one task); a session printing 10 MB/s of text
# is kept up with when it is above 10.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${MB:-1024}
SESSIONS=${SESSIONS:-1000}
NEEDLES=${NEEDLES:-50}
STATEMENTS=${STATEMENTS:-1000000}
cargo build --release --quiet --example index_bench
./target/release/examples/index_bench "$MB" "$SESSIONS" "$NEEDLES" "$STATEMENTS"
