# Rootful: k3s on containerd with nix-snapshotter; log in as root/root.
#   kubectl apply -f /etc/kubernetes/redis/ && redis-cli -p 30000 ping
#   nerdctl run --rm localhost:5000/nix-snapshotter/hello
{ config, lib, ... }:
{
  imports = [ ./vm-common.nix ];

  users.users.root = {
    initialHashedPassword = lib.mkForce null;
    password = "root";
  };

  services.k3s = {
    enable = true;
    snapshotter = "nix";
    setKubeConfig = true;
  };

  services.preload-containerd = {
    enable = true;
    targets = [
      { archives = lib.attrValues config.nix-snapshotter-vm.examples; }
      { archives = lib.attrValues config.nix-snapshotter-vm.examples; namespace = "k8s.io"; }
    ];
  };
}
