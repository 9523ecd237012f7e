#!/usr/bin/env bash
# Installs what nix-snapshotter needs to build, test and run its demo on a
# Debian (bookworm) machine as root: containerd >= 1.7 and gVisor's runsc
# (both from trixie, pinned so nothing else comes from there), runc, Nix,
# busybox, the rootless tools (rootlesskit, slirp4netns, uidmap,
# fuse-overlayfs) and the npm packages; and containerd 2.x unpacked under
# build/containerd-2 (scripts/fetch-containerd2.sh), never installed.
# Idempotent: a second run installs nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/apt-suite.sh

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: installing system packages needs root (run as root, or install: $*)" >&2
    exit 1
  fi
}

have_containerd17() {
  command -v containerd >/dev/null 2>&1 || return 1
  local v
  v=$(containerd --version | awk '{print $3}' | sed 's/^v//')
  [ "$(printf '%s\n1.7.0\n' "$v" | sort -V | head -n1)" = "1.7.0" ]
}

APT_PKGS=(runc nix-bin busybox-static patchelf gcc libc6-dev redis-server skopeo docker-registry apache2-utils
          redis-tools iproute2 util-linux ca-certificates curl strace zstd
          rootlesskit slirp4netns uidmap fuse-overlayfs fuse3)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# gVisor: trixie's runsc (2024) has the systrap platform, which needs no
# KVM and is faster than ptrace; bookworm's (2022) has only ptrace. The
# package is one static binary with no dependencies.
have_runsc() { command -v runsc >/dev/null 2>&1; }

if ! have_containerd17 || ! have_runsc || [ ${#missing[@]} -gt 0 ]; then
  need_root $(have_containerd17 || echo containerd) $(have_runsc || echo runsc) "${missing[@]}"
  export DEBIAN_FRONTEND=noninteractive
  if { ! have_containerd17 || ! have_runsc; } && [ ! -f /etc/apt/sources.list.d/nix-snapshotter-trixie.sources ]; then
    # containerd 1.7 honours Mount.target; bookworm ships 1.6. Take only
    # containerd and runsc from trixie: the low pin keeps libc and everything else.
    apt_suite_sources trixie > /etc/apt/sources.list.d/nix-snapshotter-trixie.sources
    apt_suite_pin trixie 100 > /etc/apt/preferences.d/nix-snapshotter-trixie
  fi
  apt-get update -qq
  pkgs=("${missing[@]}")
  have_containerd17 || pkgs+=(containerd/trixie)
  have_runsc || pkgs+=(runsc/trixie)
  # policy-rc.d keeps package scripts from starting system daemons: we run
  # private instances only.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# containerd 2.x for the tests and CONTAINERD=2 (docs/containerd.md); needs
# apt but not root.
bash scripts/fetch-containerd2.sh

# Nix: the machine's /etc/nix/nix.conf is left as it is. The project's own
# Nix calls get their settings (no sandbox, no build users, no
# substituters) from scripts/nix-conf/nix.conf through NIX_CONF_DIR, which
# the Makefile and scripts/nix-env.sh set.

# npm dependencies (better-sqlite3 builds from source when no prebuilt binary
# can be fetched).
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
