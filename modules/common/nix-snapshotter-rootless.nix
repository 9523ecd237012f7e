# Options of services.nix-snapshotter.rootless, shared by the NixOS and Home
# Manager modules (each adds the user unit in its own form).
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.nix-snapshotter.rootless;
in
{
  options.services.nix-snapshotter.rootless = nsLib.snapshotterOptions // {
    enable = lib.mkEnableOption ''
      nix-snapshotter for rootless containerd (a user service running inside
      the rootless containerd's namespaces; see
      virtualisation.containerd.rootless)'';
  };

  config = lib.mkIf cfg.enable {
    services.nix-snapshotter.rootless = {
      # Paths as seen inside the rootless namespace, where /run and /var/lib
      # are private (containerd-rootless bind-mounts its own over them).
      settings = {
        address = lib.mkDefault nsLib.defaultAddress;
        image_service.containerd_address = lib.mkDefault nsLib.defaultContainerdAddress;
      };
      configFile = lib.mkOptionDefault (nsLib.tomlFormat.generate "nix-snapshotter.toml" cfg.settings);
    };
  };
}
