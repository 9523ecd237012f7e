# nix-snapshotter without flakes.
#
#   nix-build -A nix-snapshotter            # the package (bins: nix-snapshotter, nix2container)
#   nix-build -A images.hello               # an example image archive
#   nix-build -A tests.snapshotter          # a NixOS VM test
#   nix-build --arg pkgs 'import <nixpkgs> { }' -A nix-snapshotter
#
# NixOS: imports = [ /path/to/nix-snapshotter/modules/nixos ];
# Home Manager: imports = [ /path/to/nix-snapshotter/modules/home ];
# (the modules run the package built from this checkout, with or without
# the overlay: nixpkgs' own pkgs.nix-snapshotter is another program).
#
# Without `pkgs`, nixpkgs is the revision pinned in flake.lock.
{ pkgs ? null
, system ? builtins.currentSystem
}:
let
  locked = (builtins.fromJSON (builtins.readFile ./flake.lock)).nodes.nixpkgs.locked;
  pinnedNixpkgs = fetchTarball {
    url = "https://github.com/${locked.owner}/${locked.repo}/archive/${locked.rev}.tar.gz";
    sha256 = locked.narHash;
  };

  overlay = import ./pkgs/overlay.nix;
  basePkgs = if pkgs != null then pkgs else import pinnedNixpkgs { inherit system; };
  pkgs' = basePkgs.extend overlay;
  k8s = pkgs'.callPackage ./pkgs/k8s-resources.nix { };
in
{
  inherit overlay;
  inherit (pkgs') nix-snapshotter;

  images = import ./pkgs/examples.nix pkgs';

  k8sResources = { inherit (k8s) redisPod redisService; };

  inherit (import ./modules/outputs.nix) nixosModules homeModules;

  tests = builtins.mapAttrs (_: pkgs'.testers.runNixOSTest) {
    snapshotter = ./modules/nixos/tests/snapshotter.nix;
    push-n-pull = ./modules/nixos/tests/push-n-pull.nix;
    kubernetes = ./modules/nixos/tests/kubernetes.nix;
    k3s = ./modules/nixos/tests/k3s.nix;
    k3s-rootless = ./modules/nixos/tests/k3s-rootless.nix;
  };
}
