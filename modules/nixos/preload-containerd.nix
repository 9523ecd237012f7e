# services.preload-containerd: load image archives into containerd at boot.
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.preload-containerd;
  package = config.services.nix-snapshotter.package or nsLib.defaultPackage;
in
{
  options.services.preload-containerd = nsLib.preloadOptions nsLib.defaultContainerdAddress;

  config = lib.mkIf (cfg.enable && cfg.targets != [ ]) {
    systemd.services.preload-containerd = lib.mkMerge [
      (nsLib.toNixosUnit (nsLib.preloadUnit {
        inherit package;
        inherit (cfg) targets;
        description = "Load image archives into containerd";
        after = [ "containerd.service" ] ++ lib.optional (config.services.nix-snapshotter.enable or false) "nix-snapshotter.service";
      }))
      { wantedBy = [ "multi-user.target" ]; }
    ];
  };
}
