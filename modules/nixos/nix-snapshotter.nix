# services.nix-snapshotter: the daemon as a system service, started before
# containerd (see containerd.nix for containerd's side).
#
# `services.nix-snapshotter.enable = true` alone gives a working system:
# containerd is enabled and integrated (both mkDefault, so either can be
# turned off), and a configuration where nothing uses the snapshotter warns.
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.nix-snapshotter;
  ctrd = config.virtualisation.containerd;
in
{
  imports = [ ./containerd.nix ];

  options.services.nix-snapshotter = nsLib.snapshotterOptions cfg // {
    enable = lib.mkEnableOption ''
      nix-snapshotter, the containerd snapshotter for Nix store paths (with
      containerd enabled and integrated by default)'';
  };

  config = lib.mkIf cfg.enable {
    services.nix-snapshotter = {
      settings = {
        address = lib.mkDefault nsLib.defaultAddress;
        root = lib.mkDefault nsLib.defaultRoot;
        image_service.containerd_address =
          lib.mkDefault (ctrd.settings.grpc.address or nsLib.defaultContainerdAddress);
      };
    };

    virtualisation.containerd = {
      enable = lib.mkDefault true;
      nixSnapshotterIntegration = lib.mkDefault true;
    };

    warnings =
      lib.optional (!ctrd.enable) ''
        services.nix-snapshotter is enabled but virtualisation.containerd is
        not: no containerd on this system uses the snapshotter.
      ''
      ++ lib.optional (ctrd.enable && !ctrd.nixSnapshotterIntegration) ''
        services.nix-snapshotter is enabled but
        virtualisation.containerd.nixSnapshotterIntegration is off:
        containerd has no `nix` snapshotter unless its settings name the
        proxy plugin themselves.
      '';

    # The daemon's default --config location, for running it by hand.
    environment.etc."nix-snapshotter/config.toml".source = cfg.configFile;

    environment.systemPackages = [ cfg.package ];

    systemd.services.nix-snapshotter = lib.mkMerge [
      (nsLib.toNixosUnit { Service = nsLib.snapshotterService; })
      {
        description = "nix-snapshotter, containerd snapshotter for Nix store paths";
        wantedBy = [ "multi-user.target" ];
        before = [ "containerd.service" ];
        after = [ "local-fs.target" ];
        path = cfg.path ++ nsLib.requiredPath;
        restartTriggers = [ cfg.configFile ];
        serviceConfig.ExecStart = nsLib.snapshotterCommand cfg [ ];
      }
    ];
  };
}
