# A stand-in for `import nixpkgs { system; overlays; }`, enough to evaluate
# flake.nix and default.nix (eval-flake.nix): the packages and builders of
# standins.nix with nixpkgs' lib of the 24.11 sources ($NIX_SOURCES), and
# the overlays applied as nixpkgs applies them (a fixpoint).
{ system ? "x86_64-linux", overlays ? [ ], config ? { } }:
let
  sources = builtins.getEnv "NIX_SOURCES";
  nixpkgs = (if sources == "" then throw "fake-nixpkgs: NIX_SOURCES is not set" else sources) + "/nixpkgs";
  lib = import (nixpkgs + "/lib");
  standins = import ../standins.nix { inherit lib nixpkgs; era = "24.11"; };
in
standins.pkgsWithOverlays overlays
