# What the module evaluation still stands in for, because the nixpkgs
# sources it evaluates against (NIX_SOURCES: nixpkgs' lib, the real
# containerd, k3s, systemd, environment/assertions/meta modules and Home
# Manager) do not contain it:
#
#   pkgs      packages and builders. Every package is a real store file
#             (builtins.toFile) holding JSON that names the programs it
#             provides ({ "standIn": pname, "bins": [...] }), so a check can
#             tell whether `${pkg}/bin/x` exists and what a generated script
#             says. Builders write real files: writeShellScript(Bin),
#             writeText(File) and formats.toml's generate (TOML rendered by
#             `toTOML` below, read back with builtins.fromTOML). A package
#             or builder that is not listed here is an evaluation error.
#   nixos     the NixOS options the real modules read that live in modules
#             not loaded (users.users, boot.zfs, networking.networkmanager),
#             declared with the same types as NixOS; nothing else.
#
# `era` picks the package versions of a release ("24.11" or "26.05"): the
# versions decide which containerd configuration the modules render.
{ lib, era, nixpkgs }:
let
  formatsTypes = import (nixpkgs + "/pkgs/pkgs-lib/formats-types.nix") { inherit lib; };

  inherit (lib) mkOption types;

  # The versions that matter: containerd's major version selects config
  # version 2 or 3; nodejs_20 must satisfy the npm dependencies' engines.
  # 24.11 carries containerd 1.7.x and the Go nix-snapshotter 0.2.x; the
  # 26.05-cycle versions are those of Swarsel/nixpkgs@4aa6836a (one of the
  # 26.05-cycle trees the sources' README cross-checks against):
  # containerd 2.3.1, nodejs 20.20.2; nixpkgs' Go nix-snapshotter is 0.3.0.
  versions = {
    "24.11" = { containerd = "1.7"; nix-snapshotter-go = "0.2"; nodejs_20 = "20"; };
    "26.05" = { containerd = "2.3.1"; nix-snapshotter-go = "0.3.0"; nodejs_20 = "20.20.2"; };
  }.${era};

  coreutilsBins = [
    "basename" "cat" "chgrp" "chmod" "chown" "cp" "cut" "date" "dd" "df" "dirname" "du" "echo" "env"
    "false" "head" "id" "install" "kill" "ln" "ls" "mkdir" "mkfifo" "mknod" "mktemp" "mv" "nice"
    "nohup" "printf" "readlink" "realpath" "rm" "rmdir" "seq" "sleep" "sort" "stat" "sync" "tail"
    "tee" "test" "timeout" "touch" "tr" "true" "uname" "uniq" "wc" "whoami" "yes"
  ];

  # A stand-in package: a real store file describing it.
  mkPkg = { pname, version ? null, bins ? [ ], scripts ? { }, passthru ? { } }:
    let
      name = if version == null then pname else "${pname}-${version}";
      self = {
        type = "derivation";
        inherit name pname;
        version = if version == null then "" else version;
        outPath = builtins.toFile name (builtins.toJSON { standIn = pname; inherit bins scripts; });
        drvPath = self.outPath;
        outputs = [ "out" ];
        out = self;
        outputName = "out";
        meta = lib.optionalAttrs (bins != [ ]) { mainProgram = builtins.head bins; };
        overrideAttrs = f: self // f self;
        override = _: self;
        passthru = passthru;
      } // passthru;
    in
    self;

  pkg = pname: bins: mkPkg { inherit pname bins; };

  # TOML as containerd and the daemon read it, from the settings value
  # (nixpkgs renders with remarshal's json2toml; this renderer stands in
  # for it and the checks parse its output back with builtins.fromTOML).
  toTOML = value:
    let
      isTable = v: builtins.isAttrs v && !(lib.isDerivation v);
      isTableList = v: builtins.isList v && v != [ ] && lib.all isTable v;
      key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
      scalar = v:
        if builtins.isString v || builtins.isPath v || lib.isDerivation v then builtins.toJSON "${v}"
        else if builtins.isBool v then lib.boolToString v
        else if builtins.isInt v || builtins.isFloat v then toString v
        else if builtins.isList v then "[ " + lib.concatMapStringsSep ", " scalar v + " ]"
        else if isTable v then "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${scalar x}") v) + " }"
        else throw "toTOML: cannot render ${builtins.typeOf v}";
      table = path: attrs:
        let
          plain = lib.filterAttrs (_: v: v != null && !isTable v && !isTableList v) attrs;
          tables = lib.filterAttrs (_: isTable) attrs;
          arrays = lib.filterAttrs (_: isTableList) attrs;
          name = lib.concatMapStringsSep "." key path;
        in
        lib.optionalString (path != [ ] && (plain != { } || tables == { } && arrays == { })) "[${name}]\n"
        + lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${scalar v}\n") plain)
        + lib.concatStrings (lib.mapAttrsToList (k: v: table (path ++ [ k ]) v) tables)
        + lib.concatStrings (lib.mapAttrsToList (k: vs: lib.concatMapStrings (v:
            "[[${lib.concatMapStringsSep "." key (path ++ [ k ])}]]\n"
            + lib.concatStrings (lib.mapAttrsToList (k': x: "${key k'} = ${scalar x}\n") v)) vs) arrays);
    in
    table [ ] value;

  writeTextFile = { name, text, executable ? false, destination ? "", ... }:
    if destination == "" then builtins.toFile name text
    else mkPkg { pname = name; scripts.${destination} = text; };

  writeShellScriptBin = name: text:
    mkPkg { pname = name; bins = [ name ]; scripts.${name} = "#!/bin/sh\n" + text; };

  packageList = {
    nix = [ "nix" "nix-store" "nix-build" "nix-instantiate" "nix-env" "nix-daemon" "nix-collect-garbage" "nix-shell" ];
    containerd = [ "containerd" "ctr" "containerd-shim-runc-v2" "containerd-stress" ];
    runc = [ "runc" ];
    gvisor = [ "runsc" "containerd-shim-runsc-v1" ];
    iptables = [ "iptables" "ip6tables" "iptables-save" "iptables-restore" "ip6tables-save" "ip6tables-restore" ];
    coreutils = coreutilsBins;
    coreutils-full = coreutilsBins;
    findutils = [ "find" "xargs" ];
    gnugrep = [ "grep" "egrep" "fgrep" ];
    gnused = [ "sed" ];
    gawk = [ "awk" "gawk" ];
    bash = [ "bash" "sh" ];
    bashInteractive = [ "bash" "sh" ];
    systemd = [ "systemctl" "systemd-run" "journalctl" "systemd-tmpfiles" ];
    util-linux = [ "mount" "umount" "nsenter" "unshare" "losetup" "findmnt" "lsblk" "setpriv" ];
    kmod = [ "modprobe" "insmod" "lsmod" "rmmod" ];
    rootlesskit = [ "rootlesskit" "rootlessctl" ];
    slirp4netns = [ "slirp4netns" ];
    iproute2 = [ "ip" "tc" "ss" "bridge" ];
    cni-plugins = [ "bridge" "host-local" "loopback" "portmap" "bandwidth" "firewall" "ptp" "macvlan" "ipvlan" "dhcp" "static" "tuning" "vlan" "host-device" "sbr" "vrf" ];
    cni-plugin-flannel = [ "flannel" ];
    k3s = [ "k3s" "kubectl" "crictl" "ctr" ];
    nerdctl = [ "nerdctl" ];
    kubectl = [ "kubectl" ];
    cri-tools = [ "crictl" "critest" ];
    procps = [ "ps" "pgrep" "pkill" "sysctl" ];
    ipset = [ "ipset" ];
    socat = [ "socat" ];
    conntrack-tools = [ "conntrack" ];
    ethtool = [ "ethtool" ];
    fuse-overlayfs = [ "fuse-overlayfs" ];
    fuse3 = [ "fusermount3" ];
    shadow = [ "newuidmap" "newgidmap" ];
    zfs = [ "zfs" "zpool" ];
    openssl = [ "openssl" ];
    hello = [ "hello" ];
    tini = [ "tini" ];
    glibcLocales = [ ];
    python3 = [ "python3" ];
    makeWrapper = [ ];
    jq = [ "jq" ];
    redis = [ "redis-server" "redis-cli" ];
  };

  packages = lib.mapAttrs (n: bins: pkg n bins) packageList // {
    containerd = mkPkg { pname = "containerd"; version = versions.containerd; bins = packageList.containerd; };
    nodejs_20 = mkPkg { pname = "nodejs"; version = versions.nodejs_20; bins = [ "node" "npm" "npx" ]; };
    # nixpkgs' own nix-snapshotter: the Go daemon, a different program.
    nix-snapshotter = mkPkg {
      pname = "nix-snapshotter";
      version = versions.nix-snapshotter-go;
      bins = [ "nix-snapshotter" "rootless-containerd" ];
    };
  };

  # nixpkgs as a fixpoint, so overlays work as they do on the real one.
  base = self: packages // {
    inherit lib writeTextFile writeShellScriptBin;
    # Home Manager imports NixOS's assertions.nix and meta.nix from here.
    path = nixpkgs;
    stdenv = {
      hostPlatform = lib.systems.elaborate "x86_64-linux";
      buildPlatform = lib.systems.elaborate "x86_64-linux";
      isLinux = true;
      isDarwin = false;
      system = "x86_64-linux";
    };
    system = "x86_64-linux";
    # The option types are nixpkgs' own (formats-types.nix of the sources);
    # generate writes real files: TOML by toTOML, the others as JSON (a
    # YAML subset; INI files are not read by any check).
    formats = lib.mapAttrs
      (fmt: f: args: f args // {
        generate = name: value:
          builtins.toFile name (if fmt == "toml" then toTOML value else builtins.toJSON value);
      })
      formatsTypes;
    writeText = name: text: builtins.toFile name text;
    writeShellScript = name: text: builtins.toFile name ("#!/bin/sh\n" + text);
    writeScript = name: text: builtins.toFile name text;
    writeShellApplication = { name, text, runtimeInputs ? [ ], ... }:
      writeShellScriptBin name ("export PATH=\"${lib.makeBinPath runtimeInputs}:$PATH\"\n" + text);
    concatText = name: files: builtins.toFile name (lib.concatMapStrings builtins.readFile files);
    # The build script is kept in the file, so a check can see what it uses.
    runCommand = name: env: script: mkPkg { pname = name; scripts.build = script; passthru = env.passthru or { }; };
    runCommandLocal = name: env: script: mkPkg { pname = name; scripts.build = script; passthru = env.passthru or { }; };
    buildEnv = { name, paths, ... }: mkPkg {
      pname = name;
      bins = lib.unique (lib.concatMap (p: p.passthru.bins or (builtins.fromJSON (builtins.readFile p.outPath)).bins) paths);
    };
    symlinkJoin = { name, paths, ... }: self.buildEnv { inherit name paths; };
    callPackage = f: overrides:
      let
        fn = if builtins.isFunction f then f else import f;
        auto = builtins.intersectAttrs (builtins.functionArgs fn) self;
      in
      fn (auto // overrides);
    extend = overlay: lib.fix (lib.extends overlay base);

    # The builders pkgs/nix-snapshotter.nix calls. buildNpmPackage yields a
    # package providing the bins of package.json, whose file names the
    # source it was built from, so it is told apart from nixpkgs' Go one.
    buildNpmPackage = a: mkPkg {
      inherit (a) pname version;
      bins = lib.attrNames (lib.importJSON ../../package.json).bin;
      passthru = a.passthru or { } // { npmArgs = a; };
    };
    importNpmLock = { npmConfigHook = pkg "npm-config-hook" [ ] // { override = _: pkg "npm-config-hook" [ ]; }; };
    stdenvNoCC = { mkDerivation = a: mkPkg { pname = a.name; passthru.args = a; }; };
    closureInfo = { rootPaths }: pkg "closure-info" [ ];
    mkShell = a: mkPkg { pname = "shell"; passthru = { inherit (a) packages; }; };
    testers.runNixOSTest = test: mkPkg {
      pname = "nixos-test";
      passthru = {
        inherit test;
        driver = pkg "nixos-test-driver" [ "nixos-test-driver" ];
        driverInteractive = pkg "nixos-test-driver-interactive" [ "nixos-test-driver" ];
      };
    };
    dockerTools.buildLayeredImage = a: mkPkg { pname = "docker-image-${baseNameOf a.name}.tar.gz"; };
  };

  pkgs = lib.fix base;
  pkgsWithOverlays = overlays: lib.fix (lib.foldl' (f: o: lib.extends o f) base overlays);

  # NixOS options the real modules read that are declared in modules not
  # loaded here; types as in NixOS.
  nixos = {
    options = {
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            isNormalUser = mkOption { type = types.bool; default = false; };
            uid = mkOption { type = types.nullOr types.int; default = null; };
            linger = mkOption { type = types.bool; default = false; };
            extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
            password = mkOption { type = types.nullOr types.str; default = null; };
          };
        });
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            gid = mkOption { type = types.nullOr types.int; default = null; };
            members = mkOption { type = types.listOf types.str; default = [ ]; };
          };
        });
        default = { };
      };
      boot.zfs.enabled = mkOption { type = types.bool; default = false; readOnly = true; };
      boot.zfs.package = mkOption { type = types.package; default = packages.zfs; };
      networking.networkmanager.enable = mkOption { type = types.bool; default = false; };
    };
  };
in
{
  inherit pkgs pkgsWithOverlays nixos toTOML mkPkg;
}
