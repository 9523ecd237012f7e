# nix-snapshotter (the daemon) and nix2container, built from this
# repository with nixpkgs' buildNpmPackage:
#
#   nix-snapshotter = pkgs.callPackage ./pkgs/nix-snapshotter.nix { };
#   nix-snapshotter.buildImage { name = "hello"; config.Entrypoint = [ "${pkgs.hello}/bin/hello" ]; }
#
# Native modules (better-sqlite3, unix-dgram) are compiled with node-gyp
# against nodejs' headers. Both programs get `nix` on PATH (nix-store).
{ lib
, buildNpmPackage
, importNpmLock
, nodejs_20
, python3
, makeWrapper
, nix
, stdenvNoCC
, runCommand
, writeText
, closureInfo
, writeShellScriptBin
  # Registry for fetching the npm dependencies (default: npm's own).
, npmRegistry ? null
}:
let
  root = ../.;
  packageJson = lib.importJSON (root + "/package.json");

  npmDeps = import ./npm-deps.nix
    {
      inherit lib stdenvNoCC runCommand npmRegistry;
      nodejs = nodejs_20;
    }
    { npmRoot = root; };

  images = import ./buildImage.nix {
    inherit runCommand writeText closureInfo writeShellScriptBin;
    nix-snapshotter = package;
  };

  package = buildNpmPackage {
    pname = packageJson.name;
    inherit (packageJson) version;

    # Only what the build reads: a change to tests or docs rebuilds nothing.
    src = builtins.path {
      path = root;
      name = "nix-snapshotter-src";
      filter = path: type:
        let rel = lib.removePrefix (toString root + "/") (toString path);
        in builtins.elem rel [ "package.json" "package-lock.json" "tsconfig.json" "src" "proto" ]
          || lib.hasPrefix "src/" rel
          || lib.hasPrefix "proto/" rel;
    };

    nodejs = nodejs_20;
    inherit npmDeps;
    # importNpmLock's hook points node-gyp at the headers of the nodejs it
    # was made with (npm_config_nodedir), nixpkgs' default nodejs unless
    # overridden: native modules (better-sqlite3) must be compiled for the
    # nodejs that runs them.
    npmConfigHook = importNpmLock.npmConfigHook.override { nodejs = nodejs_20; };

    # node-gyp: python3 and a C/C++ toolchain (stdenv) for better-sqlite3
    # and unix-dgram; skip better-sqlite3's prebuilt-binary download.
    nativeBuildInputs = [ python3 makeWrapper ];
    env.npm_config_build_from_source = "true";

    # `npm run build` (tsc). tsconfig.json also names devenv/, test/ and
    # bench/, which are not part of src: only src/ is compiled.
    npmBuildScript = "build";

    postInstall = ''
      for bin in nix-snapshotter nix2container; do
        wrapProgram "$out/bin/$bin" --prefix PATH : ${lib.makeBinPath [ nix ]}
      done
    '';

    doInstallCheck = true;
    installCheckPhase = ''
      runHook preInstallCheck
      $out/bin/nix-snapshotter --version
      $out/bin/nix2container --help >/dev/null
      test -f $out/lib/node_modules/${packageJson.name}/proto/containerd/services/snapshots/v1/snapshots.proto
      runHook postInstallCheck
    '';

    passthru = {
      inherit (images) buildImage copyToRegistry copyToContainerd;
      inherit npmDeps;
    };

    meta = {
      description = packageJson.description;
      license = lib.licenses.mit;
      platforms = lib.platforms.linux;
      mainProgram = "nix-snapshotter";
    };
  };
in
package
