#!/usr/bin/env bash
# Builds overlay-proxy (bench/snapshotter/go-proxy/main.go): containerd's own
# overlay snapshotter served as a proxy plugin, the Go reference of the
# snapshotter benchmark. Offline and without touching the system: Debian's
# packaged Go sources of containerd 1.7 and of the packages it imports, and
# Debian's Go toolchain, are fetched with `apt-get download` and unpacked
# under the cache directory; the program is built in GOPATH mode
# (GO111MODULE=off, GOPROXY=off) from those sources alone. apt sees trixie
# through a private configuration (scripts/lib/apt-suite.sh), so the
# system's apt sources need not list it.
#
#   bash bench/snapshotter/go-proxy.sh [CACHE_DIR]    (default build/go-proxy)
#
# Prints the binary's path on stdout. Idempotent: with the packages unpacked
# and the binary newer than its source, it does nothing.
#
# Why unpack rather than `apt-get install`: containerd's 1.7 sources exist in
# trixie only, and the -dev packages there depend on trixie's versions of
# each other and of C libraries; installing them on bookworm pulls in
# trixie's libc. Only the Go sources are needed (the program builds with
# CGO_ENABLED=0), so only those are unpacked, and nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/apt-suite.sh

cache=$(realpath -m "${1:-build/go-proxy}")
src=bench/snapshotter/go-proxy/main.go
bin="$cache/overlay-proxy"

# Go toolchain, then the import closure of snapshots/overlay,
# contrib/snapshotservice and google.golang.org/grpc in containerd 1.7.24
# (found by building until nothing was missing).
PKGS=(golang-1.24-go golang-1.24-src
      golang-github-containerd-containerd-dev
      golang-github-containerd-continuity-dev golang-github-containerd-errdefs-dev
      golang-github-containerd-log-dev golang-github-containerd-typeurl-dev
      golang-github-coreos-bbolt-dev golang-github-gogo-protobuf-dev
      golang-github-golang-protobuf-1-5-dev golang-github-google-go-cmp-dev
      golang-github-hashicorp-errwrap-dev golang-github-hashicorp-go-multierror-dev
      golang-github-moby-sys-dev golang-github-sirupsen-logrus-dev
      golang-golang-x-net-dev golang-golang-x-sync-dev golang-golang-x-sys-dev
      golang-golang-x-text-dev golang-google-genproto-dev golang-google-grpc-dev
      golang-google-protobuf-dev)
stamp="$cache/root/.packages"
want=$(printf '%s\n' "${PKGS[@]}")

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # trixie through a private apt configuration: the system's apt is left alone.
  apt_suite "$cache/apt-trixie" trixie
  if ! apt-get "${APT_SUITE_OPTS[@]}" update -qq; then
    echo "go-proxy.sh: cannot read Debian trixie's package lists (containerd's Go sources are packaged there)" >&2
    exit 1
  fi
  rm -rf "$cache/debs" "$cache/root"
  mkdir -p "$cache/debs" "$cache/root"
  (cd "$cache/debs" && apt-get "${APT_SUITE_OPTS[@]}" download -qq "${PKGS[@]/%//trixie}" >/dev/null)
  for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done
  rm -rf "$cache/debs" "$cache/apt-trixie"
  printf '%s\n' "$want" > "$stamp"
fi

if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ "$stamp" -nt "$bin" ]; then
  gopath="$cache/gopath"
  rm -rf "$gopath"
  mkdir -p "$gopath/src/overlay-proxy"
  # Debian's layout is a GOPATH already: /usr/share/gocode/src/<import path>.
  ln -s "$cache/root/usr/share/gocode/src"/* "$gopath/src/"
  cp "$src" "$gopath/src/overlay-proxy/main.go"
  (
    cd "$gopath/src/overlay-proxy"
    env GOROOT="$cache/root/usr/lib/go-1.24" GOPATH="$gopath" GO111MODULE=off GOPROXY=off GOFLAGS= \
      GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE="$cache/gocache" \
      "$cache/root/usr/lib/go-1.24/bin/go" build -trimpath -o "$bin.tmp" .
  )
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
