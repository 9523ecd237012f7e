# Options and settings of virtualisation.containerd.rootless, shared by the
# NixOS and Home Manager modules (each adds the user unit in its own form).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  nsLib = import ../lib.nix { inherit lib pkgs; };
  rl = import ../rootless.nix { inherit lib pkgs; };
  cfg = config.virtualisation.containerd.rootless;

  configFile = nsLib.tomlFormat.generate "containerd-rootless.toml" cfg.settings;

  # Fails the build, not the service, on a config containerd cannot read.
  checkedConfigFile = pkgs.runCommand "containerd-rootless-checked.toml"
    { nativeBuildInputs = [ cfg.package ]; }
    ''
      containerd --config ${configFile} config dump >/dev/null
      ln -s ${configFile} $out
    '';
in
{
  options.virtualisation.containerd.rootless = nsLib.containerdOptions {
    inherit (cfg) package;
    packageText = "`package`";
  } // {
    enable = lib.mkEnableOption ''
      containerd as a user service under rootlesskit. Clients reach it at
      `$XDG_RUNTIME_DIR/containerd/containerd.sock`'';

    package = lib.mkPackageOption pkgs "containerd" { };

    settings = mkOption {
      type = nsLib.tomlFormat.type;
      default = { };
      description = "containerd's config.toml (as seen inside the namespaces).";
    };

    args = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { log-level = "debug"; };
      description = "Extra `--name value` arguments of containerd.";
    };

    bindMounts = mkOption {
      type = types.attrsOf (types.submodule {
        options.mountPoint = mkOption {
          type = types.str;
          example = "/run/containerd";
          description = "Where the source directory appears inside the namespaces.";
        };
      });
      default = { };
      example = lib.literalExpression ''
        { "$XDG_RUNTIME_DIR/containerd".mountPoint = "/run/containerd"; }
      '';
      description = ''
        Host directories (attribute names, expanded by the shell, so
        `$XDG_RUNTIME_DIR`, `$XDG_DATA_HOME`, `$XDG_CONFIG_HOME` and `$HOME`
        work) bind-mounted over paths inside containerd's namespaces, where
        rootlesskit gives /etc, /run, /var/lib and /var/log private copies.
        This is how sockets and state become visible to the user.
      '';
    };

    nsenter = mkOption {
      type = types.package;
      readOnly = true;
      default = rl.nsenter;
      defaultText = lib.literalMD "a `containerd-nsenter` script";
      description = ''
        `containerd-nsenter CMD...` runs a command inside the rootless
        containerd's namespaces (nix-snapshotter runs that way).
      '';
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      virtualisation.containerd.rootless = {
        setAddress = lib.mkDefault "$XDG_RUNTIME_DIR/containerd/containerd.sock";
        args.config = "${checkedConfigFile}";

        settings = lib.mkMerge [
          (nsLib.cc.base { version = cfg.configVersion; inherit (cfg) defaultRuntime; })
          (nsLib.cc.runtime cfg.configVersion {
            # No AppArmor profiles, cgroup controllers or OOM adjustments
            # for an unprivileged user.
            disable_apparmor = true;
            restrict_oom_score_adj = true;
            # containerd 2.x has no such key (2.1.9 ignores it, warning).
            disable_cgroup = lib.mkIf (cfg.configVersion < 3) true;
            cni = {
              conf_dir = lib.mkDefault "/etc/cni/net.d";
              bin_dir = lib.mkDefault "${pkgs.cni-plugins}/bin";
            };
          })
        ];

        bindMounts = {
          "$XDG_RUNTIME_DIR/containerd".mountPoint = "/run/containerd";
          "$XDG_DATA_HOME/containerd".mountPoint = "/var/lib/containerd";
          "$XDG_DATA_HOME/cni".mountPoint = "/var/lib/cni";
          "$XDG_CONFIG_HOME/cni".mountPoint = "/etc/cni";
        };
      };
    }

    (lib.mkIf cfg.nixSnapshotterIntegration {
      virtualisation.containerd.rootless = {
        setSnapshotter = lib.mkDefault "nix";
        settings = nsLib.nixSnapshotterSettings cfg
          (config.services.nix-snapshotter.rootless.settings.address or nsLib.defaultAddress);
        # The snapshotter's socket directory, visible on the host too.
        bindMounts."$XDG_RUNTIME_DIR/nix-snapshotter".mountPoint = "/run/nix-snapshotter";
      };
    })

    (lib.mkIf cfg.gVisorIntegration {
      virtualisation.containerd.rootless = {
        # runsc (through the shim) without cgroups, as containerd itself.
        path = [ rl.runscRootless pkgs.gvisor ];
        settings = nsLib.cc.gVisor { version = cfg.configVersion; };
      };
    })
  ]);
}
