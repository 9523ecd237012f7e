# Fixture images built with pkgs/buildImage.nix and the mini package set,
# used by test/integration/nix-files.test.ts (and check.sh):
#
#   nix-build test/nix-eval/images.nix --argstr nix2containerBin "$PWD/build/src/cli/nix2container.js" -A named
#   nix-instantiate --eval --strict --json test/nix-eval/images.nix --argstr nix2containerBin ... -A info
{ nix2containerBin, salt ? "" }:
let
  pkgs = import ./mini-pkgs.nix { inherit nix2containerBin salt; };
  inherit (import ../../pkgs/buildImage.nix pkgs) buildImage;
  fixture = import ../fixtures/nix/hello.nix;
  inherit (fixture) hello busybox;

  # A registry-style name: lower-cased in the reference, basename in the store.
  named = buildImage {
    name = "Example.com/Demo/Hello";
    tag = "v1";
    config = {
      entrypoint = [ "${hello}/bin/hello" ];
      Env = [ "GREETING=hi" ];
    };
    copyToRoot = busybox;
  };

  # Resolved from the Nix store: nix:0<archive>.
  byNix = buildImage {
    name = "hello";
    resolvedByNix = true;
    config.Entrypoint = [ "${hello}/bin/hello" ];
  };

  # On top of another image (fromImage): its layers first, its config as defaults.
  based = buildImage {
    name = "based";
    fromImage = named;
    config.Env = [ "EXTRA=1" ];
  };

  registryScript = named.copyToRegistry { plainHTTP = true; };
  registryScriptRenamed = named.copyToRegistry { imageName = "localhost:5000/other"; imageTag = "t2"; };
  containerdScript = byNix.copyToContainerd { address = "$XDG_RUNTIME_DIR/containerd/containerd.sock"; namespace = "k8s.io"; };
  containerdScriptDefault = byNix.copyToContainerd { };
in
{
  inherit named byNix based registryScript registryScriptRenamed containerdScript containerdScriptDefault;

  # Plain strings (no store context) for nix-instantiate --eval --json.
  info = builtins.mapAttrs (_: builtins.unsafeDiscardStringContext) {
    namedImage = named.image;
    namedOut = named.outPath;
    namedName = named.name;
    byNixImage = byNix.image;
    byNixOut = byNix.outPath;
    byNixName = byNix.name;
    hello = "${hello}";
    busybox = "${busybox}";
    namedConfigFile = "${named.configFile}";
    namedClosure = "${named.closureInfo}";
    byNixClosure = "${byNix.closureInfo}";
  };
}
