# k3s with snapshotter = "nix": k3s on the host's containerd with
# nix-snapshotter as snapshotter and kubelet image service. The redis pod's
# image is `nix:0/nix/store/...`, its Service a NodePort on 30000. The VM
# has no network, so the pause image is a nix image loaded at boot and
# k3s's bundled add-ons are disabled.
{ pkgs, lib, ... }:
let
  cc = import ../../containerd-config.nix { inherit lib; };
  k8s = pkgs.callPackage ../../../pkgs/k8s-resources.nix { };

  pause = pkgs.nix-snapshotter.buildImage {
    name = "test.local/pause";
    tag = "local";
    config.Entrypoint = [ "${pkgs.tini}/bin/tini" "--" "${pkgs.coreutils}/bin/sleep" "inf" ];
  };
in
{
  name = "nix-snapshotter-k3s";

  defaults.imports = [ ../default.nix ];

  nodes.machine = { config, ... }: {
    virtualisation.memorySize = 2048;
    virtualisation.diskSize = 4096;

    services.k3s = {
      enable = true;
      snapshotter = "nix";
      setKubeConfig = true;
      extraFlags = [
        "--disable coredns"
        "--disable local-storage"
        "--disable metrics-server"
        "--disable servicelb"
        "--disable traefik"
        "--pause-image test.local/pause:local"
      ];
    };

    # The pause image, where this containerd reads it (config version 2 or 3).
    virtualisation.containerd.settings = cc.sandboxImage config.virtualisation.containerd.configVersion "test.local/pause:local";

    services.preload-containerd = {
      enable = true;
      targets = [{ archives = [ pause ]; namespace = "k8s.io"; }];
    };

    environment.etc."kubernetes/redis/pod.json".text = builtins.toJSON k8s.redisPod;
    environment.etc."kubernetes/redis/service.json".text = builtins.toJSON k8s.redisService;
    environment.systemPackages = [ pkgs.kubectl pkgs.redis ];
  };

  testScript = ''
    kubectl = "kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml"

    start_all()
    for unit in ["nix-snapshotter.service", "containerd.service", "preload-containerd.service", "k3s.service"]:
        machine.wait_for_unit(unit)

    with subtest("k3s uses the host's containerd and nix-snapshotter"):
        machine.succeed("systemctl cat k3s.service | grep -q -- '--container-runtime-endpoint unix:///run/containerd/containerd.sock'")
        machine.succeed("systemctl cat k3s.service | grep -q -- '--kubelet-arg=image-service-endpoint=unix:///run/nix-snapshotter/nix-snapshotter.sock'")

    machine.wait_until_succeeds(f"{kubectl} get node machine | grep -w Ready", timeout=600)
    machine.succeed(f"{kubectl} apply -f /etc/kubernetes/redis/")
    machine.wait_until_succeeds(f"{kubectl} get pod redis | grep Running", timeout=600)
    machine.wait_until_succeeds("redis-cli -h machine -p 30000 ping | grep PONG")
  '';
}
