# Shared by vm.nix and vm-rootless.nix: a throwaway QEMU VM to try
# nix-snapshotter (`nix run .#vm`), with the example images and the redis
# Kubernetes resources under /etc/kubernetes/redis/.
{ lib, pkgs, modulesPath, ... }:
let
  pkgs' = if pkgs ? nix-snapshotter then pkgs else pkgs.extend (import ../../pkgs/overlay.nix);
  k8s = pkgs'.callPackage ../../pkgs/k8s-resources.nix { };
in
{
  imports = [ (modulesPath + "/virtualisation/qemu-vm.nix") ];

  options.nix-snapshotter-vm.examples = lib.mkOption {
    type = lib.types.attrsOf lib.types.package;
    readOnly = true;
    default = import ../../pkgs/examples.nix pkgs';
    description = "The example images (pkgs/examples.nix).";
  };

  config = {
    environment.etc."kubernetes/redis/pod.json".text = builtins.toJSON k8s.redisPod;
    environment.etc."kubernetes/redis/service.json".text = builtins.toJSON k8s.redisService;

    environment.systemPackages = with pkgs; [
      pkgs'.nix-snapshotter
      containerd
      cri-tools
      jq
      kubectl
      nerdctl
      redis
    ];

    nix.settings.experimental-features = [ "nix-command" "flakes" ];

    virtualisation = {
      memorySize = 4096;
      cores = 4;
      graphics = false;
      diskImage = null;
    };

    services.openssh.enable = true;
    networking.firewall.allowedTCPPorts = [ 22 ];

    # A throwaway VM: always first installed with the release it runs.
    system.stateVersion = lib.trivial.release;
  };
}
