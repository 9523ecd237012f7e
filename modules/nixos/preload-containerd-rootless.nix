# services.preload-containerd.rootless as a NixOS user service.
{ config, lib, pkgs, ... }:
let
  nsLib = import ../lib.nix { inherit lib pkgs; };
  cfg = config.services.preload-containerd.rootless;
  package = config.services.nix-snapshotter.rootless.package or nsLib.defaultPackage;
in
{
  imports = [ ../common/preload-containerd-rootless.nix ];

  config = lib.mkIf (cfg.enable && cfg.targets != [ ]) {
    systemd.user.services.preload-containerd = nsLib.toNixosUnit (nsLib.preloadUnit {
      inherit package;
      inherit (cfg) targets;
      description = "Load image archives into the rootless containerd";
      after = [ "containerd.service" ] ++ lib.optional (config.services.nix-snapshotter.rootless.enable or false) "nix-snapshotter.service";
    } // { Install.WantedBy = [ "default.target" ]; });
  };
}
