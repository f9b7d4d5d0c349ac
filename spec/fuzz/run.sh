#!/usr/bin/env bash
# Runs every parser fuzz target for SECONDS each, starting from the seed
# corpus kept in spec/fuzz/corpus/<target>/ (new finds go to a scratch dir,
# so the repo corpus only changes when someone adds a seed on purpose).
set -euo pipefail
build=${1:?build dir}
seconds=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
for t in request response chunked ws; do
  work=$(mktemp -d)
  echo "fuzz_$t: ${seconds}s"
  log="$build/fuzz_$t.log"
  status=0
  "$build/spec/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=8192 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$build/" "$work" "$here/corpus/$t" >"$log" 2>&1 || status=$?
  rm -rf "$work"
  grep -E "^stat::number_of_executed_units|^Done" "$log" | sed 's/^/  /' || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz_$t failed (exit $status); the input is in $build/crash-* or leak-*"
    exit 1
  fi
done
echo "fuzz: all targets ran ${seconds}s without findings"
