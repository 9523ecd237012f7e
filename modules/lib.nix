# Helpers shared by the NixOS and Home Manager modules.
#
#   nsLib = import ../lib.nix { inherit lib pkgs; };
#
# Units are written once as plain systemd sections ({ Unit; Service;
# Install; }, the Home Manager form) and converted for NixOS with
# toNixosUnit.
{ lib, pkgs }:
let
  inherit (lib) mkOption types;

  tomlFormat = pkgs.formats.toml { };

  # Defaults of the daemon (src/config/config.ts).
  defaultAddress = "/run/nix-snapshotter/nix-snapshotter.sock";
  defaultRoot = "/var/lib/containerd/io.containerd.snapshotter.v1.nix";
  defaultContainerdAddress = "/run/containerd/containerd.sock";

  # The nix-snapshotter package: the one from the overlay when present,
  # otherwise built from this repository.
  defaultPackage = pkgs.nix-snapshotter or (pkgs.callPackage ../pkgs/nix-snapshotter.nix { });

  goArch = {
    x86_64-linux = "amd64";
    aarch64-linux = "arm64";
    armv7l-linux = "arm";
    i686-linux = "386";
    riscv64-linux = "riscv64";
    powerpc64le-linux = "ppc64le";
    s390x-linux = "s390x";
  };
  system = pkgs.stdenv.hostPlatform.system;
in
rec {
  inherit tomlFormat defaultAddress defaultRoot defaultContainerdAddress defaultPackage;

  # containerd's platform string for this host ("linux/amd64").
  hostPlatform =
    if goArch ? ${system} then "linux/${goArch.${system}}"
    else throw "nix-snapshotter: no containerd platform known for ${system}";

  # Options of services.nix-snapshotter and services.nix-snapshotter.rootless.
  snapshotterOptions = {
    package = mkOption {
      type = types.package;
      default = defaultPackage;
      defaultText = lib.literalExpression "pkgs.nix-snapshotter";
      description = "The nix-snapshotter package (provides `nix-snapshotter` and `nix2container`).";
    };

    path = mkOption {
      type = types.listOf types.package;
      default = [ pkgs.nix ];
      defaultText = lib.literalExpression "[ pkgs.nix ]";
      description = ''
        Packages on the service's PATH. It needs `nix-store` (to realise
        and root store paths), and whatever an `external_builder` runs.
      '';
    };

    settings = mkOption {
      type = tomlFormat.type;
      default = { };
      example = lib.literalExpression ''
        {
          address = "/run/nix-snapshotter/nix-snapshotter.sock";
          root = "/var/lib/containerd/io.containerd.snapshotter.v1.nix";
          external_builder = "/etc/nix-snapshotter/builder";
          image_service.enable = true;
          image_service.containerd_address = "/run/containerd/containerd.sock";
        }
      '';
      description = ''
        nix-snapshotter's config.toml. Keys: `address`, `root`,
        `external_builder`, and the `image_service` table with `enable`
        and `containerd_address`. Unknown keys make the daemon refuse to
        start.
      '';
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      description = ''
        The config.toml passed with `--config`. Defaults to a file
        generated from `settings`; setting it makes `settings` unused.
      '';
    };
  };

  # Options of services.preload-containerd(.rootless).
  preloadOptions = {
    enable = lib.mkEnableOption "loading image archives into containerd at start-up";

    targets = mkOption {
      default = [ ];
      description = ''
        Where to load what: each target is a containerd socket and
        namespace with a list of image archives (buildImage results,
        dockerTools images, any OCI or docker archive).
      '';
      type = types.listOf (types.submodule {
        options = {
          archives = mkOption {
            type = types.listOf types.package;
            default = [ ];
            description = "Image archives to load.";
          };
          address = mkOption {
            type = types.str;
            default = defaultContainerdAddress;
            description = "containerd's socket (expanded by the shell: `$XDG_RUNTIME_DIR/...` works).";
          };
          namespace = mkOption {
            type = types.str;
            default = "default";
            description = "containerd namespace (`k8s.io` for Kubernetes).";
          };
        };
      });
    };
  };

  # Options shared by virtualisation.containerd and .rootless.
  containerdOptions = {
    nixSnapshotterIntegration = lib.mkEnableOption ''
      nix-snapshotter: the `nix` proxy snapshotter, CRI and the transfer
      service unpacking with it'';

    defaultRuntime = mkOption {
      type = types.str;
      default = "runc";
      description = "CRI's default runtime (`default_runtime_name`).";
    };

    path = mkOption {
      type = types.listOf types.path;
      default = [ ];
      description = "Packages added to containerd's PATH (runtimes, CNI helpers).";
    };

    setAddress = mkOption {
      type = types.str;
      default = defaultContainerdAddress;
      description = "Exported as `CONTAINERD_ADDRESS` in login shells (unless already set).";
    };

    setNamespace = mkOption {
      type = types.str;
      default = "default";
      description = "Exported as `CONTAINERD_NAMESPACE` in login shells when not `default`.";
    };

    setSnapshotter = mkOption {
      type = types.str;
      default = "";
      description = ''
        Exported as `CONTAINERD_SNAPSHOTTER` in login shells when not
        empty (`nix` with nixSnapshotterIntegration).
      '';
    };
  };

  # containerd settings for the nix snapshotter at `address`.
  nixSnapshotterContainerdSettings = address: {
    proxy_plugins.nix = {
      type = "snapshot";
      inherit address;
    };
    plugins."io.containerd.grpc.v1.cri".containerd = {
      snapshotter = "nix";
      # CRI hands layer annotations (the store paths) to the snapshotter.
      disable_snapshot_annotations = false;
    };
    # Transfer service (ctr images import --local=false, pulls,
    # nix2container load): unpack with nix first, overlayfs as well.
    plugins."io.containerd.transfer.v1.local".unpack_config = [
      { platform = hostPlatform; snapshotter = "nix"; }
      { platform = hostPlatform; snapshotter = "overlayfs"; }
    ];
  };

  # Shell lines exporting CONTAINERD_* defaults.
  containerdEnvInit = cfg:
    ''
      if [ -z "''${CONTAINERD_ADDRESS-}" ]; then
        export CONTAINERD_ADDRESS="${cfg.setAddress}"
      fi
    ''
    + lib.optionalString (cfg.setNamespace != "default") ''
      if [ -z "''${CONTAINERD_NAMESPACE-}" ]; then
        export CONTAINERD_NAMESPACE="${cfg.setNamespace}"
      fi
    ''
    + lib.optionalString (cfg.setSnapshotter != "") ''
      if [ -z "''${CONTAINERD_SNAPSHOTTER-}" ]; then
        export CONTAINERD_SNAPSHOTTER="${cfg.setSnapshotter}"
      fi
    '';

  # The ExecStart of nix-snapshotter.
  snapshotterCommand = cfg: extraArgs:
    lib.concatStringsSep " " ([ "${cfg.package}/bin/nix-snapshotter" "--config" "${cfg.configFile}" ] ++ extraArgs);

  # [Service] settings common to the rootful and rootless daemon.
  snapshotterService = {
    # READY=1 once the socket serves.
    Type = "notify";
    Restart = "always";
    RestartSec = "2";
    # SIGTERM to the daemon (it lets calls finish), then SIGKILL to what is left.
    KillMode = "mixed";
    StateDirectory = "nix-snapshotter";
    RuntimeDirectory = "nix-snapshotter";
    # containerd keeps the socket path across daemon restarts.
    RuntimeDirectoryPreserve = "yes";
  };

  # A oneshot loading every target's archives with nix2container.
  preloadScript = package: targets:
    pkgs.writeShellScript "preload-containerd" (
      "set -eu\n" + lib.concatMapStrings
        (t: lib.concatMapStrings
          (archive: ''
            echo "loading ${archive} into ${t.address} (namespace ${t.namespace})"
            ${package}/bin/nix2container load ${archive} --address "${t.address}" --namespace "${t.namespace}"
          '')
          t.archives)
        targets
    );

  preloadUnit = { package, targets, after, description }: {
    Unit = {
      Description = description;
      Wants = after;
      After = after;
    };
    Service = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStart = "${preloadScript package targets}";
    };
  };

  # Converts { Unit; Service; Install; } to a NixOS systemd service.
  toNixosUnit = unit:
    lib.mkMerge [
      (lib.mkIf (unit ? Unit) { unitConfig = unit.Unit; })
      (lib.mkIf (unit ? Service) { serviceConfig = unit.Service; })
      (lib.mkIf (unit ? Install.WantedBy) { wantedBy = unit.Install.WantedBy; })
    ];
}
