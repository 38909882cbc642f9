#!/bin/bash
# Interleaved A/B of whole processes (for what only a process can change: XLA_FLAGS, the CPU
# split): runs benchmarks.cpu_vs_reference once per variant, variants alternating, ROUNDS
# times, and appends one line per run to OUT: round, name, wall/user/sys seconds, its JSON.
#
#   benchmarks/alternate.sh OUT ROUNDS STEPS "NAME|XLA_FLAGS|ARGS" ["NAME|XLA_FLAGS|ARGS" ...]
#   benchmarks/alternate.sh /tmp/ab.txt 3 150 "d2||" "d1||--cpu_devices=1" \
#       "noeigen|--xla_cpu_multi_thread_eigen=false|"
#
# Take the median of each variant's step_ms_median over the rounds.
set -u
cd "$(dirname "$0")/.."
OUT=$1 ROUNDS=$2 STEPS=$3
shift 3
PYTHON=${PYTHON:-python}
TIMES=$(mktemp)
for round in $(seq "$ROUNDS"); do
  for variant in "$@"; do
    IFS='|' read -r name flags extra <<< "$variant"
    # shellcheck disable=SC2086  # ARGS split into words on purpose
    line=$(XLA_FLAGS="$flags" /usr/bin/time -f "%e %U %S" -o "$TIMES" \
      "$PYTHON" -m benchmarks.cpu_vs_reference --steps="$STEPS" $extra 2>/dev/null | tail -1)
    echo "$round $name $(cat "$TIMES") $line" >> "$OUT"
  done
done
rm -f "$TIMES"
