# Evaluates pkgs/nix-snapshotter.nix (and pkgs/npm-deps.nix) with nixpkgs'
# lib and stand-in builders that return their arguments, and checks the
# derivation attributes and the npm dependency lock it would install from.
#
#   nix-instantiate --eval --strict --json --read-write-mode \
#     test/nix-eval/eval-package.nix --arg nixpkgsLib "$NIXPKGS_LIB"
#
# Result: { failures = [ "message", ... ]; checks = N; }
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./stubs.nix { inherit lib; };
  inherit (stubs) storePath;

  fakeDrv = name: { type = "derivation"; inherit name; outPath = storePath name; };

  args = {
    inherit lib;
    buildNpmPackage = a: fakeDrv "${a.pname}-${a.version}" // { args = a; } // a.passthru;
    importNpmLock = { npmConfigHook = fakeDrv "npm-config-hook"; };
    stdenvNoCC.mkDerivation = a: fakeDrv a.name // { args = a; };
    runCommand = name: env: script: fakeDrv name // { inherit env script; } // (env.passthru or { });
    nodejs_20 = fakeDrv "nodejs-20";
    python3 = fakeDrv "python3";
    makeWrapper = fakeDrv "make-wrapper";
    nix = fakeDrv "nix";
    writeText = name: text: fakeDrv name;
    closureInfo = _: fakeDrv "closure-info";
    writeShellScriptBin = name: text: fakeDrv name;
  };

  package = import ../../pkgs/nix-snapshotter.nix args;
  withRegistry = import ../../pkgs/nix-snapshotter.nix (args // { npmRegistry = "https://npm.example.test"; });
  a = package.args;

  lock = lib.importJSON ../../package-lock.json;
  packageJson = lib.importJSON ../../package.json;
  deps = package.npmDeps;
  depsLock = builtins.fromJSON deps.env.packageLockJson;
  depsPackage = builtins.fromJSON deps.env.packageJson;

  fetchedKeys = lib.filter (k: k != "") (lib.attrNames lock.packages);
  nameOf = k: lib.last (lib.splitString "node_modules/" k);

  eq = name: actual: expected: [{
    pass = actual == expected;
    message = "${name}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";
  }];
  ok = name: cond: [{ pass = cond; message = "${name}: does not hold"; }];

  perPackage = k:
    let
      m = lock.packages.${k};
      resolved = depsLock.packages.${k}.resolved or "";
      fetch = deps.packages.${k}.resolved;
      file = lib.removePrefix "file:" resolved;
      storeName = lib.replaceStrings [ "@" "/" ] [ "" "-" ] (nameOf k);
    in
    ok "${k}: resolved to a store tarball (${resolved})" (resolved == "file:${storePath "${storeName}-${m.version}.tgz"}")
    ++ ok "${k}: integrity kept" ((depsLock.packages.${k}.integrity or null) == m.integrity);

  tarballChecks = k:
    let
      m = lock.packages.${k};
      t = deps.tarballs.${k}.args;
    in
    eq "${k}: tarball hash" t.outputHash m.integrity
    ++ eq "${k}: tarball mode" t.outputHashMode "flat"
    ++ eq "${k}: npm pack spec" t.spec "${nameOf k}@${m.version}"
    ++ eq "${k}: default registry" t.registryFlag ""
    ++ eq "${k}: registry override" withRegistry.npmDeps.tarballs.${k}.args.registryFlag "--registry=https://npm.example.test";

  checks = lib.concatLists [
    (eq "pname" a.pname "nix-snapshotter")
    (eq "version" a.version packageJson.version)
    (eq "nodejs" a.nodejs.name "nodejs-20")
    (eq "npmConfigHook" a.npmConfigHook.name "npm-config-hook")
    (ok "python3 for node-gyp" (builtins.elem args.python3 a.nativeBuildInputs))
    (ok "makeWrapper" (builtins.elem args.makeWrapper a.nativeBuildInputs))
    (eq "npm build script" a.npmBuildScript "build")
    (ok "wrapProgram PATH nix" (lib.hasInfix "wrapProgram \"$out/bin/$bin\" --prefix PATH : ${storePath "nix"}/bin" a.postInstall))
    (ok "both bins wrapped" (lib.hasInfix "for bin in nix-snapshotter nix2container" a.postInstall))
    (ok "src has src/" (builtins.pathExists "${a.src}/src/cli/nix-snapshotter.ts"))
    (ok "src has proto/" (builtins.pathExists "${a.src}/proto"))
    (ok "src has the lockfile" (builtins.pathExists "${a.src}/package-lock.json"))
    (ok "src has no node_modules" (!builtins.pathExists "${a.src}/node_modules"))
    (ok "src has no build/" (!builtins.pathExists "${a.src}/build"))
    (ok "passthru.buildImage" (builtins.isFunction package.buildImage))
    (ok "passthru.copyToRegistry" (builtins.isFunction package.copyToRegistry))
    (eq "buildImage reference"
      (package.buildImage { name = "Reg.example/App"; tag = "v2"; }).image "reg.example/app:v2")
    (eq "npm deps: every package" (lib.length (lib.attrNames depsLock.packages)) (lib.length (lib.attrNames lock.packages)))
    (eq "npm deps: package.json dependencies"
      (lib.attrNames depsPackage.dependencies) (lib.attrNames packageJson.dependencies))
    (ok "npm deps: package.json points at tarballs"
      (lib.all (v: lib.hasPrefix "file:/nix/store/" v) (lib.attrValues depsPackage.dependencies ++ lib.attrValues depsPackage.devDependencies)))
    (lib.concatMap perPackage fetchedKeys)
    (lib.concatMap tarballChecks [
      "node_modules/@grpc/grpc-js"
      "node_modules/better-sqlite3"
      "node_modules/@grpc/proto-loader/node_modules/yargs"
    ])
    (ok "registry override keeps the lock (same fixed-output hashes)"
      (withRegistry.npmDeps.env.packageLockJson == deps.env.packageLockJson))
  ];
in
{
  failures = map (c: c.message) (lib.filter (c: !c.pass) checks);
  checks = lib.length checks;
}
