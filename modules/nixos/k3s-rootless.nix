# services.k3s.rootless as a NixOS user service (see ../common/k3s-rootless.nix).
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.k3s.rootless;
in
{
  imports = [ ../common/k3s-rootless.nix ./containerd-rootless.nix ./nix-snapshotter-rootless.nix ];

  config = lib.mkIf cfg.enable {
    systemd.user.services.k3s = nsLib.toNixosUnit cfg.unit;

    environment.extraInit = cfg.envInit;

    # The kubelet in a user namespace needs these controllers delegated
    # (cgroup v2) and IP forwarding for pod networking.
    systemd.services."user@".serviceConfig.Delegate = "cpu cpuset io memory pids";
    boot.kernel.sysctl."net.ipv4.ip_forward" = lib.mkDefault 1;
  };
}
