#!/usr/bin/env bash
# Runs the whole test suite (unit and integration, real containerd, runc and
# Nix) and ends with one summary line: "N passed, N failed[, N skipped]".
# Extra arguments are test files (build/test/...js) to run instead of all.
set -uo pipefail
cd "$(dirname "$0")/.."
# The tests' Nix settings (scripts/nix-conf/nix.conf).
. scripts/nix-env.sh
out=$(mktemp)
trap 'rm -f "$out"' EXIT

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  mapfile -t files < <(find build/test -name '*.test.js' | sort)
fi

# Tests start daemons and mount filesystems: one file at a time keeps them
# from competing for the machine's two cores and makes failures readable.
npx tap --jobs=1 --timeout=1800 --reporter=tap "${files[@]}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}

# tap closes with "# { total: T, pass: P, fail: F, skip: S, todo: D }".
summary=$(grep -E '^# \{ total:' "$out" | tail -n1)
num() { echo "$summary" | grep -oE "$1: [0-9]+" | grep -oE '[0-9]+' || echo 0; }
pass=$(num pass); fail=$(num fail); skip=$(num skip)
# SKIP lines printed by tests that could not run here, with their reasons.
grep -E '^\s*SKIP: ' "$out" | sed 's/^\s*//' | sort -u
if [ -z "$summary" ]; then
  echo "test runner produced no summary" >&2
  fail=$((fail + 1))
  status=1
fi
line="$pass passed, $fail failed"
[ "$skip" != 0 ] && line="$line, $skip skipped"
echo "$line"
[ "$status" -eq 0 ] && [ "$fail" -eq 0 ]
