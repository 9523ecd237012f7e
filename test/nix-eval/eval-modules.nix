# Evaluates the NixOS and Home Manager modules, configuration by
# configuration, against the real option declarations of nixos-24.11 and
# nixos-26.05 (harness.nix; the sources' path in `sources`), and checks
# what a user gets: the containerd configuration (rendered TOML read back
# with builtins.fromTOML, in the keys of that release's containerd), unit
# ordering, the program ExecStart runs, warnings and assertions; and that
# wrong configurations are refused.
#
#   nix-instantiate --eval --strict --json --read-write-mode \
#     test/nix-eval/eval-modules.nix --arg sources "$NIX_SOURCES" -A failures
#
# Result: { failures = [ "message", ... ]; checks = N; report = { ... }; }
# `report` holds, per era and configuration, the rendered units and
# configuration files, for the checks only a program can do
# (test/integration/nix-files.test.ts: every command resolves on its PATH,
# containerd and the daemon accept the files).
{ sources, eras ? [ "24.11" "26.05" ] }:
let
  harnesses = map (era: import ./harness.nix { inherit sources era; }) eras;
  inherit (builtins.head harnesses) lib;

  nixosModules = ../../modules/nixos;
  homeModules = ../../modules/home;

  defaultAddress = "/run/nix-snapshotter/nix-snapshotter.sock";
  defaultRoot = "/var/lib/containerd/io.containerd.snapshotter.v1.nix";
  containerdSock = "/run/containerd/containerd.sock";
  rootlessSock = "$XDG_RUNTIME_DIR/containerd/containerd.sock";

  # Each check is a one-element list [ { pass; message; } ].
  eq = name: actual: expected: [{
    pass = actual == expected;
    message = "${name}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";
  }];
  ok = name: cond: [{ pass = cond; message = "${name}: does not hold"; }];
  has = name: list: x: ok "${name} contains ${builtins.toJSON x} (${builtins.toJSON list})" (builtins.elem x list);
  # Nix refuses regular expressions that refer to store paths.
  plain = builtins.unsafeDiscardStringContext;
  infix = s: text: lib.hasInfix (plain s) (plain text);
  contains = name: text: s: ok "${name} contains ${builtins.toJSON s}" (infix s text);
  fails = name: v:
    let r = builtins.tryEval (builtins.deepSeq v v);
    in ok "${name} is refused" (!r.success);

  # A stand-in package's description (standins.nix): { standIn; bins; scripts; }.
  storeRoot = p: builtins.head (builtins.match "(/nix/store/[^/]+).*" (plain (toString p)));
  standIn = p: builtins.fromJSON (plain (builtins.readFile (storeRoot p)));
  # The `key=value` lines of one section of a rendered unit.
  unitLines = text: lib.filter (l: l != "") (lib.splitString "\n" (lib.replaceStrings [ "\\\n" ] [ "" ] text));
  unitValues = key: text:
    map (l: lib.removePrefix "${key}=" l) (lib.filter (lib.hasPrefix "${key}=") (unitLines text));
  unitValue = key: text:
    let v = unitValues key text; in if v == [ ] then null else lib.last v;
  words = key: text: lib.concatMap (lib.splitString " ") (unitValues key text);

  perEra = h:
    let
      inherit (h) era;
      pkgs = h.pkgs;
      ours = plain (pkgs.callPackage ../../pkgs/nix-snapshotter.nix { }).outPath;
      goPackage = plain pkgs.nix-snapshotter.outPath;
      ctrdVersion = if lib.versionAtLeast pkgs.containerd.version "2" then 3 else 2;
      cc = import ../../modules/containerd-config.nix { inherit lib; };

      nixos = overlay: modules: (h.nixos { inherit overlay; modules = [ nixosModules ] ++ modules; }).config;
      home = overlay: modules: (h.home { inherit overlay; modules = [ homeModules ] ++ modules; }).config;

      # The containerd config file a rendered unit's ExecStart passes
      # (`--config PATH` on 24.11, `--config=PATH` later), through
      # nixpkgs' build-time check (containerd-config-checked.toml: a
      # runCommand linking the file it checked).
      containerdConfigOf = unitText:
        let
          exec = unitValue "ExecStart" unitText;
          m = builtins.match ".*--config[ =]([^ ]+).*" exec;
          checked = builtins.head m;
          script = (standIn checked).scripts.build or "";
          linked = builtins.match ".*ln -s (/nix/store/[^ ]+) .*" (lib.replaceStrings [ "\n" ] [ " " ] script);
        in
        if m == null then throw "no --config in ${exec}"
        else if linked == null then checked
        else builtins.head linked;

      at = path: attrs: lib.attrByPath path null attrs;

      # The containerd configuration as read back from its TOML.
      containerdChecks = name: { file, settings, address ? defaultAddress, version ? ctrdVersion }:
        let
          text = plain (builtins.readFile file);
          toml = builtins.fromTOML text;
          images = cc.imagesPath version;
        in
        lib.concatLists [
          (eq "${name}: the rendered TOML reads back as the settings" toml
            (builtins.fromJSON (builtins.unsafeDiscardStringContext (builtins.toJSON settings))))
          (eq "${name}: config version for containerd ${pkgs.containerd.version}" toml.version version)
          (eq "${name}: proxy plugin" (at [ "proxy_plugins" "nix" "type" ] toml) "snapshot")
          (eq "${name}: proxy plugin address" (at [ "proxy_plugins" "nix" "address" ] toml) address)
          (eq "${name}: CRI snapshotter (${lib.concatStringsSep "." images})" (at (images ++ [ "snapshotter" ]) toml) "nix")
          (eq "${name}: CRI disable_snapshot_annotations" (at (images ++ [ "disable_snapshot_annotations" ]) toml) false)
          (eq "${name}: transfer unpack_config" (at [ "plugins" "io.containerd.transfer.v1.local" "unpack_config" ] toml) [
            { platform = "linux/amd64"; snapshotter = "nix"; }
            { platform = "linux/amd64"; snapshotter = "overlayfs"; }
          ])
          (eq "${name}: default runtime" (at (cc.runtimePath version ++ [ "containerd" "default_runtime_name" ]) toml) "runc")
          (eq "${name}: proxy plugin exports (Transfer service annotations)"
            (at [ "proxy_plugins" "nix" "exports" "enable_remote_snapshot_annotations" ] toml)
            "true")
        ]
        ++ lib.optionals (version >= 3) [
          (lib.head (ok "${name}: no version-2 CRI image keys in a version 3 file"
            (at [ "plugins" "io.containerd.grpc.v1.cri" "containerd" "snapshotter" ] toml == null)))
        ];

      ranByUs = name: exec:
        ok "${name}: ExecStart runs this project's package (${ours}), not nixpkgs' Go nix-snapshotter"
          (infix "${ours}/bin/nix-snapshotter " exec && !infix goPackage exec);

      cleanWarnings = name: cfg: eq "${name}: warnings" cfg.warnings [ ];
      assertionsHold = name: cfg:
        eq "${name}: failed assertions" (map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions)) [ ];

      # --- NixOS, rootful -------------------------------------------------

      rootfulChecks = name: cfg:
        let
          unit = cfg.systemd.units."nix-snapshotter.service".text;
          ctrdUnit = cfg.systemd.units."containerd.service".text;
        in
        lib.concatLists [
          (eq "${name}: containerd enabled" cfg.virtualisation.containerd.enable true)
          (eq "${name}: containerd integrated" cfg.virtualisation.containerd.nixSnapshotterIntegration true)
          (ranByUs name (unitValue "ExecStart" unit))
          (eq "${name}: Type" (unitValue "Type" unit) "notify")
          (eq "${name}: RuntimeDirectoryMode" (unitValue "RuntimeDirectoryMode" unit) "0700")
          (eq "${name}: no StateDirectory (the state is under containerd's)" (unitValue "StateDirectory" unit) null)
          (has "${name}: nix-snapshotter Before" (words "Before" unit) "containerd.service")
          (has "${name}: containerd After" (words "After" ctrdUnit) "nix-snapshotter.service")
          (has "${name}: containerd Wants" (words "Wants" ctrdUnit) "nix-snapshotter.service")
          (eq "${name}: WantedBy" (unitValue "WantedBy" unit) "multi-user.target")
          (eq "${name}: generated config.toml" (builtins.fromTOML (plain (builtins.readFile cfg.services.nix-snapshotter.configFile))) {
            address = defaultAddress;
            root = defaultRoot;
            image_service.containerd_address = containerdSock;
          })
          (eq "${name}: /etc/nix-snapshotter/config.toml" "${cfg.environment.etc."nix-snapshotter/config.toml".source}"
            "${cfg.services.nix-snapshotter.configFile}")
          (containerdChecks "${name}: containerd" { file = containerdConfigOf ctrdUnit; settings = cfg.virtualisation.containerd.settings; })
          (contains "${name}: extraInit" cfg.environment.extraInit ''export CONTAINERD_SNAPSHOTTER="nix"'')
          (contains "${name}: extraInit" cfg.environment.extraInit ''export CONTAINERD_ADDRESS="${containerdSock}"'')
          (assertionsHold name cfg)
        ];

      oneLine = nixos false [{ services.nix-snapshotter.enable = true; }];
      oneLineOverlay = nixos true [{ services.nix-snapshotter.enable = true; }];
      explicit = nixos false [{
        services.nix-snapshotter.enable = true;
        virtualisation.containerd = { enable = true; nixSnapshotterIntegration = true; };
      }];

      custom = nixos false [{
        services.nix-snapshotter = {
          enable = true;
          settings = {
            address = "/run/custom/ns.sock";
            external_builder = "/etc/nix-snapshotter/builder";
            image_service.enable = false;
          };
        };
      }];
      configFileOverride = nixos false [{ services.nix-snapshotter = { enable = true; configFile = "/etc/my-nix-snapshotter.toml"; }; }];
      ownPackage = nixos false [{ services.nix-snapshotter = { enable = true; package = pkgs.hello; }; }];
      noContainerd = nixos false [{ services.nix-snapshotter.enable = true; virtualisation.containerd.enable = false; }];
      notIntegrated = nixos false [{ services.nix-snapshotter.enable = true; virtualisation.containerd.nixSnapshotterIntegration = false; }];
      integratedOnly = nixos false [{ virtualisation.containerd = { enable = true; nixSnapshotterIntegration = true; }; }];
      version2 = nixos false [{ services.nix-snapshotter.enable = true; virtualisation.containerd.configVersion = 2; }];
      gVisor = nixos false [{ services.nix-snapshotter.enable = true; virtualisation.containerd.gVisorIntegration = true; }];

      rootful = lib.concatLists [
        (rootfulChecks "${era} one line" oneLine)
        (cleanWarnings "${era} one line" oneLine)
        (rootfulChecks "${era} one line + overlay" oneLineOverlay)
        (cleanWarnings "${era} one line + overlay" oneLineOverlay)
        (eq "${era} overlay: pkgs.nix-snapshotter is this project's" "${(h.standins.pkgsWithOverlays [ (import ../../pkgs/overlay.nix) ]).nix-snapshotter}" ours)
        (rootfulChecks "${era} containerd + snapshotter" explicit)
        (cleanWarnings "${era} containerd + snapshotter" explicit)
        (eq "${era} custom config.toml" (builtins.fromTOML (plain (builtins.readFile custom.services.nix-snapshotter.configFile))) {
          address = "/run/custom/ns.sock";
          root = defaultRoot;
          external_builder = "/etc/nix-snapshotter/builder";
          image_service = { enable = false; containerd_address = containerdSock; };
        })
        (containerdChecks "${era} custom address" {
          file = containerdConfigOf custom.systemd.units."containerd.service".text;
          settings = custom.virtualisation.containerd.settings;
          address = "/run/custom/ns.sock";
        })
        (eq "${era} configFile override" (unitValue "ExecStart" configFileOverride.systemd.units."nix-snapshotter.service".text)
          "${ours}/bin/nix-snapshotter --config /etc/my-nix-snapshotter.toml")
        (eq "${era} package override" (unitValue "ExecStart" ownPackage.systemd.units."nix-snapshotter.service".text)
          "${pkgs.hello}/bin/nix-snapshotter --config ${ownPackage.services.nix-snapshotter.configFile}")
        (eq "${era} containerd off: no containerd unit" (noContainerd.systemd.units ? "containerd.service") false)
        (ok "${era} containerd off warns" (lib.any (infix "virtualisation.containerd is\nnot") noContainerd.warnings))
        (ok "${era} integration off warns" (lib.any (infix "nixSnapshotterIntegration is off") notIntegrated.warnings))
        (eq "${era} integration off: no proxy plugin" (notIntegrated.virtualisation.containerd.settings.proxy_plugins or { }) { })
        (ok "${era} integration without the daemon warns" (lib.any (infix "services.nix-snapshotter is not enabled") integratedOnly.warnings))
        (containerdChecks "${era} config version 2 chosen" {
          file = containerdConfigOf version2.systemd.units."containerd.service".text;
          settings = version2.virtualisation.containerd.settings;
          version = 2;
        })
        (eq "${era} gVisor runtime" (at (cc.runtimePath ctrdVersion ++ [ "containerd" "runtimes" "runsc" "runtime_type" ]) gVisor.virtualisation.containerd.settings)
          "io.containerd.runsc.v1")
        (has "${era} gVisor on containerd's PATH" (map toString gVisor.systemd.services.containerd.path) "${pkgs.gvisor}")
        (cleanWarnings "${era} gVisor" gVisor)
      ]
      ++ lib.optionals (ctrdVersion >= 3) (lib.concatLists [
        (eq "${era} CNI bin_dir where version 3 reads it"
          (at [ "plugins" "io.containerd.cri.v1.runtime" "cni" "bin_dir" ] oneLine.virtualisation.containerd.settings) "${pkgs.cni-plugins}/bin")
      ]);

      # --- NixOS, k3s (both k3s module layouts) ---------------------------

      k3sNix = nixos false [{ services.k3s = { enable = true; snapshotter = "nix"; setKubeConfig = true; setEmbeddedContainerd = true; }; }];
      k3sString = nixos false [{ services.k3s = { enable = true; snapshotter = "nix"; extraFlags = "--disable traefik"; }; }];
      k3sConfigPath = nixos false [{ services.k3s = { enable = true; snapshotter = "nix"; configPath = "/etc/k3s/config.yaml"; extraFlags = [ "--disable traefik" ]; }; }];
      k3sEmbedded = nixos false [{ services.k3s.enable = true; }];
      dropIn = cfg: name: builtins.fromJSON cfg.environment.etc."rancher/k3s/config.yaml.d/${name}.yaml".text;
      k3sExec = cfg: unitValue "ExecStart" cfg.systemd.units."k3s.service".text;
      countOf = s: text: builtins.length (lib.splitString s text) - 1;

      k3s = lib.concatLists [
        (rootfulChecks "${era} k3s nix" k3sNix)
        (cleanWarnings "${era} k3s nix" k3sNix)
        (eq "${era} k3s nix: drop-in" (dropIn k3sNix "50-nix-snapshotter-containerd") {
          container-runtime-endpoint = "unix://${containerdSock}";
          "kubelet-arg+" = [ "image-service-endpoint=unix://${defaultAddress}" ];
        })
        (eq "${era} k3s nix: CNI conf_dir"
          (at (cc.runtimePath ctrdVersion ++ [ "cni" "conf_dir" ]) k3sNix.virtualisation.containerd.settings)
          "/var/lib/rancher/k3s/agent/etc/cni/net.d")
        (has "${era} k3s nix: k3s after" (words "After" k3sNix.systemd.units."k3s.service".text) "nix-snapshotter.service")
        (has "${era} k3s nix: k3s after" (words "After" k3sNix.systemd.units."k3s.service".text) "containerd.service")
        (eq "${era} k3s nix: one CONTAINERD_ADDRESS export" (countOf "export CONTAINERD_ADDRESS" k3sNix.environment.extraInit) 1)
        (contains "${era} k3s nix: extraInit" k3sNix.environment.extraInit ''export CONTAINERD_NAMESPACE="k8s.io"'')
        (contains "${era} k3s nix: extraInit" k3sNix.environment.extraInit ''export KUBECONFIG="/etc/rancher/k3s/k3s.yaml"'')
        (contains "${era} k3s extraFlags as a string" (k3sExec k3sString) "--disable traefik")
        (eq "${era} k3s extraFlags as a string: drop-in" (dropIn k3sString "50-nix-snapshotter-containerd").container-runtime-endpoint "unix://${containerdSock}")
        (contains "${era} k3s configPath: flags" (k3sExec k3sConfigPath) "--container-runtime-endpoint=unix://${containerdSock}")
        (contains "${era} k3s configPath: flags" (k3sExec k3sConfigPath) "--kubelet-arg=image-service-endpoint=unix://${defaultAddress}")
        (contains "${era} k3s configPath: user flags kept" (k3sExec k3sConfigPath) "--disable traefik")
        (eq "${era} k3s overlayfs: drop-in" (dropIn k3sEmbedded "50-nix-snapshotter-snapshotter") { snapshotter = "overlayfs"; })
        (eq "${era} k3s overlayfs: no containerd" k3sEmbedded.virtualisation.containerd.enable false)
        (cleanWarnings "${era} k3s overlayfs" k3sEmbedded)
      ];

      # --- NixOS, rootless --------------------------------------------------

      rlOneLine = nixos false [{ services.nix-snapshotter.rootless.enable = true; }];
      rlFull = nixos false [{
        services.nix-snapshotter.rootless.enable = true;
        virtualisation.containerd.rootless.gVisorIntegration = true;
        services.preload-containerd.rootless = { enable = true; targets = [{ archives = [ pkgs.hello ]; }]; };
      }];
      rlRoot = nixos false [{ services.nix-snapshotter.rootless = { enable = true; settings.root = "/home/alice/ns"; }; }];
      rlK3s = nixos false [{ services.k3s.rootless = { enable = true; snapshotter = "nix"; }; }];

      rootlessContainerd = name: rlCfg:
        let
          script = (standIn rlCfg.args.config).scripts.build;
          file = builtins.head (builtins.match ".*ln -s (/nix/store/[^ ]+) .*" (lib.replaceStrings [ "\n" ] [ " " ] script));
        in
        containerdChecks "${name}: rootless containerd" { inherit file; settings = rlCfg.settings; }
        ++ contains "${name}: the checked file is checked by the rootless package" script "containerd --config ${file} config dump";

      rootlessUnitChecks = name: cfg:
        let
          units = cfg.systemd.user.units;
          snap = units."nix-snapshotter.service".text;
          ctrd = units."containerd.service".text;
          rlCfg = cfg.virtualisation.containerd.rootless;
        in
        lib.concatLists [
          (eq "${name}: rootless containerd enabled" rlCfg.enable true)
          (eq "${name}: rootless containerd integrated" rlCfg.nixSnapshotterIntegration true)
          (ranByUs name (unitValue "ExecStart" snap))
          (ok "${name}: runs in containerd's namespaces" (lib.hasPrefix (plain "${rlCfg.nsenter}/bin/containerd-nsenter ") (plain (unitValue "ExecStart" snap))))
          (contains "${name}: default root" (unitValue "ExecStart" snap) "--root %S/nix-snapshotter")
          (eq "${name}: StateDirectory for that root" (unitValue "StateDirectory" snap) "nix-snapshotter")
          (eq "${name}: RuntimeDirectoryMode" (unitValue "RuntimeDirectoryMode" snap) "0700")
          (has "${name}: after containerd" (words "After" snap) "containerd.service")
          (contains "${name}: Environment" snap "NIX_REMOTE=daemon")
          (eq "${name}: containerd Type" (unitValue "Type" ctrd) "notify")
          (rootlessContainerd name rlCfg)
          (eq "${name}: generated config.toml" (builtins.fromTOML (plain (builtins.readFile cfg.services.nix-snapshotter.rootless.configFile))) {
            address = defaultAddress;
            image_service.containerd_address = containerdSock;
          })
          (assertionsHold name cfg)
        ];

      rootless = lib.concatLists [
        (rootlessUnitChecks "${era} rootless one line" rlOneLine)
        (cleanWarnings "${era} rootless one line" rlOneLine)
        (rootlessUnitChecks "${era} rootless + gVisor + preload" rlFull)
        (cleanWarnings "${era} rootless + gVisor + preload" rlFull)
        (contains "${era} rootless preload: the rootless socket"
          (builtins.readFile (unitValue "ExecStart" rlFull.systemd.user.units."preload-containerd.service".text))
          ''--address "${rootlessSock}" --namespace "default"'')
        (eq "${era} rootless gVisor runtime"
          (at (cc.runtimePath ctrdVersion ++ [ "containerd" "runtimes" "runsc" "runtime_type" ]) rlFull.virtualisation.containerd.rootless.settings)
          "io.containerd.runsc.v1")
        (ok "${era} rootless: settings.root replaces --root"
          (!infix "--root" (unitValue "ExecStart" rlRoot.systemd.user.units."nix-snapshotter.service".text)))
        (rootlessUnitChecks "${era} k3s rootless nix" rlK3s)
        (cleanWarnings "${era} k3s rootless nix" rlK3s)
        (contains "${era} k3s rootless nix: ExecStart" (unitValue "ExecStart" rlK3s.systemd.user.units."k3s.service".text)
          "--kubelet-arg=image-service-endpoint=unix://${defaultAddress}")
      ];

      # --- Home Manager -----------------------------------------------------

      hmUnit = cfg: name: (standIn cfg.xdg.configFile."systemd/user/${name}".source).scripts or { };
      # Home Manager renders each unit into a file of its own (xdg.configFile).
      hmUnitText = cfg: name:
        let s = hmUnit cfg name; in builtins.head (builtins.attrValues s);
      hmOneLine = home false [{ services.nix-snapshotter.rootless.enable = true; }];
      hmOneLineOverlay = home true [{ services.nix-snapshotter.rootless.enable = true; }];
      hmK3s = home false [{ services.k3s.rootless = { enable = true; snapshotter = "nix"; setKubeConfig = true; }; services.preload-containerd.rootless = { enable = true; targets = [{ archives = [ pkgs.hello ]; }]; }; }];

      hmChecks = name: cfg:
        let
          snap = hmUnitText cfg "nix-snapshotter.service";
          ctrd = hmUnitText cfg "containerd.service";
          rlCfg = cfg.virtualisation.containerd.rootless;
        in
        lib.concatLists [
          (eq "${name}: rootless containerd enabled" rlCfg.enable true)
          (ranByUs name (unitValue "ExecStart" snap))
          (contains "${name}: default root" (unitValue "ExecStart" snap) "--root %S/nix-snapshotter")
          (has "${name}: after containerd" (words "After" snap) "containerd.service")
          (eq "${name}: WantedBy" (unitValue "WantedBy" snap) "default.target")
          (eq "${name}: containerd Type" (unitValue "Type" ctrd) "notify")
          (rootlessContainerd name rlCfg)
          (contains "${name}: session variables" cfg.home.sessionVariablesExtra ''export CONTAINERD_SNAPSHOTTER="nix"'')
          (cleanWarnings name cfg)
          (assertionsHold name cfg)
        ];

      hm = lib.concatLists [
        (hmChecks "${era} home one line" hmOneLine)
        (hmChecks "${era} home one line + overlay" hmOneLineOverlay)
        (hmChecks "${era} home k3s rootless" hmK3s)
        (contains "${era} home k3s: KUBECONFIG" hmK3s.home.sessionVariablesExtra ''export KUBECONFIG="$HOME/.kube/k3s.yaml"'')
        (contains "${era} home preload: the rootless socket" (builtins.readFile (unitValue "ExecStart" (hmUnitText hmK3s "preload-containerd.service")))
          ''--address "${rootlessSock}"'')
      ];

      # --- Each module of nixosModules/homeModules on its own -----------------

      moduleOutputs = import ../../modules/outputs.nix;
      aloneConfig = {
        nix-snapshotter = { services.nix-snapshotter.enable = true; };
        nix-snapshotter-rootless = { services.nix-snapshotter.rootless.enable = true; };
        containerd = { virtualisation.containerd = { enable = true; nixSnapshotterIntegration = true; }; };
        containerd-rootless = { virtualisation.containerd.rootless = { enable = true; nixSnapshotterIntegration = true; }; };
        preload-containerd = { services.preload-containerd = { enable = true; targets = [{ archives = [ pkgs.hello ]; }]; }; };
        preload-containerd-rootless = { services.preload-containerd.rootless = { enable = true; targets = [{ archives = [ pkgs.hello ]; }]; }; };
        k3s = { services.k3s = { enable = true; snapshotter = "nix"; }; };
        k3s-rootless = { services.k3s.rootless = { enable = true; snapshotter = "nix"; }; };
      };
      aloneNixos = name: (h.nixos { modules = [ moduleOutputs.nixosModules.${name} aloneConfig.${name} ]; }).config;
      aloneHome = name: (h.home { modules = [ moduleOutputs.homeModules.${name} aloneConfig.${name} ]; }).config;
      evaluates = name: v: ok "${name} evaluates" (builtins.tryEval (builtins.deepSeq v true)).success;
      alone =
        lib.concatMap
          (name: evaluates "${era} nixosModules.${name} alone" (lib.mapAttrs (_: u: u.text) ((aloneNixos name).systemd.units // (aloneNixos name).systemd.user.units)))
          (lib.remove "default" (lib.attrNames moduleOutputs.nixosModules))
        ++ lib.concatMap
          (name: evaluates "${era} homeModules.${name} alone" (lib.attrNames (aloneHome name).xdg.configFile))
          (lib.remove "default" (lib.attrNames moduleOutputs.homeModules));

      # --- What must be refused ---------------------------------------------

      refused = lib.concatLists [
        (fails "${era} enable = \"yes\" (wrong type)" (nixos false [{ services.nix-snapshotter.enable = "yes"; }]).systemd.units)
        (fails "${era} an unknown option" (nixos false [{ services.nix-snapshotter.enable = true; services.nix-snapshotter.adress = "/x"; }]).systemd.units)
        (fails "${era} configVersion = 4" (nixos false [{ services.nix-snapshotter.enable = true; virtualisation.containerd.configVersion = 4; }]).systemd.units)
        (fails "${era} k3s snapshotter = \"zfs\"" (nixos false [{ services.k3s = { enable = true; snapshotter = "zfs"; }; }]).systemd.units)
        (fails "${era} settings with a function" (nixos false [{ services.nix-snapshotter = { enable = true; settings.address = x: x; }; }]).services.nix-snapshotter.configFile)
        (fails "${era} home: an unknown option" (home false [{ services.nix-snapshotter.rootless.enabled = true; }]).xdg.configFile)
        (fails "${era} home: path with a string" (home false [{ services.nix-snapshotter.rootless = { enable = true; path = [ "nix" ]; }; }]).xdg.configFile)
      ];

      report = {
        containerdVersion = pkgs.containerd.version;
        configurations =
          let
            nixosReport = cfg: {
              units = lib.mapAttrs (_: u: u.text) (lib.filterAttrs (n: _: lib.hasSuffix ".service" n) cfg.systemd.units);
              userUnits = lib.mapAttrs (_: u: u.text) (lib.filterAttrs (n: _: lib.hasSuffix ".service" n) cfg.systemd.user.units);
              containerdToml =
                if cfg.systemd.units ? "containerd.service" then builtins.readFile (containerdConfigOf cfg.systemd.units."containerd.service".text) else null;
              rootlessContainerdToml =
                if cfg.virtualisation.containerd.rootless.enable
                then builtins.readFile (builtins.head (builtins.match ".*ln -s (/nix/store/[^ ]+) .*" (lib.replaceStrings [ "\n" ] [ " " ] (standIn cfg.virtualisation.containerd.rootless.args.config).scripts.build)))
                else null;
              snapshotterToml =
                if cfg.services.nix-snapshotter.enable then builtins.readFile cfg.services.nix-snapshotter.configFile
                else if cfg.services.nix-snapshotter.rootless.enable then builtins.readFile cfg.services.nix-snapshotter.rootless.configFile
                else null;
              etc = lib.mapAttrs (_: e: e.text) (lib.filterAttrs (n: e: lib.hasPrefix "rancher/" n && e.text != null) cfg.environment.etc);
            };
            homeReport = cfg: {
              units = { };
              userUnits = lib.mapAttrs' (n: _: lib.nameValuePair (lib.removePrefix "systemd/user/" n) (hmUnitText cfg (lib.removePrefix "systemd/user/" n)))
                (lib.filterAttrs (n: _: lib.hasPrefix "systemd/user/" n && lib.hasSuffix ".service" n && !lib.hasInfix ".wants/" n) cfg.xdg.configFile);
              containerdToml = null;
              rootlessContainerdToml = builtins.readFile (builtins.head (builtins.match ".*ln -s (/nix/store/[^ ]+) .*"
                (lib.replaceStrings [ "\n" ] [ " " ] (standIn cfg.virtualisation.containerd.rootless.args.config).scripts.build)));
              snapshotterToml = builtins.readFile cfg.services.nix-snapshotter.rootless.configFile;
              etc = { };
            };
          in
          lib.mapAttrs (_: nixosReport) {
            inherit oneLine oneLineOverlay explicit custom gVisor version2 k3sNix k3sString k3sConfigPath k3sEmbedded rlOneLine rlFull rlK3s;
          }
          // lib.mapAttrs' (n: c: lib.nameValuePair "home-${n}" (homeReport c)) { inherit hmOneLine hmOneLineOverlay hmK3s; };
      };
    in
    {
      checks = rootful ++ k3s ++ rootless ++ hm ++ alone ++ refused;
      inherit report;
    };

  results = lib.listToAttrs (lib.zipListsWith (era: r: lib.nameValuePair era r) eras (map perEra harnesses));
  allChecks = lib.concatMap (r: r.checks) (lib.attrValues results);
in
{
  failures = map (c: c.message) (lib.filter (c: !c.pass) allChecks);
  checks = lib.length allChecks;
  report = lib.mapAttrs (_: r: r.report) results;
}
