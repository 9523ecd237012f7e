#!/usr/bin/env bash
# Checks of the Nix files that run without nixpkgs:
#
#   test/nix-eval/check.sh [parse|images|modules|all]   (default: all)
#
#   parse    every .nix file of the repository parses (nix-instantiate --parse)
#   images   pkgs/buildImage.nix builds the fixture images of images.nix for
#            real (mini-pkgs.nix, the compiled nix2container in build/), and a
#            rebuild (nix-build --check) gives identical archives
#   modules  with NIX_SOURCES (the nixpkgs and Home Manager sources of
#            nixos-24.11 and nixos-26.05: nixpkgs' lib, the NixOS modules the
#            project's modules meet, Home Manager; see harness.nix), evaluates
#            every NixOS and Home Manager configuration against their real
#            option declarations (eval-modules.nix), the NixOS tests' nodes
#            and scripts (eval-tests.nix), the package expression
#            (eval-package.nix) and flake.nix's outputs and default.nix
#            (eval-flake.nix). Without NIX_SOURCES it prints a SKIP line, but
#            in CI (CI=true) that is a failure: CI must check the modules.
#
# Prints "ok: ...", "FAIL: ..." or "SKIP: ..." lines; exits 1 on a failure.
# Needs nix-instantiate and nix-build (sandbox = false for images: the
# builders use host tools, like test/fixtures).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
what=${1:-all}
failed=0

fail() { echo "FAIL: $*"; failed=1; }

check_parse() {
  local n=0 f out
  while IFS= read -r -d '' f; do
    n=$((n + 1))
    if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
      fail "parse ${f#"$repo"/}: $out"
    fi
  done < <(find "$repo" \( -name node_modules -o -name build -o -name .git -o -name .tap \) -prune -o -name '*.nix' -type f -print0)
  [ "$n" -gt 0 ] || fail "parse: no .nix files found under $repo"
  echo "ok: $n .nix files parse"
}

check_images() {
  local bin="$repo/build/src/cli/nix2container.js" salt outs named log out
  if [ ! -f "$bin" ]; then
    fail "images: $bin is missing (npm run build first)"
    return
  fi
  salt="check-$$-$(date +%s)"
  log=$(mktemp)
  if ! outs=$(nix-build "$here/images.nix" --argstr nix2containerBin "$bin" --argstr salt "$salt" \
                -A named -A byNix -A registryScript -A containerdScript --no-out-link 2>"$log"); then
    fail "images: nix-build failed: $(tail -n 20 "$log")"
    rm -f "$log"
    return
  fi
  rm -f "$log"
  named=$(echo "$outs" | grep -- '-nix-image-Hello.tar$' || true)
  if [ -z "$named" ] || ! tar -tf "$named" | grep -qx index.json; then
    fail "images: no archive with index.json among: $outs"
    return
  fi
  echo "ok: buildImage built $(echo "$outs" | wc -l) outputs"
  if ! out=$(nix-build "$here/images.nix" --argstr nix2containerBin "$bin" --argstr salt "$salt" \
               -A named -A byNix --check --no-out-link 2>&1); then
    fail "images: a rebuild differs (nix-build --check): $out"
    return
  fi
  echo "ok: rebuilt archives are identical"
}

check_modules() {
  if [ -z "${NIX_SOURCES:-}" ]; then
    if [ "${CI:-}" = true ]; then
      fail "modules: NIX_SOURCES is not set; CI must evaluate the modules (.ci/run sets it to ../shared/nix-sources)"
    else
      echo "SKIP: module evaluation needs NIX_SOURCES (the nixpkgs and Home Manager sources, see test/nix-eval/harness.nix)"
    fi
    return
  fi
  if [ ! -f "$NIX_SOURCES/nixpkgs/lib/default.nix" ] || [ ! -f "$NIX_SOURCES/current/nixpkgs/lib/default.nix" ]; then
    fail "modules: NIX_SOURCES=$NIX_SOURCES lacks nixpkgs/lib or current/nixpkgs/lib"
    return
  fi
  local f out n err
  export NIX_SOURCES
  # The answer is stdout alone: Nix also writes warnings to stderr (such as
  # a busy store database it then retries), which say nothing of the modules.
  err=$(mktemp)
  for f in eval-modules.nix eval-tests.nix eval-package.nix eval-flake.nix; do
    if ! out=$(nix-instantiate --eval --strict --json --read-write-mode "$here/$f" \
                 --arg sources "$NIX_SOURCES" -A failures 2>"$err"); then
      fail "$f: evaluation failed: $(tail -n 30 "$err")"
      continue
    fi
    if [ "$out" != "[]" ]; then
      fail "$f: $out $(tail -n 30 "$err")"
      continue
    fi
    n=$(nix-instantiate --eval --strict --json --read-write-mode "$here/$f" --arg sources "$NIX_SOURCES" -A checks 2>/dev/null | grep -v '^trace: ')
    echo "ok: $f: $n checks hold"
  done
  rm -f "$err"
}

case "$what" in
  parse) check_parse ;;
  images) check_images ;;
  modules) check_modules ;;
  all) check_parse; check_images; check_modules ;;
  *) echo "usage: $0 [parse|images|modules|all]" >&2; exit 2 ;;
esac
exit "$failed"
