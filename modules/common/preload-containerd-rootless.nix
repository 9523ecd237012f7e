# Options of services.preload-containerd.rootless (NixOS and Home Manager).
{ lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
in
{
  # The rootless containerd (virtualisation.containerd.rootless) by default.
  options.services.preload-containerd.rootless = nsLib.preloadOptions "$XDG_RUNTIME_DIR/containerd/containerd.sock";
}
