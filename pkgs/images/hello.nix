# Example image: GNU hello. `pkgs.callPackage ./hello.nix { }` with the
# nix-snapshotter overlay (or pass nix-snapshotter explicitly).
{ nix-snapshotter, hello }:
nix-snapshotter.buildImage {
  name = "localhost:5000/nix-snapshotter/hello";
  tag = "latest";
  config.Entrypoint = [ "${hello}/bin/hello" ];
}
