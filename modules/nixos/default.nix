# All NixOS modules of nix-snapshotter:
#
#   imports = [ /path/to/nix-snapshotter/modules/nixos ];
#   services.nix-snapshotter.enable = true;   # containerd enabled and wired too
{
  imports = [
    ./nix-snapshotter.nix
    ./nix-snapshotter-rootless.nix
    ./containerd.nix
    ./containerd-rootless.nix
    ./preload-containerd.nix
    ./preload-containerd-rootless.nix
    ./k3s.nix
    ./k3s-rootless.nix
  ];
}
