# A stand-in for `import nixpkgs { system; overlays; }`, enough to evaluate
# flake.nix, default.nix and the NixOS tests (eval-flake.nix,
# eval-tests.nix): nixpkgs' lib from $NIXPKGS_LIB, the stubs of stubs.nix,
# more fake packages, and builders returning fake derivations that keep
# their arguments. Overlays are applied as nixpkgs does (a fixpoint).
{ system ? "x86_64-linux", overlays ? [ ], config ? { } }:
let
  lib = import (builtins.getEnv "NIXPKGS_LIB" + "/lib");
  stubs = import ../stubs.nix { inherit lib; };

  fakeDrv = name: extra: {
    type = "derivation";
    inherit name system;
    outPath = stubs.storePath name;
    drvPath = stubs.storePath "${name}.drv";
    outputs = [ "out" ];
    meta = { };
  } // extra;

  base = self: stubs.pkgs // lib.genAttrs [
    "nix" "containerd" "runc" "nerdctl" "kubectl" "cri-tools" "redis" "hello" "nodejs_20" "python3"
    "makeWrapper" "bashInteractive" "coreutils" "cni-plugins" "cni-plugin-flannel" "k3s" "tini"
  ] (n: fakeDrv n { }) // {
    inherit lib;
    stdenv.hostPlatform.system = system;
    callPackage = f: overrides:
      let
        fn = if builtins.isFunction f then f else import f;
        auto = builtins.intersectAttrs (builtins.functionArgs fn) self;
      in fn (auto // overrides);
    extend = overlay: lib.fix (lib.extends overlay base);
    buildNpmPackage = a: fakeDrv "${a.pname}-${a.version}" ({ args = a; } // a.passthru);
    importNpmLock.npmConfigHook = fakeDrv "npm-config-hook" { };
    stdenvNoCC.mkDerivation = a: fakeDrv a.name { args = a; };
    runCommand = name: env: script: fakeDrv name (env.passthru or { });
    writeText = name: text: fakeDrv name { };
    writeShellScriptBin = name: text: fakeDrv name { };
    closureInfo = { rootPaths }: fakeDrv "closure-info" { };
    buildEnv = a: fakeDrv a.name { };
    mkShell = a: fakeDrv "shell" { inherit (a) packages; };
    dockerTools.buildLayeredImage = a: fakeDrv "${a.name}.tar.gz" { };
    testers.runNixOSTest = test: fakeDrv "nixos-test" {
      inherit test;
      driver = fakeDrv "nixos-test-driver" { };
      driverInteractive = fakeDrv "nixos-test-driver-interactive" { };
    };
  };
in
lib.fix (lib.foldl' (f: o: lib.extends o f) base overlays)
