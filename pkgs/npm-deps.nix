# The npm dependencies of package-lock.json, for buildNpmPackage with
# importNpmLock.npmConfigHook, without a hash to keep in sync.
#
# nixpkgs' importNpmLock fetches each package from its lockfile `resolved`
# URL; a lockfile written with omit-lockfile-registry-resolved has none
# (only name, version and integrity). Here each tarball is fetched by npm
# itself in a fixed-output derivation whose hash is the lockfile's
# `integrity`: `npm pack NAME@VERSION` from npm's (or `npmRegistry`'s)
# registry for entries without `resolved` or resolved at the public
# registry, `npm pack URL` for other http(s) tarball URLs. The result has
# the layout importNpmLock produces: package.json and package-lock.json
# with every dependency resolved to a `file:` tarball in the store.
{ lib
, stdenvNoCC
, runCommand
, nodejs
  # A registry URL for `npm pack --registry` (default: npm's own).
, npmRegistry ? null
}:
{ npmRoot
, package ? lib.importJSON (npmRoot + "/package.json")
, packageLock ? lib.importJSON (npmRoot + "/package-lock.json")
}:
let
  # "node_modules/a/node_modules/@s/b" -> "@s/b"
  packageName = key:
    let parts = lib.splitString "node_modules/" key;
    in lib.removeSuffix "/" (lib.last parts);

  storeName = s: lib.replaceStrings [ "@" "/" ] [ "" "-" ] s;

  publicRegistry = "https://registry.npmjs.org/";

  # What `npm pack` fetches for a lockfile entry.
  packSpec = key: name: module:
    let resolved = module.resolved or null; in
    if resolved == null || lib.hasPrefix publicRegistry resolved then "${name}@${module.version}"
    else if lib.hasPrefix "https://" resolved || lib.hasPrefix "http://" resolved then resolved
    else throw "pkgs/npm-deps.nix: ${key} is resolved to ${resolved}; only registry packages and http(s) tarballs can be fetched";

  fetchTarball = key: name: module:
    stdenvNoCC.mkDerivation {
      name = "${storeName name}-${module.version}.tgz";
      nativeBuildInputs = [ nodejs ];
      outputHash = module.integrity;
      outputHashMode = "flat";
      impureEnvVars = lib.fetchers.proxyImpureEnvVars;
      spec = packSpec key name module;
      registryFlag = lib.optionalString (npmRegistry != null) "--registry=${npmRegistry}";
      buildCommand = ''
        export HOME="$TMPDIR"
        cd "$TMPDIR"
        npm pack "$spec" --ignore-scripts --no-fund --no-audit --loglevel=warn $registryFlag >/dev/null
        set -- ./*.tgz
        if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
          echo "npm pack $spec did not produce one tarball" >&2
          exit 1
        fi
        mv "$1" "$out"
      '';
    };

  # Entries that npm fetches: everything but the root, links and bundled
  # dependencies (those come inside their parent's tarball).
  fetched = key: module:
    key != "" && !(module.link or false) && !(module.inBundle or false) && module ? version;

  tarballs = lib.mapAttrs
    (key: module:
      if !(module ? integrity) then
        throw "pkgs/npm-deps.nix: ${key} has no integrity in package-lock.json"
      else fetchTarball key (packageName key) module)
    (lib.filterAttrs fetched packageLock.packages);

  packages = lib.mapAttrs
    (key: module:
      if tarballs ? ${key} then
        builtins.removeAttrs module [ "funding" ] // { resolved = "file:${tarballs.${key}}"; }
      else module)
    packageLock.packages;

  packageLock' = packageLock // { inherit packages; };

  # The top-level dependencies point at the same tarballs.
  resolvedOf = name: packages."node_modules/${name}".resolved;
  package' = package
    // lib.optionalAttrs (package ? dependencies) { dependencies = lib.mapAttrs (n: _: resolvedOf n) package.dependencies; }
    // lib.optionalAttrs (package ? devDependencies) { devDependencies = lib.mapAttrs (n: _: resolvedOf n) package.devDependencies; }
    // lib.optionalAttrs (package ? optionalDependencies) { optionalDependencies = lib.mapAttrs (n: _: resolvedOf n) package.optionalDependencies; };
in
runCommand "${package.name or "npm"}-${package.version or "0"}-npm-deps"
{
  passAsFile = [ "packageJson" "packageLockJson" ];
  packageJson = builtins.toJSON package';
  packageLockJson = builtins.toJSON packageLock';
  passthru = { inherit tarballs; };
} ''
  mkdir -p "$out"
  cp "$packageJsonPath" "$out/package.json"
  cp "$packageLockJsonPath" "$out/package-lock.json"
''
