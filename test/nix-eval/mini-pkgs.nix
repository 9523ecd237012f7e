# A tiny stand-in for the parts of nixpkgs that pkgs/buildImage.nix uses,
# built from builtins.derivation, /bin/sh and the host's tools (PATH below).
# Needs `sandbox = false` (builders read host files), like test/fixtures/nix.
#
#   pkgs = import ./mini-pkgs.nix {
#     nix2containerBin = "/abs/path/to/build/src/cli/nix2container.js";
#     salt = "...";   # changes the nix2container derivation, forcing rebuilds
#   };
#   images = import ../../pkgs/buildImage.nix pkgs;
#
# nix-snapshotter here is a wrapper running the repository's compiled CLI
# with the host's node: the derivation does not capture the JavaScript, so
# callers pass a salt (e.g. a hash of build/src) to rebuild after changes.
{ nix2containerBin
, node ? "/usr/bin/node"
, salt ? ""
}:
let
  fixtures = import ../fixtures/nix/lib.nix;
  system = builtins.currentSystem;

  # nixpkgs' runCommand: name, extra attributes (env vars, plus passthru
  # attributes added to the result), and a shell script.
  runCommand = name: env: script:
    let
      passthru = env.passthru or { };
      drv = builtins.derivation ({
        inherit name system;
        builder = "/bin/sh";
        args = [ "-ec" script ];
        PATH = fixtures.hostPATH;
      } // builtins.removeAttrs env [ "passthru" ]);
    in
    drv // passthru;

  writeText = name: text:
    runCommand name { inherit text; passAsFile = [ "text" ]; } ''
      cp "$textPath" "$out"
    '';

  writeShellScriptBin = name: text:
    runCommand name { inherit text; passAsFile = [ "text" ]; } ''
      mkdir -p "$out/bin"
      { echo '#!/bin/sh'; cat "$textPath"; } > "$out/bin/${name}"
      chmod 0555 "$out/bin/${name}"
    '';

  # $out/store-paths, like nixpkgs' closureInfo (exportReferencesGraph).
  inherit (fixtures) closureInfo;

  nix-snapshotter = runCommand "nix-snapshotter-host" { inherit node nix2containerBin salt; } ''
    mkdir -p "$out/bin"
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$node" "$nix2containerBin" > "$out/bin/nix2container"
    chmod 0555 "$out/bin/nix2container"
  '';
in
{
  inherit runCommand writeText writeShellScriptBin closureInfo nix-snapshotter;
}
