# Kubernetes (nixpkgs' services.kubernetes) on containerd with
# nix-snapshotter, which also serves the kubelet's image service: the redis
# pod's image is `nix:0/nix/store/...-nix-image-redis.tar`, resolved from
# the Nix store without a registry.
{ pkgs, lib, ... }:
let
  k8s = pkgs.callPackage ../../../pkgs/k8s-resources.nix { };
in
{
  name = "nix-snapshotter-kubernetes";

  defaults.imports = [ ../default.nix ];

  nodes.machine = { config, ... }: {
    virtualisation.memorySize = 2048;

    virtualisation.containerd = {
      enable = true;
      nixSnapshotterIntegration = true;
    };
    services.nix-snapshotter.enable = true;

    services.kubernetes = {
      roles = [ "master" "node" ];
      masterAddress = "machine";
      easyCerts = true;
      kubelet.extraOpts = "--image-service-endpoint unix://${config.services.nix-snapshotter.settings.address}";
    };

    environment.etc."kubernetes/redis/pod.json".text = builtins.toJSON k8s.redisPod;
    environment.etc."kubernetes/redis/service.json".text = builtins.toJSON k8s.redisService;
    environment.systemPackages = [ pkgs.kubectl pkgs.redis ];
    environment.variables.KUBECONFIG = "/etc/${config.services.kubernetes.pki.etcClusterAdminKubeconfig}";
  };

  testScript = ''
    start_all()
    machine.wait_for_unit("nix-snapshotter.service")
    machine.wait_until_succeeds("kubectl get node machine | grep -w Ready", timeout=600)
    machine.succeed("kubectl apply -f /etc/kubernetes/redis/")
    machine.wait_until_succeeds("kubectl get pod redis | grep Running", timeout=600)
    machine.wait_until_succeeds("redis-cli -h machine -p 30000 ping | grep PONG")
    image = machine.succeed("kubectl get pod redis -o jsonpath='{.spec.containers[0].image}'")
    assert image.startswith("nix:0/nix/store/"), image
  '';
}
