# Additions to nixpkgs' virtualisation.containerd: nix-snapshotter and k3s
# integration, and CONTAINERD_* defaults for login shells.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkDefault mkIf mkMerge;
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.virtualisation.containerd;
  snapshotterAddress = config.services.nix-snapshotter.settings.address or nsLib.defaultAddress;
  containerdAddress = cfg.settings.grpc.address or nsLib.defaultContainerdAddress;
  snapshotterEnabled = config.services.nix-snapshotter.enable or false;

  # CNI plugins for k3s's flannel network (its config names "flannel",
  # "bridge", "host-local", "portmap", "bandwidth", "firewall").
  k3sCniPlugins = pkgs.buildEnv {
    name = "k3s-cni-plugins";
    paths = [ pkgs.cni-plugins pkgs.cni-plugin-flannel ];
  };
in
{
  options.virtualisation.containerd = nsLib.containerdOptions // {
    k3sIntegration = lib.mkEnableOption ''
      k3s integration: k3s uses this containerd (`--container-runtime-endpoint`)
      instead of its embedded one, with its CNI network, and nix-snapshotter
      as the kubelet's image service when nixSnapshotterIntegration is on'';
  };

  config = mkIf cfg.enable (mkMerge [
    {
      virtualisation.containerd.settings = {
        version = 2;
        plugins."io.containerd.grpc.v1.cri".containerd = {
          default_runtime_name = cfg.defaultRuntime;
          runtimes.runc.runtime_type = mkDefault "io.containerd.runc.v2";
        };
      };

      environment.extraInit = nsLib.containerdEnvInit cfg;

      systemd.services.containerd.path = cfg.path;
    }

    (mkIf cfg.nixSnapshotterIntegration {
      warnings = lib.optional (!snapshotterEnabled) ''
        virtualisation.containerd.nixSnapshotterIntegration is on, but
        services.nix-snapshotter is not enabled: nothing serves the `nix`
        snapshotter's socket unless you run the daemon yourself.
      '';
      virtualisation.containerd = {
        setSnapshotter = mkDefault "nix";
        settings = nsLib.nixSnapshotterContainerdSettings snapshotterAddress;
      };
      # Start the snapshotter with containerd (it is ordered before it).
      systemd.services.containerd = mkIf snapshotterEnabled {
        wants = [ "nix-snapshotter.service" ];
        after = [ "nix-snapshotter.service" ];
      };
    })

    (mkIf cfg.k3sIntegration {
      virtualisation.containerd = {
        setNamespace = mkDefault "k8s.io";
        settings.plugins."io.containerd.grpc.v1.cri" = {
          # Where k3s's flannel writes its CNI config.
          cni = {
            conf_dir = mkDefault "/var/lib/rancher/k3s/agent/etc/cni/net.d";
            bin_dir = mkDefault "${k3sCniPlugins}/bin";
          };
          enable_unprivileged_ports = mkDefault true;
          enable_unprivileged_icmp = mkDefault true;
        };
      };

      services.k3s.extraFlags =
        [ "--container-runtime-endpoint unix://${containerdAddress}" ]
        ++ lib.optional cfg.nixSnapshotterIntegration "--kubelet-arg=image-service-endpoint=unix://${snapshotterAddress}";

      systemd.services.k3s = mkIf config.services.k3s.enable {
        wants = [ "containerd.service" ] ++ lib.optional snapshotterEnabled "nix-snapshotter.service";
        after = [ "containerd.service" ] ++ lib.optional snapshotterEnabled "nix-snapshotter.service";
      };
    })
  ]);
}
