# The module outputs shared by flake.nix and default.nix: every NixOS and
# Home Manager module of the project, one attribute each.
{
  nixosModules = {
    default = ./nixos;
    nix-snapshotter = ./nixos/nix-snapshotter.nix;
    nix-snapshotter-rootless = ./nixos/nix-snapshotter-rootless.nix;
    containerd = ./nixos/containerd.nix;
    containerd-rootless = ./nixos/containerd-rootless.nix;
    preload-containerd = ./nixos/preload-containerd.nix;
    preload-containerd-rootless = ./nixos/preload-containerd-rootless.nix;
    k3s = ./nixos/k3s.nix;
    k3s-rootless = ./nixos/k3s-rootless.nix;
  };

  homeModules = {
    default = ./home;
    nix-snapshotter-rootless = ./home/nix-snapshotter-rootless.nix;
    containerd-rootless = ./home/containerd-rootless.nix;
    preload-containerd-rootless = ./home/preload-containerd-rootless.nix;
    k3s-rootless = ./home/k3s-rootless.nix;
  };
}
