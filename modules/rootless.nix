# Rootless containerd machinery shared by the NixOS and Home Manager
# modules: the rootlesskit launcher, the child that sets up bind mounts and
# execs containerd, and a helper entering the namespaces.
#
#   rl = import ../rootless.nix { inherit lib pkgs; };
{ lib, pkgs }:
let
  # Where rootlesskit keeps its state; nerdctl and our nsenter helper find
  # the namespaces through child_pid in it.
  stateDir = "$XDG_RUNTIME_DIR/containerd-rootless";

  # newuidmap/newgidmap are setuid programs of the host: NixOS has them in
  # /run/wrappers/bin, other distributions in /usr/bin.
  hostSetuidPath = "/run/wrappers/bin:/usr/bin:/bin";
in
rec {
  inherit stateDir;

  # `containerd-nsenter CMD...` runs CMD in the mount, network and user
  # namespaces of the running rootless containerd, as its (fake) root.
  nsenter = pkgs.writeShellScriptBin "containerd-nsenter" ''
    set -eu
    if [ -z "''${XDG_RUNTIME_DIR-}" ]; then
      echo "containerd-nsenter: XDG_RUNTIME_DIR is not set" >&2
      exit 1
    fi
    pidfile="${stateDir}/child_pid"
    if [ ! -s "$pidfile" ]; then
      echo "containerd-nsenter: $pidfile is missing: is the rootless containerd running?" >&2
      exit 1
    fi
    pid=$(${pkgs.coreutils}/bin/cat "$pidfile")
    exec ${pkgs.util-linux}/bin/nsenter --no-fork --preserve-credentials \
      --mount --net --user --target "$pid" -- "$@"
  '';

  # runsc for a containerd in a user namespace: it cannot manage cgroups
  # there (containerd runs with disable_cgroup), so runsc ignores them.
  # First on containerd's PATH, so gVisor's shim runs it.
  runscRootless = pkgs.writeShellScriptBin "runsc" ''
    exec ${pkgs.gvisor}/bin/runsc --ignore-cgroups "$@"
  '';

  # Bind mounts sorted by mount point, so /etc/cni comes before /etc/cni/net.d.
  sortedBindMounts = bindMounts:
    lib.sort (a: b: a.mountPoint < b.mountPoint)
      (lib.mapAttrsToList (source: opts: { inherit source; inherit (opts) mountPoint; }) bindMounts);

  # Runs inside rootlesskit's namespaces as the namespace's root.
  child = cfg:
    pkgs.writeShellScript "containerd-rootless-child" ''
      set -eu
      export PATH=${lib.makeBinPath ([ cfg.package pkgs.runc pkgs.coreutils pkgs.iptables pkgs.kmod ] ++ cfg.path)}:/run/current-system/sw/bin:${pkgs.util-linux}/bin
      : "''${HOME:?HOME must be set}"
      export XDG_DATA_HOME="''${XDG_DATA_HOME:-$HOME/.local/share}"
      export XDG_CONFIG_HOME="''${XDG_CONFIG_HOME:-$HOME/.config}"

      # Not the host's iptables lock.
      rm -f /run/xtables.lock

      # Directories of the host (sources) over paths of the namespace, so
      # containerd's sockets and state live where the user can reach them.
      # The copy-up of /etc, /run and /var/lib left symlinks to the host's
      # entries there; only those are replaced.
      bind() {
        mkdir -p "$1"
        if [ -L "$2" ]; then rm -f "$2"; fi
        mkdir -p "$2"
        mount --bind "$1" "$2"
      }
      ${lib.concatMapStrings (m: ''
        bind "${m.source}" "${m.mountPoint}"
      '') (sortedBindMounts cfg.bindMounts)}
      exec containerd "$@"
    '';

  # The user service's ExecStart: rootlesskit, then the child, then containerd.
  launcher = cfg:
    pkgs.writeShellScript "containerd-rootless" ''
      set -eu
      export PATH=${lib.makeBinPath [ pkgs.rootlesskit pkgs.slirp4netns pkgs.iproute2 pkgs.util-linux pkgs.coreutils ]}:${hostSetuidPath}
      if [ -z "''${XDG_RUNTIME_DIR-}" ] || [ ! -w "$XDG_RUNTIME_DIR" ]; then
        echo "containerd-rootless: XDG_RUNTIME_DIR must be set and writable" >&2
        exit 1
      fi
      exec rootlesskit \
        --state-dir="${stateDir}" \
        --net=slirp4netns --mtu=65520 \
        --slirp4netns-sandbox=auto --slirp4netns-seccomp=auto \
        --disable-host-loopback \
        --port-driver=builtin \
        --copy-up=/etc --copy-up=/run --copy-up=/var/lib --copy-up=/var/log \
        --propagation=rslave \
        ${child cfg} ${lib.concatStringsSep " " (lib.mapAttrsToList (k: v: "--${k} ${lib.escapeShellArg v}") cfg.args)}
    '';

  containerdUnit = cfg: {
    Unit = {
      Description = "containerd container runtime (rootless)";
      # rootlesskit needs a real user (newuidmap, subordinate ids).
      ConditionUser = "!root";
      StartLimitBurst = "16";
      StartLimitIntervalSec = "120s";
    };
    Service = {
      Type = "notify";
      # containerd notifies from inside the namespaces.
      NotifyAccess = "all";
      ExecStart = "${launcher cfg}";
      ExecReload = "${pkgs.coreutils}/bin/kill -s HUP $MAINPID";
      Restart = "always";
      RestartSec = "5";
      Delegate = "yes";
      # SIGTERM to rootlesskit first; whatever is left of its namespaces
      # (shims, containers) is killed with it: they cannot outlive them.
      KillMode = "mixed";
      LimitNOFILE = "infinity";
      LimitNPROC = "infinity";
      LimitCORE = "infinity";
      TasksMax = "infinity";
      OOMScoreAdjust = "-500";
    };
    Install.WantedBy = [ "default.target" ];
  };

  # nix-snapshotter must run in containerd's namespaces: the snapshot
  # directories are written by containerd's (fake) root there.
  snapshotterUnit = { cfg, customConfigFile }:
    let
      nsLib = import ./lib.nix { inherit lib pkgs; };
      # Unless configured otherwise, keep the state in the user's state
      # directory (%S = $XDG_STATE_HOME): its path is the same inside the
      # namespaces and out, so the Nix daemon sees the GC roots there.
      rootArgs = lib.optionals (!(cfg.settings ? root) && !customConfigFile) [ "--root" "%S/nix-snapshotter" ];
    in
    {
      Unit = {
        Description = "nix-snapshotter, containerd snapshotter for Nix store paths (rootless)";
        # The namespaces exist once containerd runs; containerd connects to
        # the proxy snapshotter lazily, so it may start first.
        After = [ "containerd.service" ];
        BindsTo = [ "containerd.service" ];
        PartOf = [ "containerd.service" ];
      };
      # The user's state directory holds the default root.
      Service = nsLib.snapshotterService // lib.optionalAttrs (rootArgs != [ ]) { StateDirectory = "nix-snapshotter"; } // {
        ExecStart = "${nsenter}/bin/containerd-nsenter ${nsLib.snapshotterCommand cfg rootArgs}";
        Environment = [
          "PATH=${lib.makeBinPath (cfg.path ++ nsLib.requiredPath)}"
          # Inside the user namespace the daemon is uid 0, but the store
          # belongs to the real root: talk to the Nix daemon.
          "NIX_REMOTE=daemon"
        ];
      };
      Install.WantedBy = [ "default.target" ];
    };
}
