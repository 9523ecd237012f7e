# Options of services.preload-containerd.rootless (NixOS and Home Manager).
{ lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
in
{
  options.services.preload-containerd.rootless = nsLib.preloadOptions;
}
