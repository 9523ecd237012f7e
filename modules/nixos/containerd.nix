# Additions to nixpkgs' virtualisation.containerd: nix-snapshotter, gVisor
# and k3s integration, the config version of the containerd package, and
# CONTAINERD_* defaults for login shells.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkDefault mkIf mkMerge mkOptionDefault;
  nsLib = import ../lib.nix { inherit lib pkgs; };
  inherit (nsLib) cc;
  cfg = config.virtualisation.containerd;
  version = cfg.configVersion;
  # nix-snapshotter.nix may not be imported (nixosModules.containerd alone).
  snapshotterAddress = config.services.nix-snapshotter.settings.address or nsLib.defaultAddress;
  snapshotterEnabled = config.services.nix-snapshotter.enable or false;
  containerdAddress = cfg.settings.grpc.address or nsLib.defaultContainerdAddress;

  # CNI plugins for k3s's flannel network (its config names "flannel",
  # "bridge", "host-local", "portmap", "bandwidth", "firewall").
  k3sCniPlugins = pkgs.buildEnv {
    name = "k3s-cni-plugins";
    paths = [ pkgs.cni-plugins pkgs.cni-plugin-flannel ];
  };
in
{
  options.virtualisation.containerd = nsLib.containerdOptions {
    # nixpkgs' containerd module runs pkgs.containerd.
    package = pkgs.containerd;
    packageText = "`pkgs.containerd`";
  } // {
    k3sIntegration = lib.mkEnableOption ''
      k3s integration: k3s uses this containerd (`--container-runtime-endpoint`)
      instead of its embedded one, with its CNI network, and nix-snapshotter
      as the kubelet's image service when nixSnapshotterIntegration is on'';
  };

  config = mkIf cfg.enable (mkMerge [
    {
      virtualisation.containerd.settings = cc.base { inherit version; inherit (cfg) defaultRuntime; };

      environment.extraInit = nsLib.containerdEnvInit cfg;

      systemd.services.containerd.path = cfg.path;
    }

    # nixpkgs' module writes its defaults in version 2 form, which a
    # version 3 file ignores: the same defaults where version 3 reads them.
    (mkIf (version >= 3) {
      virtualisation.containerd.settings = mkMerge [
        (cc.runtime version { cni.bin_dir = mkOptionDefault "${pkgs.cni-plugins}/bin"; })
        (mkIf (config.boot.zfs.enabled or false) (cc.images version { snapshotter = mkOptionDefault "zfs"; }))
      ];
    })

    (mkIf cfg.nixSnapshotterIntegration {
      warnings = lib.optional (!snapshotterEnabled) ''
        virtualisation.containerd.nixSnapshotterIntegration is on, but
        services.nix-snapshotter is not enabled: nothing serves the `nix`
        snapshotter's socket unless you run the daemon yourself.
      '';
      virtualisation.containerd = {
        setSnapshotter = mkDefault "nix";
        settings = nsLib.nixSnapshotterSettings cfg snapshotterAddress;
      };
      # Start the snapshotter with containerd (it is ordered before it):
      # when CRI's snapshotter is missing at containerd's start, CRI leaves
      # its images out of the image list until containerd restarts.
      systemd.services.containerd = mkIf snapshotterEnabled {
        wants = [ "nix-snapshotter.service" ];
        after = [ "nix-snapshotter.service" ];
      };
    })

    (mkIf cfg.gVisorIntegration {
      virtualisation.containerd = {
        path = [ pkgs.gvisor ];
        settings = cc.gVisor { inherit version; };
      };
    })

    (mkIf cfg.k3sIntegration {
      virtualisation.containerd = {
        setNamespace = mkDefault "k8s.io";
        settings = cc.runtime version {
          # Where k3s's flannel writes its CNI config.
          cni = {
            conf_dir = mkDefault "/var/lib/rancher/k3s/agent/etc/cni/net.d";
            bin_dir = mkDefault "${k3sCniPlugins}/bin";
          };
          enable_unprivileged_ports = mkDefault true;
          enable_unprivileged_icmp = mkDefault true;
        };
      };

      systemd.services.k3s = mkIf config.services.k3s.enable {
        wants = [ "containerd.service" ] ++ lib.optional snapshotterEnabled "nix-snapshotter.service";
        after = [ "containerd.service" ] ++ lib.optional snapshotterEnabled "nix-snapshotter.service";
      };
    })

    # k3s on this containerd, with nix-snapshotter as the kubelet's image
    # service.
    (mkIf (cfg.k3sIntegration && config.services.k3s.enable)
      (nsLib.k3sSettings config.services.k3s "50-nix-snapshotter-containerd" ({
        container-runtime-endpoint = "unix://${containerdAddress}";
      } // lib.optionalAttrs cfg.nixSnapshotterIntegration {
        # "+": appended to kubelet-arg of config.yaml, not replacing it.
        "kubelet-arg+" = [ "image-service-endpoint=unix://${snapshotterAddress}" ];
      })))
  ]);
}
