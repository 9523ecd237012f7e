# nixpkgs overlay adding `nix-snapshotter` (with passthru buildImage,
# copyToRegistry and copyToContainerd).
final: prev: {
  nix-snapshotter = final.callPackage ./nix-snapshotter.nix { };
}
