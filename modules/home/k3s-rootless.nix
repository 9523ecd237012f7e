# Home Manager: services.k3s.rootless (see ../common/k3s-rootless.nix).
# The system must delegate cgroup controllers to user services
# (systemd.services."user@".serviceConfig.Delegate on NixOS).
{ config, lib, ... }:
let
  cfg = config.services.k3s.rootless;
in
{
  imports = [ ../common/k3s-rootless.nix ./containerd-rootless.nix ./nix-snapshotter-rootless.nix ];

  config = lib.mkIf cfg.enable {
    systemd.user.services.k3s = cfg.unit;
    home.sessionVariablesExtra = cfg.envInit;
  };
}
