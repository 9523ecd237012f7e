# All Home Manager modules of nix-snapshotter (rootless):
#
#   imports = [ /path/to/nix-snapshotter/modules/home ];
#   virtualisation.containerd.rootless = { enable = true; nixSnapshotterIntegration = true; };
#   services.nix-snapshotter.rootless.enable = true;
{
  imports = [
    ./nix-snapshotter-rootless.nix
    ./containerd-rootless.nix
    ./preload-containerd-rootless.nix
    ./k3s-rootless.nix
  ];
}
