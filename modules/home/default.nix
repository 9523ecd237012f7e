# All Home Manager modules of nix-snapshotter (rootless):
#
#   imports = [ /path/to/nix-snapshotter/modules/home ];
#   services.nix-snapshotter.rootless.enable = true;   # with the rootless containerd
{
  imports = [
    ./nix-snapshotter-rootless.nix
    ./containerd-rootless.nix
    ./preload-containerd-rootless.nix
    ./k3s-rootless.nix
  ];
}
