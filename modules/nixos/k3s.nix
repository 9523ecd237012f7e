# Additions to nixpkgs' services.k3s.
#
# snapshotter = "nix": k3s runs its pods on the host's containerd
# (virtualisation.containerd with k3sIntegration, `--container-runtime-endpoint`)
# with nix-snapshotter as snapshotter and as the kubelet's image service
# (`--kubelet-arg=image-service-endpoint=...`), so a pod's `image:` may be
# `nix:0/nix/store/...-name.tar`. containerd, its k3s and nix-snapshotter
# integration and nix-snapshotter are enabled by default then. Other
# snapshotters are passed to k3s's embedded containerd (`--snapshotter`).
#
# Flags reach k3s through a drop-in of its configuration file (lib.nix,
# k3sSettings).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkDefault mkIf mkMerge mkOption types;
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.k3s;
  ctrd = config.virtualisation.containerd;
  external = ctrd.enable && ctrd.k3sIntegration;
in
{
  imports = [ ./containerd.nix ./nix-snapshotter.nix ];

  options.services.k3s = {
    snapshotter = mkOption {
      type = types.enum [ "overlayfs" "fuse-overlayfs" "stargz" "nix" ];
      default = "overlayfs";
      description = ''
        The snapshotter for pods. `nix` runs k3s against the host's
        containerd with nix-snapshotter (enabling both by default); the
        others are passed to k3s's embedded containerd.
      '';
    };

    setKubeConfig = mkOption {
      type = types.bool;
      default = false;
      description = "Export `KUBECONFIG=/etc/rancher/k3s/k3s.yaml` in login shells (unless set).";
    };

    setEmbeddedContainerd = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Export `CONTAINERD_ADDRESS`, `CONTAINERD_NAMESPACE=k8s.io` and
        `CONTAINERD_SNAPSHOTTER` in login shells for the containerd k3s
        uses (its embedded one, or the host's with k3sIntegration).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    (mkIf (cfg.snapshotter == "nix") {
      virtualisation.containerd = {
        enable = mkDefault true;
        k3sIntegration = mkDefault true;
        nixSnapshotterIntegration = mkDefault true;
      };
      services.nix-snapshotter.enable = mkDefault true;
      assertions = [{
        assertion = external && ctrd.nixSnapshotterIntegration;
        message = ''
          services.k3s.snapshotter = "nix" needs k3s on the host's containerd:
          virtualisation.containerd.enable, .k3sIntegration and
          .nixSnapshotterIntegration must be true (k3s's embedded
          containerd has no nix snapshotter).
        '';
      }];
    })

    # k3s's embedded containerd with the snapshotter asked for.
    (mkIf (!external) (nsLib.k3sSettings cfg "50-nix-snapshotter-snapshotter" { inherit (cfg) snapshotter; }))

    {
      environment.extraInit =
        lib.optionalString cfg.setKubeConfig ''
          if [ -z "''${KUBECONFIG-}" ]; then
            export KUBECONFIG="/etc/rancher/k3s/k3s.yaml"
          fi
        ''
        # With k3sIntegration, containerd.nix exports these (for k8s.io).
        + lib.optionalString (cfg.setEmbeddedContainerd && !external) ''
          if [ -z "''${CONTAINERD_ADDRESS-}" ]; then
            export CONTAINERD_ADDRESS="/run/k3s/containerd/containerd.sock"
          fi
          if [ -z "''${CONTAINERD_NAMESPACE-}" ]; then
            export CONTAINERD_NAMESPACE="k8s.io"
          fi
          if [ -z "''${CONTAINERD_SNAPSHOTTER-}" ]; then
            export CONTAINERD_SNAPSHOTTER="${cfg.snapshotter}"
          fi
        '';
    }
  ]);
}
