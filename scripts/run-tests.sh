#!/usr/bin/env bash
# Runs the whole test suite (unit and integration, real containerd, runc and
# Nix) and ends with one summary line: "N passed, N failed[, N skipped]".
# Extra arguments are test files (build/test/...js) to run instead of all.
#
# Both containerd lines are tested: every file runs against containerd 1.7
# (the system's), then the files that start a containerd run again against
# 2.x (build/containerd-2). CONTAINERD=1.7 or CONTAINERD=2 runs one line only.
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

# Files that run a containerd: they use the private containerd
# (devenv/containerd.ts) or the development environment (devenv/main.ts)
# that starts one.
containerd_files=()
for f in "${files[@]}"; do
  grep -qE 'devenv/(containerd|main)\.js' "$f" && containerd_files+=("$f")
done

# Tests start daemons and mount filesystems: one file at a time keeps them
# from competing for the machine's two cores and makes failures readable.
status=0
ran=0
runs=()
case "${CONTAINERD:-both}" in
  both) runs=("1.7" "2") ;;
  1.7|2) runs=("$CONTAINERD") ;;
  *) echo "CONTAINERD=$CONTAINERD: use 1.7, 2, or leave it unset for both" >&2; exit 2 ;;
esac
for line in "${runs[@]}"; do
  set_=("${files[@]}")
  # The second line repeats only what talks to containerd.
  if [ "${#runs[@]}" -gt 1 ] && [ "$line" = 2 ]; then set_=("${containerd_files[@]}"); fi
  [ ${#set_[@]} -eq 0 ] && continue
  echo "# containerd line $line: ${#set_[@]} test files"
  ran=$((ran + 1))
  CONTAINERD=$line npx tap --jobs=1 --timeout=1800 --reporter=tap "${set_[@]}" 2>&1 | tee -a "$out"
  s=${PIPESTATUS[0]}
  [ "$s" -ne 0 ] && status=$s
done

# tap closes each run with "# { total: T, pass: P, fail: F, skip: S, todo: D }".
summaries=$(grep -E '^# \{ total:' "$out")
sum() { echo "$summaries" | grep -oE "$1: [0-9]+" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}'; }
pass=$(sum pass); fail=$(sum fail); skip=$(sum skip)
# SKIP lines printed by tests that could not run here, with their reasons.
grep -E '^\s*SKIP: ' "$out" | sed 's/^\s*//' | sort -u
# Which containerd versions the tests ran (printed by devenv/containerd.ts).
versions=$(grep -oE '^\s*CONTAINERD: .*' "$out" | sed 's/^\s*CONTAINERD: //' | sort -u | paste -sd, - | sed 's/,/, /g')
echo "containerd versions tested: ${versions:-none}"
if [ "$(echo "$summaries" | grep -c .)" -lt "$ran" ]; then
  echo "test runner produced no summary" >&2
  fail=$((fail + 1))
  status=1
fi
line="$pass passed, $fail failed"
[ "$skip" != 0 ] && line="$line, $skip skipped"
echo "$line"
[ "$status" -eq 0 ] && [ "$fail" -eq 0 ]
