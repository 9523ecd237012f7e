# Stand-ins for evaluating the modules without nixpkgs: nixpkgs' `lib` (a
# checkout of it is required) plus
#   pkgs       - fake packages and builders; scripts written with
#                writeShellScript are real files (builtins.toFile) so their
#                text can be read back, and formats.toml's generate writes
#                the settings as JSON, so the generated config can be read;
#   nixos      - declarations of the NixOS options the modules set (with
#                NixOS's merge behaviour where it matters), including the
#                ones of nixpkgs' containerd and k3s modules;
#   home       - the same for Home Manager.
{ lib }:
let
  inherit (lib) mkOption types;

  fakeHash = "00000000000000000000000000000000";
  storePath = name: "/nix/store/${fakeHash}-${name}";

  mkPkg = name: {
    type = "derivation";
    inherit name;
    pname = name;
    outPath = storePath name;
    drvPath = storePath "${name}.drv";
    outputs = [ "out" ];
    meta = { };
  };

  # Build-time only (not valid in a file's text, which must stay context-free).
  writeShellScript = name: text:
    builtins.toFile name ("#!/bin/sh\n" + builtins.unsafeDiscardStringContext text);

  tomlValue = types.nullOr (types.oneOf [
    types.bool
    types.int
    types.float
    types.str
    types.path
    (types.attrsOf tomlValue)
    (types.listOf tomlValue)
  ]) // { description = "TOML value"; };

  pkgs = lib.genAttrs [
    "nix"
    "nix-snapshotter"
    "containerd"
    "runc"
    "cni-plugins"
    "cni-plugin-flannel"
    "k3s"
    "rootlesskit"
    "slirp4netns"
    "util-linux"
    "iproute2"
    "iptables"
    "kmod"
    "coreutils"
    "bash"
    "procps"
    "nerdctl"
    "kubectl"
  ] mkPkg // {
    stdenv.hostPlatform.system = "x86_64-linux";

    formats.toml = { }: {
      type = types.attrsOf tomlValue;
      generate = name: value:
        builtins.toFile name (builtins.unsafeDiscardStringContext (builtins.toJSON value));
    };

    inherit writeShellScript;
    writeShellScriptBin = name: text: mkPkg name // { inherit text; };
    writeText = name: text: builtins.toFile name (builtins.unsafeDiscardStringContext text);
    runCommand = name: env: script: mkPkg name // { inherit env script; };
    buildEnv = args: mkPkg args.name // { inherit (args) paths; };
    callPackage = _: _: throw "stub pkgs: callPackage is not expected (pkgs.nix-snapshotter is set)";
  };

  # NixOS's systemd option type: lists concatenate, other values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let defs' = lib.filterOverrides defs;
      in if lib.any (d: builtins.isList d.value) defs'
      then lib.concatMap (d: lib.toList d.value) defs'
      else lib.mergeEqualOption loc defs';
  };

  strList = mkOption { type = types.listOf types.str; default = [ ]; };

  nixosUnit = types.submodule {
    options = {
      description = mkOption { type = types.str; default = ""; };
      wantedBy = strList;
      requiredBy = strList;
      before = strList;
      after = strList;
      wants = strList;
      requires = strList;
      partOf = strList;
      bindsTo = strList;
      path = mkOption { type = types.listOf (types.either types.package types.str); default = [ ]; };
      environment = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ])); default = { }; };
      serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
    };
  };

  nixos = { config, ... }: {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };

      environment.etc = mkOption {
        type = types.attrsOf (types.submodule ({ name, config, ... }: {
          options.source = mkOption { type = types.path; };
          options.text = mkOption { type = types.nullOr types.lines; default = null; };
          options.mode = mkOption { type = types.str; default = "symlink"; };
          # As NixOS: text becomes a file.
          config.source = lib.mkIf (config.text != null)
            (lib.mkDefault (builtins.toFile (baseNameOf name) (builtins.unsafeDiscardStringContext config.text)));
        }));
        default = { };
      };
      environment.extraInit = mkOption { type = types.lines; default = ""; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };

      systemd.services = mkOption { type = types.attrsOf nixosUnit; default = { }; };
      systemd.user.services = mkOption { type = types.attrsOf nixosUnit; default = { }; };

      boot.kernel.sysctl = mkOption { type = types.attrsOf types.anything; default = { }; };
      networking.proxy.envVars = mkOption { type = types.attrsOf types.str; default = { }; };
      users.users = mkOption { type = types.attrsOf types.anything; default = { }; };

      # nixpkgs' virtualisation.containerd
      virtualisation.containerd = {
        enable = mkOption { type = types.bool; default = false; };
        package = mkOption { type = types.package; default = pkgs.containerd; };
        settings = mkOption { type = (pkgs.formats.toml { }).type; default = { }; };
        configFile = mkOption { type = types.nullOr types.path; default = null; };
        args = mkOption { type = types.attrsOf types.str; default = { }; };
      };

      # nixpkgs' services.k3s (24.11)
      services.k3s = {
        enable = mkOption { type = types.bool; default = false; };
        package = mkOption { type = types.package; default = pkgs.k3s; };
        role = mkOption { type = types.enum [ "server" "agent" ]; default = "server"; };
        extraFlags = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
        configPath = mkOption { type = types.nullOr types.path; default = null; };
      };
    };

    # nixpkgs' containerd module, in short: a config file from settings.
    config = lib.mkIf config.virtualisation.containerd.enable {
      virtualisation.containerd.configFile = lib.mkDefault
        ((pkgs.formats.toml { }).generate "containerd.toml" config.virtualisation.containerd.settings);
      virtualisation.containerd.settings.plugins."io.containerd.grpc.v1.cri".cni.bin_dir =
        lib.mkOptionDefault "${pkgs.cni-plugins}/bin";
    };
  };

  home = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      home.packages = mkOption { type = types.listOf types.package; default = [ ]; };
      home.sessionVariablesExtra = mkOption { type = types.lines; default = ""; };
      systemd.user.services = mkOption { type = types.attrsOf (types.attrsOf (types.attrsOf unitOption)); default = { }; };
    };
  };
in
{
  inherit pkgs nixos home storePath;
}
