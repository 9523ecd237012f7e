# virtualisation.containerd.rootless as a NixOS user service (for every
# user; see ../common/containerd-rootless.nix).
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  rl = import ../rootless.nix { inherit lib pkgs; };
  cfg = config.virtualisation.containerd.rootless;
in
{
  imports = [ ../common/containerd-rootless.nix ];

  config = lib.mkIf cfg.enable {
    environment.extraInit = nsLib.containerdEnvInit cfg;
    environment.systemPackages = [ cfg.package cfg.nsenter ];

    systemd.user.services.containerd = lib.mkMerge [
      (nsLib.toNixosUnit (rl.containerdUnit cfg))
      { environment = config.networking.proxy.envVars; }
    ];
  };
}
