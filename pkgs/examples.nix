# The example images, for a package set with the overlay applied:
#   import ./examples.nix (import <nixpkgs> { overlays = [ (import ./overlay.nix) ]; })
pkgs:
rec {
  hello = pkgs.callPackage ./images/hello.nix { };
  redis = pkgs.callPackage ./images/redis.nix { };
  redisWithShell = pkgs.callPackage ./images/redisWithShell.nix { redisImage = redis; };
}
