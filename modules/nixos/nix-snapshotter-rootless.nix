# services.nix-snapshotter.rootless as a NixOS user service (for every
# user; it starts with the user's rootless containerd).
{ config, lib, pkgs, options, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  rl = import ../rootless.nix { inherit lib pkgs; };
  cfg = config.services.nix-snapshotter.rootless;
in
{
  imports = [ ../common/nix-snapshotter-rootless.nix ./containerd-rootless.nix ];

  config = lib.mkIf cfg.enable {
    systemd.user.services.nix-snapshotter = nsLib.toNixosUnit (rl.snapshotterUnit {
      inherit cfg;
      customConfigFile = options.services.nix-snapshotter.rootless.configFile.highestPrio < 1500;
    });
  };
}
