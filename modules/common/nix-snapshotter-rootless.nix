# Options of services.nix-snapshotter.rootless, shared by the NixOS and Home
# Manager modules (each adds the user unit in its own form).
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.nix-snapshotter.rootless;
  ctrd = config.virtualisation.containerd.rootless;
in
{
  options.services.nix-snapshotter.rootless = nsLib.snapshotterOptions cfg // {
    enable = lib.mkEnableOption ''
      nix-snapshotter for rootless containerd (a user service running inside
      the rootless containerd's namespaces; see
      virtualisation.containerd.rootless, enabled and integrated by
      default)'';
  };

  config = lib.mkIf cfg.enable {
    services.nix-snapshotter.rootless = {
      # Paths as seen inside the rootless namespace, where /run and /var/lib
      # are private (containerd-rootless bind-mounts its own over them).
      settings = {
        address = lib.mkDefault nsLib.defaultAddress;
        image_service.containerd_address = lib.mkDefault nsLib.defaultContainerdAddress;
      };
    };

    virtualisation.containerd.rootless = {
      enable = lib.mkDefault true;
      nixSnapshotterIntegration = lib.mkDefault true;
    };

    warnings =
      lib.optional (!ctrd.enable) ''
        services.nix-snapshotter.rootless is enabled but
        virtualisation.containerd.rootless is not: the snapshotter runs in
        the rootless containerd's namespaces and cannot start without it.
      ''
      ++ lib.optional (ctrd.enable && !ctrd.nixSnapshotterIntegration) ''
        services.nix-snapshotter.rootless is enabled but
        virtualisation.containerd.rootless.nixSnapshotterIntegration is
        off: the rootless containerd has no `nix` snapshotter.
      '';
  };
}
