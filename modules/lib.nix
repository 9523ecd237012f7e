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

  cc = import ./containerd-config.nix { inherit lib; };

  # This project's package, built from this checkout. Not
  # `pkgs.nix-snapshotter`: nixpkgs has its own package of that name (the
  # Go daemon this project replaces), so without this flake's overlay that
  # name is another program. With the overlay, callPackage gives the very
  # same derivation as pkgs.nix-snapshotter.
  defaultPackage = pkgs.callPackage ../pkgs/nix-snapshotter.nix { };
  defaultPackageText = lib.literalMD "this flake's `nix-snapshotter` (built from `pkgs/nix-snapshotter.nix`; not nixpkgs' Go `pkgs.nix-snapshotter`)";

  # What the daemon runs: nix-store (realise and root store paths), mount
  # and umount (the overlayfs probe in a user namespace).
  requiredPath = [ pkgs.nix pkgs.util-linux ];

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
  inherit tomlFormat defaultAddress defaultRoot defaultContainerdAddress defaultPackage requiredPath cc;

  # containerd's platform string for this host ("linux/amd64").
  hostPlatform =
    if goArch ? ${system} then "linux/${goArch.${system}}"
    else throw "nix-snapshotter: no containerd platform known for ${system}";

  # containerd settings of the `nix` snapshotter at `address`, for the
  # containerd options `cfg` (its configVersion).
  nixSnapshotterSettings = cfg: address:
    cc.nixSnapshotter { version = cfg.configVersion; inherit address; platform = hostPlatform; };

  # Options of services.nix-snapshotter and services.nix-snapshotter.rootless
  # (`cfg`: their values).
  snapshotterOptions = cfg: {
    package = mkOption {
      type = types.package;
      default = defaultPackage;
      defaultText = defaultPackageText;
      description = "The nix-snapshotter package (provides `nix-snapshotter` and `nix2container`).";
    };

    path = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = lib.literalExpression "[ pkgs.nixVersions.latest pkgs.git ]";
      description = ''
        Packages put on the service's PATH before `nix` and `util-linux`
        (which it always has: `nix-store` realises and roots store paths,
        `mount`/`umount` probe overlayfs in a user namespace): another Nix,
        or what an `external_builder` runs.
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
      type = types.path;
      default = tomlFormat.generate "nix-snapshotter.toml" cfg.settings;
      defaultText = lib.literalMD "a file generated from `settings`";
      description = ''
        The config.toml passed with `--config`. Setting it makes
        `settings` unused.
      '';
    };
  };

  # Options of services.preload-containerd(.rootless); `address` is the
  # default containerd socket of the targets.
  preloadOptions = address: {
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
            default = address;
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

  # Options shared by virtualisation.containerd and .rootless; `package` is
  # the containerd they run, `packageText` how the docs name it.
  containerdOptions = { package, packageText }: {
    nixSnapshotterIntegration = lib.mkEnableOption ''
      nix-snapshotter: the `nix` proxy snapshotter, CRI and the transfer
      service unpacking with it (on by default with nix-snapshotter)'';

    gVisorIntegration = lib.mkEnableOption ''
      gVisor: a `runsc` runtime for CRI (`runtime_handler` or RuntimeClass
      handler `runsc`) and, with `--runtime io.containerd.runsc.v1`, for
      ctr and nerdctl'';

    configVersion = mkOption {
      type = types.enum [ 2 3 ];
      default = cc.versionFor package;
      defaultText = lib.literalMD "3 when ${packageText} is containerd 2.x, 2 for containerd 1.7";
      description = ''
        The containerd config version the modules write: 3 (containerd
        2.x) puts CRI's settings under `io.containerd.cri.v1.images` and
        `io.containerd.cri.v1.runtime`, 2 (containerd 1.7) under
        `io.containerd.grpc.v1.cri`. containerd 2.x also reads version 2
        (it migrates the file in memory, warning at every start). Set this
        rather than `settings.version`, which it overrides.
      '';
    };

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

  # Gives k3s configuration keys (`settings`, its flags without "--") through
  # a drop-in of its configuration file, /etc/rancher/k3s/config.yaml.d/
  # (k3s reads it after config.yaml), so services.k3s.extraFlags stays the
  # user's in either of its forms (a string or a list). With configPath
  # set, k3s reads the drop-ins beside that file, which may be read-only:
  # the keys then become flags in extraFlags (a list).
  k3sSettings = k3s: name: settings: lib.mkMerge [
    (lib.mkIf (k3s.configPath == null) {
      # JSON is YAML.
      environment.etc."rancher/k3s/config.yaml.d/${name}.yaml".text = builtins.toJSON settings;
    })
    (lib.mkIf (k3s.configPath != null) {
      services.k3s.extraFlags = lib.concatLists (lib.mapAttrsToList
        (k: v: map (x: "--${lib.removeSuffix "+" k}=${x}") (lib.toList v))
        settings);
    })
  ];

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
    # The socket's directory: only its owner (root, or the rootless user)
    # may connect, as the daemon makes it when it creates it itself.
    RuntimeDirectory = "nix-snapshotter";
    RuntimeDirectoryMode = "0700";
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
