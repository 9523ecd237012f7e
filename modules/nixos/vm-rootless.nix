# Rootless: containerd, nix-snapshotter and k3s as user services of
# "rootless" (password "rootless").
#   nerdctl run --rm localhost:5000/nix-snapshotter/hello
#   kubectl apply -f /etc/kubernetes/redis/
{ config, lib, ... }:
{
  imports = [ ./vm-common.nix ];

  users.users.rootless = {
    isNormalUser = true;
    extraGroups = [ "wheel" ];
    password = "rootless";
    linger = true;
  };

  virtualisation.containerd.rootless = {
    enable = true;
    nixSnapshotterIntegration = true;
  };
  services.nix-snapshotter.rootless.enable = true;

  services.k3s.rootless = {
    enable = true;
    snapshotter = "nix";
    setKubeConfig = true;
  };

  services.preload-containerd.rootless = {
    enable = true;
    targets = [
      {
        archives = lib.attrValues config.nix-snapshotter-vm.examples;
        address = "$XDG_RUNTIME_DIR/containerd/containerd.sock";
      }
      {
        archives = lib.attrValues config.nix-snapshotter-vm.examples;
        address = "$XDG_RUNTIME_DIR/containerd/containerd.sock";
        namespace = "k8s.io";
      }
    ];
  };
}
