# Home Manager: virtualisation.containerd.rootless (see ../common).
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  rl = import ../rootless.nix { inherit lib pkgs; };
  cfg = config.virtualisation.containerd.rootless;
in
{
  imports = [ ../common/containerd-rootless.nix ];

  config = lib.mkIf cfg.enable {
    home.sessionVariablesExtra = nsLib.containerdEnvInit cfg;
    home.packages = [ cfg.package cfg.nsenter ];
    systemd.user.services.containerd = rl.containerdUnit cfg;
  };
}
