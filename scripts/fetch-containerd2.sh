#!/usr/bin/env bash
# Puts containerd 2.x (Debian sid's `containerd` package) under
# build/containerd-2 WITHOUT installing it: the system keeps its containerd
# 1.7, and the test harness and development environment run 2.x from here
# (CONTAINERD=2). sid's package depends only on libc6 >= 2.34 and runc, so
# its binaries run on bookworm.
#
# apt sees sid only through a private configuration under build/apt-sid
# (scripts/lib/apt-suite.sh: its own sources, lists and cache, with a pin of
# -1 on sid so nothing can be installed from it even by mistake); the
# system's apt sources are left alone. `apt-get download` fetches the .deb,
# `dpkg -x` unpacks it.
# Idempotent: when build/containerd-2 holds a containerd 2.x it does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=build/containerd-2
bin=$dest/usr/bin/containerd

major() { "$1" --version 2>/dev/null | awk '{print $3}' | sed 's/^v//' | cut -d. -f1; }

if [ -x "$bin" ] && [ "$(major "$bin")" -ge 2 ] 2>/dev/null; then
  exit 0
fi

. scripts/lib/apt-suite.sh
apt_dir=$PWD/build/apt-sid
apt_suite "$apt_dir" sid
apt_opts=("${APT_SUITE_OPTS[@]}")

echo "setup: fetching containerd 2.x from Debian sid into $dest (not installed)"
apt-get "${apt_opts[@]}" update -qq
work=$(mktemp -d build/containerd-2.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" download -qq containerd/sid)
deb=$(ls "$work"/containerd_*.deb)
dpkg -x "$deb" "$work/root"
v=$(major "$work/root/usr/bin/containerd" || true)
if [ -z "$v" ] || [ "$v" -lt 2 ]; then
  echo "setup: $(basename "$deb") holds no runnable containerd 2.x" >&2
  exit 1
fi
# Swap in whole: a half-unpacked tree never sits at $dest.
rm -rf "$dest"
mv "$work/root" "$dest"
rm -rf "$apt_dir/cache"
echo "setup: $("$bin" --version)"
