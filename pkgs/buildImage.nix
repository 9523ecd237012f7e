# Nix image builders for nix-snapshotter.
#
# Takes a package set (nixpkgs, or anything providing the four builders
# below) and the nix-snapshotter package (anything with bin/nix2container):
#
#   images = import ./buildImage.nix (pkgs // { inherit nix-snapshotter; });
#   images.buildImage { name = "hello"; config.Entrypoint = [ "${pkgs.hello}/bin/hello" ]; }
#
# The result of buildImage is a derivation whose output is an OCI image
# archive (a .tar that `ctr images import`, `nix2container load/push`,
# `docker load` and skopeo accept). Its one nix layer carries no package
# bytes: only a mountpoint per store path of the closure and annotations
# naming those paths, which nix-snapshotter mounts from /nix/store.
#
# Only builtins are used (no nixpkgs lib), so this also works with the
# small package set in test/nix-eval/mini-pkgs.nix.
{ runCommand
, writeText
, closureInfo
, writeShellScriptBin
, nix-snapshotter
, ...
}:
let
  nix2container = "${nix-snapshotter}/bin/nix2container";

  toList = x: if x == null then [ ] else if builtins.isList x then x else [ x ];

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;

  # Store path names allow [A-Za-z0-9+._?=-]; an image name such as
  # "ghcr.io/org/app" becomes "app", and anything else odd becomes "-".
  storeName = s:
    builtins.replaceStrings [ ":" "@" " " "/" "~" "," "!" "#" "$" "%" "&" "*" ] [ "-" "-" "-" "-" "-" "-" "-" "-" "-" "-" "-" "-" ] (baseNameOf s);

  # Quote for sh inside single quotes.
  shQuote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # Pushes an image archive to a registry with `nix2container push`.
  copyToRegistry = image:
    { imageName ? image.imageName
    , imageTag ? image.imageTag
    , plainHTTP ? false
    }:
    writeShellScriptBin "copy-to-registry" ''
      exec ${nix2container} push ${image} --ref ${shQuote "${imageName}:${imageTag}"}${if plainHTTP then " --plain-http" else ""} "$@"
    '';

  # Imports an image archive into containerd with `nix2container load`.
  # address and namespace are expanded by the shell when the script runs,
  # so "$XDG_RUNTIME_DIR/containerd/containerd.sock" works.
  copyToContainerd = image:
    { address ? "/run/containerd/containerd.sock"
    , namespace ? "default"
    }:
    writeShellScriptBin "copy-to-containerd" ''
      exec ${nix2container} load ${image} --address "${address}" --namespace "${namespace}" "$@"
    '';

  buildImage =
    {
      # Image name. With resolvedByNix it only names the store path.
      name
      # Image tag (ignored with resolvedByNix).
    , tag ? "latest"
      # Reference the image as nix:0<archive store path>, which
      # nix-snapshotter's image service resolves from the Nix store without a
      # registry (e.g. a Kubernetes pod `image:`).
    , resolvedByNix ? false
      # An image archive whose layers go below the nix layer (any image:
      # dockerTools.buildImage, another buildImage, a `docker save` tar).
    , fromImage ? null
      # A derivation or list of derivations whose trees are linked into the
      # image root (/bin/sh -> /nix/store/...-bash/bin/sh, ...).
    , copyToRoot ? null
      # The OCI image config: Entrypoint, Cmd, Env, WorkingDir, User,
      # ExposedPorts, ... (keys match case-insensitively). Store paths named
      # here (as strings with context) become part of the image's closure.
    , config ? { }
    }:
    let
      baseName = storeName name;
      roots = toList copyToRoot;
      configFile = writeText "nix-image-config-${baseName}.json" (builtins.toJSON config);
      copyToRootFile = writeText "nix-image-copy-to-root-${baseName}.json"
        (builtins.toJSON (map (r: "${r}") roots));
      # The runtime closure: what the config refers to (entrypoint programs,
      # config files, ...) and the copyToRoot trees, with all references.
      closure = closureInfo { rootPaths = [ configFile ] ++ roots; };

      imageName = toLower name;
      imageTag = tag;
      ref = "${imageName}:${imageTag}";

      flags =
        [ "--config" "${configFile}" "--closure" "${closure}/store-paths" ]
        ++ (if roots != [ ] then [ "--copy-to-root" "${copyToRootFile}" ] else [ ])
        ++ (if fromImage != null then [ "--from-image" "${fromImage}" ] else [ ])
        # Without --ref, nix2container names the image nix:0$out:latest.
        ++ (if resolvedByNix then [ ] else [ "--ref" ref ]);

      image = runCommand "nix-image-${baseName}.tar"
        {
          passthru = {
            inherit name tag resolvedByNix imageName imageTag configFile;
            closureInfo = closure;
            # The reference to run the image by (a pod's `image:`, `ctr run`).
            image = if resolvedByNix then "nix:0${image.outPath}" else ref;
            copyToRegistry = copyToRegistry image;
            copyToContainerd = copyToContainerd image;
          };
        }
        ''
          ${nix2container} build ${builtins.concatStringsSep " " (map shQuote flags)} "$out"
        '';
    in
    image;

in
{
  inherit buildImage copyToRegistry copyToContainerd;
}
