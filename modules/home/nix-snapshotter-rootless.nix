# Home Manager: services.nix-snapshotter.rootless (see ../common).
{ config, lib, pkgs, options, ... }:
let
  rl = import ../rootless.nix { inherit lib pkgs; };
  cfg = config.services.nix-snapshotter.rootless;
in
{
  imports = [ ../common/nix-snapshotter-rootless.nix ./containerd-rootless.nix ];

  config = lib.mkIf cfg.enable {
    home.packages = [ cfg.package ];
    systemd.user.services.nix-snapshotter = rl.snapshotterUnit {
      inherit cfg;
      customConfigFile = options.services.nix-snapshotter.rootless.configFile.highestPrio < 1500;
    };
  };
}
