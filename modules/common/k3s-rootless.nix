# services.k3s.rootless: k3s as a user service (NixOS and Home Manager).
#
# With snapshotter = "nix", k3s does not start its own containerd: it runs
# inside the namespaces of the rootless containerd
# (virtualisation.containerd.rootless, enabled with nix-snapshotter), as
# their (fake) root, talks CRI to that containerd and uses nix-snapshotter
# as the kubelet's image service, so pods can name `nix:0/nix/store/...`
# images. Other snapshotters use `k3s server --rootless` with its embedded
# containerd.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  nsLib = import ../lib.nix { inherit lib pkgs; };
  rl = import ../rootless.nix { inherit lib pkgs; };
  cfg = config.services.k3s.rootless;
  useNix = cfg.snapshotter == "nix";
  snapshotterAddress = config.services.nix-snapshotter.rootless.settings.address or nsLib.defaultAddress;

  # k3s's flannel writes its CNI config below the data dir; containerd
  # (which runs the CNI plugins) reads it through a bind mount.
  dataDir = "%h/.rancher/k3s";
  cniConfSource = "$HOME/.rancher/k3s/agent/etc/cni/net.d";

  cniPlugins = pkgs.buildEnv {
    name = "k3s-rootless-cni-plugins";
    paths = [ pkgs.cni-plugins pkgs.cni-plugin-flannel ];
  };

  # What `k3s server --rootless` would set up for running in a user namespace.
  userNamespaceFlags = [
    "--kubelet-arg=feature-gates=KubeletInUserNamespace=true"
    "--kube-controller-manager-arg=feature-gates=KubeletInUserNamespace=true"
    "--kube-apiserver-arg=feature-gates=KubeletInUserNamespace=true"
    "--kube-proxy-arg=conntrack-max-per-core=0"
    "--kube-proxy-arg=conntrack-tcp-timeout-established=0s"
    "--kube-proxy-arg=conntrack-tcp-timeout-close-wait=0s"
  ];

  flags =
    (if useNix then [
      "--container-runtime-endpoint unix://${nsLib.defaultContainerdAddress}"
      "--kubelet-arg=image-service-endpoint=unix://${snapshotterAddress}"
      "--data-dir ${dataDir}"
      "--write-kubeconfig %h/.kube/k3s.yaml"
    ] ++ userNamespaceFlags
    else [
      "--rootless"
      "--snapshotter ${cfg.snapshotter}"
    ])
    ++ lib.optional (cfg.configPath != null) "--config ${cfg.configPath}"
    ++ cfg.extraFlags;

  command = lib.concatStringsSep " " ([ "${cfg.package}/bin/k3s server" ] ++ flags);
in
{
  options.services.k3s.rootless = {
    enable = lib.mkEnableOption "k3s as a user service (rootless)";

    package = lib.mkPackageOption pkgs "k3s" { };

    snapshotter = mkOption {
      type = types.enum [ "overlayfs" "fuse-overlayfs" "stargz" "nix" ];
      default = "overlayfs";
      description = ''
        The snapshotter for pods. `nix` runs k3s against the rootless
        containerd with nix-snapshotter (both enabled by default then);
        the others use k3s's embedded containerd.
      '';
    };

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--disable traefik" "--cluster-cidr 10.24.0.0/16" ];
      description = "Extra flags of `k3s server`.";
    };

    path = mkOption {
      type = types.listOf types.path;
      default = [ ];
      description = "Packages on k3s's PATH.";
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "An EnvironmentFile for the service (systemd.exec(5)).";
    };

    configPath = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "k3s YAML config file (`--config`).";
    };

    setKubeConfig = mkOption {
      type = types.bool;
      default = false;
      description = "Export `KUBECONFIG=$HOME/.kube/k3s.yaml` in login shells (unless set).";
    };

    setEmbeddedContainerd = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Export `CONTAINERD_ADDRESS`, `CONTAINERD_NAMESPACE=k8s.io` and
        `CONTAINERD_SNAPSHOTTER` in login shells for the containerd k3s
        uses (the rootless containerd with snapshotter `nix`).
      '';
    };

    unit = mkOption {
      type = types.attrs;
      internal = true;
      readOnly = true;
      description = "The user unit, as systemd sections.";
      default = {
        Unit = {
          Description = "k3s, lightweight Kubernetes (rootless)";
          StartLimitBurst = "3";
          StartLimitIntervalSec = "120s";
        } // lib.optionalAttrs useNix {
          After = [ "containerd.service" "nix-snapshotter.service" ];
          Wants = [ "nix-snapshotter.service" ];
          BindsTo = [ "containerd.service" ];
        };
        Service = {
          Type = "notify";
          NotifyAccess = "all";
          Delegate = "yes";
          Restart = "always";
          RestartSec = "5";
          KillMode = "mixed";
          Environment = [ "PATH=${lib.makeBinPath cfg.path}:/run/wrappers/bin:/usr/bin:/bin" ];
          ExecStart = if useNix then "${rl.nsenter}/bin/containerd-nsenter ${command}" else command;
          ExecReload = "${pkgs.coreutils}/bin/kill -s HUP $MAINPID";
          LimitNOFILE = "infinity";
          LimitNPROC = "infinity";
          LimitCORE = "infinity";
          TasksMax = "infinity";
        } // lib.optionalAttrs (cfg.environmentFile != null) {
          EnvironmentFile = "${cfg.environmentFile}";
        } // lib.optionalAttrs useNix {
          # The API server listens inside the namespaces; forward its port.
          # ("-": already forwarded when only k3s restarted.)
          ExecStartPost = "-${pkgs.rootlesskit}/bin/rootlessctl --socket=%t/containerd-rootless/api.sock add-ports 127.0.0.1:6443:6443/tcp";
        };
        Install.WantedBy = [ "default.target" ];
      };
    };

    envInit = mkOption {
      type = types.lines;
      internal = true;
      readOnly = true;
      description = "Login shell lines for setKubeConfig and setEmbeddedContainerd.";
      default =
        lib.optionalString cfg.setKubeConfig ''
          if [ -z "''${KUBECONFIG-}" ]; then
            export KUBECONFIG="$HOME/.kube/k3s.yaml"
          fi
        ''
        + lib.optionalString cfg.setEmbeddedContainerd ''
          if [ -z "''${CONTAINERD_ADDRESS-}" ]; then
            export CONTAINERD_ADDRESS="${if useNix then "$XDG_RUNTIME_DIR/containerd/containerd.sock" else "/run/k3s/containerd/containerd.sock"}"
          fi
          if [ -z "''${CONTAINERD_NAMESPACE-}" ]; then
            export CONTAINERD_NAMESPACE="k8s.io"
          fi
          if [ -z "''${CONTAINERD_SNAPSHOTTER-}" ]; then
            export CONTAINERD_SNAPSHOTTER="${cfg.snapshotter}"
          fi
        '';
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      services.k3s.rootless.path = [ pkgs.slirp4netns pkgs.iptables pkgs.util-linux pkgs.coreutils ];
    }
    (lib.mkIf useNix {
      virtualisation.containerd.rootless = {
        enable = lib.mkDefault true;
        nixSnapshotterIntegration = lib.mkDefault true;
        setNamespace = lib.mkDefault "k8s.io";
        settings.plugins."io.containerd.grpc.v1.cri".cni.bin_dir = "${cniPlugins}/bin";
        bindMounts.${cniConfSource}.mountPoint = "/etc/cni/net.d";
      };
      services.nix-snapshotter.rootless.enable = lib.mkDefault true;
    })
  ]);
}
