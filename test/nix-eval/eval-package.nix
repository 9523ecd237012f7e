# Evaluates pkgs/nix-snapshotter.nix (and pkgs/npm-deps.nix) with nixpkgs'
# lib and stand-in builders that return their arguments, and checks the
# derivation attributes, the npm dependency lock it would install from
# (lockfile entries with and without `resolved` URLs), and that every npm
# package's `engines.node` admits the nodejs_20 of the pinned nixpkgs
# (26.05: standins.nix).
#
#   nix-instantiate --eval --strict --json --read-write-mode \
#     test/nix-eval/eval-package.nix --arg sources "$NIX_SOURCES" -A failures
#
# Result: { failures = [ "message", ... ]; checks = N; }
{ sources }:
let
  h = import ./harness.nix { inherit sources; era = "26.05"; };
  inherit (h) lib;
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";

  fakeDrv = name: { type = "derivation"; inherit name; outPath = storePath name; };

  args = {
    inherit lib;
    buildNpmPackage = a: fakeDrv "${a.pname}-${a.version}" // { args = a; } // a.passthru;
    # As nixpkgs: the hook is made overridable by callPackages.
    importNpmLock = { npmConfigHook = fakeDrv "npm-config-hook" // { override = a: fakeDrv "npm-config-hook-${a.nodejs.name}"; }; };
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

  # --- lockfile entries with `resolved` URLs ----------------------------

  depsArgs = { inherit lib; inherit (args) stdenvNoCC runCommand; nodejs = args.nodejs_20; };
  withResolved = resolvedFor: import ../../pkgs/npm-deps.nix depsArgs {
    npmRoot = ../..;
    packageLock = lock // {
      packages = lib.mapAttrs (k: m: if k == "" || !(m ? version) || m.link or false || m.inBundle or false then m else m // { resolved = resolvedFor k m; }) lock.packages;
    };
  };
  registryResolved = withResolved (k: m: "https://registry.npmjs.org/${nameOf k}/-/${lib.last (lib.splitString "/" (nameOf k))}-${m.version}.tgz");
  tarballResolved = withResolved (k: m: "https://tarballs.example.test/${nameOf k}-${m.version}.tgz");
  fileResolved = withResolved (k: m: "file:vendor/${nameOf k}.tgz");
  yargsKey = "node_modules/yargs";
  resolvedChecks = lib.concatLists [
    (eq "resolved at the registry: npm pack NAME@VERSION" registryResolved.tarballs.${yargsKey}.args.spec "yargs@${lock.packages.${yargsKey}.version}")
    (eq "resolved at the registry: same fixed-output hash" registryResolved.tarballs.${yargsKey}.args.outputHash lock.packages.${yargsKey}.integrity)
    (eq "resolved to another tarball URL: npm pack URL" tarballResolved.tarballs.${yargsKey}.args.spec "https://tarballs.example.test/yargs-${lock.packages.${yargsKey}.version}.tgz")
    (ok "resolved lock: every entry points at a store tarball"
      (lib.all (k: lib.hasPrefix "file:/nix/store/" ((builtins.fromJSON registryResolved.env.packageLockJson).packages.${k}.resolved or "file:/nix/store/"))
        fetchedKeys))
    (ok "resolved to a file: refused with a message" (!(builtins.tryEval (builtins.deepSeq fileResolved.tarballs.${yargsKey}.args.spec true)).success))
  ];

  # --- engines.node of every npm package admits the pinned nodejs_20 -----

  # A subset of npm's semver ranges, enough for the lockfile: "||"
  # alternatives of space-separated comparators (>=, >, <=, <, =, ^, ~,
  # x-ranges such as "20", "20.x", "10.*", "*").
  nodeVersion = h.pkgs.nodejs_20.version;
  parts = v: map lib.toInt (lib.take 3 (lib.splitString "." v ++ [ "0" "0" ]));
  cmp = a: b: builtins.compareVersions (lib.concatMapStringsSep "." toString (parts a)) (lib.concatMapStringsSep "." toString (parts b));
  partial = v: lib.filter (x: x != "x" && x != "*" && x != "X") (lib.splitString "." v);
  bump = xs: i: lib.concatMapStringsSep "." toString (lib.imap0 (j: x: if j < i then lib.toInt x else if j == i then lib.toInt x + 1 else 0) (xs ++ [ "0" "0" ]));
  comparator = c: v:
    let
      m = builtins.match "(>=|<=|>|<|=|\\^|~)?(.*)" c;
      op = builtins.elemAt m 0;
      xs = partial (builtins.elemAt m 1);
      base = lib.concatStringsSep "." xs;
      n = builtins.length xs;
    in
    if xs == [ ] then true
    else if op == ">=" then cmp v base >= 0
    else if op == ">" then cmp v base > 0
    else if op == "<=" then cmp v base <= 0
    else if op == "<" then cmp v base < 0
    else if op == "^" then cmp v base >= 0 && cmp v (bump xs (if builtins.head xs != "0" || n == 1 then 0 else 1)) < 0
    else if op == "~" then cmp v base >= 0 && cmp v (bump xs (if n == 1 then 0 else 1)) < 0
    else if n == 3 then cmp v base == 0
    else cmp v base >= 0 && cmp v (bump xs (n - 1)) < 0;
  satisfies = range: v:
    lib.any
      (alt: lib.all (c: comparator c v) (lib.filter (c: c != "") (lib.splitString " "
        (lib.replaceStrings [ ">= " "<= " "> " "< " "^ " "~ " "= " ] [ ">=" "<=" ">" "<" "^" "~" "=" ] (lib.trim alt)))))
      (lib.splitString "||" range);
  enginesOf = lib.filterAttrs (_: r: r != null) (lib.mapAttrs (_: m: m.engines.node or null) lock.packages);
  enginesChecks = lib.concatLists [
    (ok "semver: ^20.19.0 refuses 20.18.1" (!satisfies "^20.19.0 || ^22.12.0 || >=23" "20.18.1"))
    (ok "semver: ^20.19.0 admits 20.20.2" (satisfies "^20.19.0 || ^22.12.0 || >=23" "20.20.2"))
    (ok "semver: 20.x || 22.x admits 20.1.0" (satisfies "20.x || 22.x" "20.1.0"))
    (ok "semver: >=16 || 14 >=14.17 refuses 14.1.0" (!satisfies ">=16 || 14 >=14.17" "14.1.0"))
    (ok "semver: 6.* || 8.* || >= 10.* admits 20.0.0" (satisfies "6.* || 8.* || >= 10.*" "20.0.0"))
    (eq "every npm package admits nodejs_20 ${nodeVersion} of the pinned nixpkgs"
      (lib.attrNames (lib.filterAttrs (_: r: !satisfies r nodeVersion) enginesOf)) [ ])
  ];

  checks = lib.concatLists [
    resolvedChecks
    enginesChecks
    (eq "pname" a.pname "nix-snapshotter")
    (eq "version" a.version packageJson.version)
    (eq "nodejs" a.nodejs.name "nodejs-20")
    (eq "npmConfigHook made with the package's nodejs (native modules' headers)" a.npmConfigHook.name "npm-config-hook-nodejs-20")
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
