# Evaluates NixOS and Home Manager configurations the way NixOS and Home
# Manager do, against the real option declarations of one NixOS release:
#
#   h = import ./harness.nix { sources = /path/to/nix-sources; era = "24.11"; };
#   h.nixos { modules = [ ... ]; overlay = true; }   # -> evalModules result
#   h.home  { modules = [ ... ]; }
#
# `sources` holds nixpkgs' lib, the NixOS modules the project's modules
# meet (containerd, k3s, systemd, environment, assertions, meta) and Home
# Manager, for 24.11 at its top and for 26.05 under current/ (see its
# README). What those files do not declare comes from standins.nix.
{ sources, era }:
let
  root =
    if era == "24.11" then sources
    else if era == "26.05" then sources + "/current"
    else throw "harness: unknown era ${era} (24.11 or 26.05)";
  nixpkgs = root + "/nixpkgs";
  lib = import (nixpkgs + "/lib");
  standins = import ./standins.nix { inherit lib era nixpkgs; };

  nixosModulesDir = nixpkgs + "/nixos/modules";

  # k3s moved to services/cluster/rancher/ (shared with rke2) after 24.11.
  k3sModule =
    if era == "24.11" then nixosModulesDir + "/services/cluster/k3s/default.nix"
    else nixosModulesDir + "/services/cluster/rancher/default.nix";

  realNixosModules = [
    (nixosModulesDir + "/system/boot/systemd-subset.nix")
    (nixosModulesDir + "/config/option-excerpts.nix")
    (nixosModulesDir + "/misc/assertions.nix")
    (nixosModulesDir + "/misc/meta.nix")
    (nixosModulesDir + "/virtualisation/containerd.nix")
    k3sModule
  ];

  overlay = import ../../pkgs/overlay.nix;
  pkgsFor = withOverlay: if withOverlay then standins.pkgsWithOverlays [ overlay ] else standins.pkgs;

  nixos = { modules, overlay ? false }:
    let pkgs = pkgsFor overlay; in
    lib.evalModules {
      class = "nixos";
      specialArgs = { modulesPath = toString nixosModulesDir; };
      modules = realNixosModules ++ [
        standins.nixos
        ({ config, ... }: {
          # As nixos/modules/misc/nixpkgs.nix and extra-arguments.nix do.
          _module.args = {
            inherit pkgs;
            utils = import (nixpkgs + "/nixos/lib/utils.nix") { inherit lib config pkgs; };
          };
        })
      ] ++ modules;
    };

  hmDir = root + "/home-manager/modules";
  hmLib = import (hmDir + "/lib/stdlib-extended.nix") lib;

  # As home-manager/modules/default.nix, without the nixpkgs module (pkgs
  # is given, as with home-manager.useGlobalPkgs).
  home = { modules, overlay ? false }:
    let pkgs = pkgsFor overlay; in
    hmLib.evalModules {
      class = "homeManager";
      specialArgs = { modulesPath = toString hmDir; };
      modules = import (hmDir + "/modules.nix") { inherit pkgs; lib = hmLib; useNixpkgsModule = false; }
        ++ [{
        _module.args.pkgs = lib.mkForce pkgs;
        home.username = "alice";
        home.homeDirectory = "/home/alice";
        home.stateVersion = era;
        # The nixpkgs lib of the 24.11 sources is a nixpkgs.lib mirror commit
        # whose .version already says 25.05; Home Manager would warn about a
        # mismatch that a real 24.11 system does not have.
        home.enableNixpkgsReleaseCheck = false;
      }] ++ modules;
    };
in
{
  inherit lib standins nixos home era;
  pkgs = standins.pkgs;
}
