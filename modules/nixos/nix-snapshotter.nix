# services.nix-snapshotter: the daemon as a system service, started before
# containerd (see containerd.nix for containerd's side).
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.nix-snapshotter;
in
{
  options.services.nix-snapshotter = nsLib.snapshotterOptions // {
    enable = lib.mkEnableOption "nix-snapshotter, the containerd snapshotter for Nix store paths";
  };

  config = lib.mkIf cfg.enable {
    services.nix-snapshotter = {
      settings = {
        address = lib.mkDefault nsLib.defaultAddress;
        root = lib.mkDefault nsLib.defaultRoot;
        image_service.containerd_address =
          lib.mkDefault (config.virtualisation.containerd.settings.grpc.address or nsLib.defaultContainerdAddress);
      };
      configFile = lib.mkOptionDefault (nsLib.tomlFormat.generate "nix-snapshotter.toml" cfg.settings);
    };

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
        inherit (cfg) path;
        restartTriggers = [ cfg.configFile ];
        serviceConfig.ExecStart = nsLib.snapshotterCommand cfg [ ];
      }
    ];
  };
}
