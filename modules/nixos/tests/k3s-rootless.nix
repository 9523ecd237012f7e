# Rootless k3s with snapshotter = "nix": containerd under rootlesskit,
# nix-snapshotter and k3s as alice's user services, k3s inside containerd's
# namespaces (entered with containerd-nsenter). The redis pod's image is
# `nix:0/nix/store/...`; it is reached at its pod IP from inside the
# namespaces. The VM has no network: the pause image is a nix image loaded
# at start and k3s's bundled add-ons are disabled.
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
  name = "nix-snapshotter-k3s-rootless";

  defaults.imports = [ ../default.nix ];

  nodes.machine = { config, ... }: {
    virtualisation.memorySize = 2048;
    virtualisation.diskSize = 4096;

    users.users.alice = {
      uid = 1000;
      isNormalUser = true;
      linger = true;
    };

    services.k3s.rootless = {
      enable = true;
      snapshotter = "nix";
      extraFlags = [
        "--disable coredns"
        "--disable local-storage"
        "--disable metrics-server"
        "--disable servicelb"
        "--disable traefik"
      ];
    };

    # The pause image, where this containerd reads it (config version 2 or 3).
    virtualisation.containerd.rootless.settings = cc.sandboxImage config.virtualisation.containerd.rootless.configVersion "test.local/pause:local";

    services.preload-containerd.rootless = {
      enable = true;
      targets = [{
        archives = [ pause ];
        address = "$XDG_RUNTIME_DIR/containerd/containerd.sock";
        namespace = "k8s.io";
      }];
    };

    environment.etc."kubernetes/redis/pod.json".text = builtins.toJSON k8s.redisPod;
    environment.etc."kubernetes/redis/service.json".text = builtins.toJSON k8s.redisService;
    environment.systemPackages = [ pkgs.kubectl pkgs.redis ];
  };

  testScript = { nodes, ... }:
    let
      nsenter = "${nodes.machine.virtualisation.containerd.rootless.nsenter}/bin/containerd-nsenter";
    in
    ''
      def as_alice(cmd):
          return f"sudo -u alice env XDG_RUNTIME_DIR=/run/user/1000 {cmd}"

      kubectl = "${nsenter} kubectl --kubeconfig /home/alice/.kube/k3s.yaml"

      start_all()
      for unit in ["containerd.service", "nix-snapshotter.service", "preload-containerd.service", "k3s.service"]:
          machine.wait_until_succeeds(f"systemctl --user --machine=alice@ is-active {unit}", timeout=300)

      machine.wait_until_succeeds(as_alice(f"{kubectl} get node machine | grep -w Ready"), timeout=600)
      machine.succeed(as_alice(f"{kubectl} apply -f /etc/kubernetes/redis/"))
      machine.wait_until_succeeds(as_alice(f"{kubectl} get pod redis | grep Running"), timeout=600)
      ip = machine.succeed(as_alice(f"{kubectl} get pod redis -o jsonpath='{{.status.podIP}}'")).strip()
      machine.wait_until_succeeds(as_alice(f"${nsenter} redis-cli -h {ip} ping | grep PONG"))

      with subtest("the API server is forwarded to the host"):
          machine.succeed("sudo -u alice kubectl --kubeconfig /home/alice/.kube/k3s.yaml get node machine")
    '';
}
