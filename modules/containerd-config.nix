# containerd's configuration for the line of containerd it is read by:
# version 2 files for containerd 1.7, version 3 files for containerd 2.x.
#
#   cc = import ./containerd-config.nix { inherit lib; };
#   settings = lib.mkMerge [ (cc.base { ... }) (cc.nixSnapshotter { ... }) ];
#
# What moved in version 3 (containerd 2.0; containerd's docs/cri/config.md
# and RELEASES.md):
#   version 2                                        version 3
#   plugins."io.containerd.grpc.v1.cri".containerd   plugins."io.containerd.cri.v1.images"
#     snapshotter, disable_snapshot_annotations        snapshotter, disable_snapshot_annotations
#   plugins."io.containerd.grpc.v1.cri"              plugins."io.containerd.cri.v1.runtime"
#     cni, enable_unprivileged_*, disable_apparmor,     (same keys)
#     restrict_oom_score_adj, disable_cgroup,
#     containerd.{default_runtime_name,runtimes}
# containerd 2.x still reads version 2 files (it migrates them in memory,
# with a warning); it ignores, with a warning, version-2 keys left in a
# version 3 file (measured with containerd 2.1.9: "Ignoring unknown key in
# TOML for plugin ... key=cni plugin=io.containerd.grpc.v1.cri").
{ lib }:
rec {
  # The config version a containerd package reads natively.
  versionFor = package: if lib.versionAtLeast (lib.getVersion package) "2" then 3 else 2;

  # Settings of CRI's runtime side (CNI, runtimes, unprivileged ports,
  # AppArmor, cgroups, OOM score) for a config version.
  runtime = version: attrs:
    if version >= 3 then { plugins."io.containerd.cri.v1.runtime" = attrs; }
    else { plugins."io.containerd.grpc.v1.cri" = attrs; };

  # Settings of CRI's image side (snapshotter, snapshot annotations).
  images = version: attrs:
    if version >= 3 then { plugins."io.containerd.cri.v1.images" = attrs; }
    else { plugins."io.containerd.grpc.v1.cri".containerd = attrs; };

  # What every containerd of these modules gets: the version and runc as
  # the default runtime.
  base = { version, defaultRuntime }: lib.mkMerge [
    { version = lib.mkOverride 90 version; }
    (runtime version {
      containerd = {
        default_runtime_name = lib.mkDefault defaultRuntime;
        runtimes.runc.runtime_type = lib.mkDefault "io.containerd.runc.v2";
      };
    })
  ];

  # The `nix` proxy snapshotter at `address`, used by CRI and by the
  # Transfer service (`ctr images import`/`pull`, nix2container load).
  nixSnapshotter = { version, address, platform }: lib.mkMerge [
    {
      proxy_plugins.nix = {
        type = "snapshot";
        inherit address;
        # containerd 2.x's Transfer service hands layer annotations (the
        # store paths) only to proxy snapshotters that export this
        # (containerd docs/transfer.md; stargz-snapshotter docs/transfer.md),
        # whatever the file's version. containerd 1.7 reads it silently.
        exports.enable_remote_snapshot_annotations = "true";
      };
      # Transfer service: unpack with nix first, overlayfs as well.
      plugins."io.containerd.transfer.v1.local".unpack_config = [
        { inherit platform; snapshotter = "nix"; }
        { inherit platform; snapshotter = "overlayfs"; }
      ];
    }
    # CRI unpacks with nix and passes layer annotations to it (with
    # containerd 2.1 and later this also makes CRI pull locally rather than
    # through the Transfer service: docs/cri/config.md).
    (images version {
      snapshotter = "nix";
      disable_snapshot_annotations = false;
    })
  ];

  # A `runsc` (gVisor) runtime for CRI (`runtime_handler: runsc`, a
  # RuntimeClass with handler runsc); ctr and nerdctl reach the same shim
  # with `--runtime io.containerd.runsc.v1` (the shim and runsc must be on
  # containerd's PATH).
  gVisor = { version }: runtime version {
    containerd.runtimes.runsc.runtime_type = "io.containerd.runsc.v1";
  };

  # CRI's pause (sandbox) image.
  sandboxImage = version: image:
    if version >= 3 then { plugins."io.containerd.cri.v1.images".pinned_images.sandbox = image; }
    else { plugins."io.containerd.grpc.v1.cri".sandbox_image = image; };

  # Where a version keeps a setting, for reading back what was rendered:
  # [ "plugins" "io.containerd.cri.v1.images" "snapshotter" ] etc.
  imagesPath = version: if version >= 3 then [ "plugins" "io.containerd.cri.v1.images" ] else [ "plugins" "io.containerd.grpc.v1.cri" "containerd" ];
  runtimePath = version: if version >= 3 then [ "plugins" "io.containerd.cri.v1.runtime" ] else [ "plugins" "io.containerd.grpc.v1.cri" ];
}
