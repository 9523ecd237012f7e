# Evaluates every NixOS and Home Manager module with enable = true against
# nixpkgs' lib and the stubs in stubs.nix, and checks what they generate.
#
#   nix-instantiate --eval --strict --json --read-write-mode test/nix-eval/eval-modules.nix \
#     --arg nixpkgsLib "$NIXPKGS_LIB"
#
# Result: { failures = [ "message", ... ]; checks = N (how many ran); generated = { ... }; }
# where `generated` holds the nix-snapshotter and containerd settings of the
# scenarios (for validation by the daemon's config loader and containerd).
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./stubs.nix { inherit lib; };
  inherit (stubs) pkgs;

  nixos = ../../modules/nixos;
  home = ../../modules/home;

  evalWith = base: modules:
    (lib.evalModules {
      modules = [ base { _module.args.pkgs = pkgs; } ] ++ modules;
    }).config;
  evalNixos = evalWith stubs.nixos;
  evalHome = evalWith stubs.home;

  # Each check is a one-element list [ { pass; message; } ].
  eq = name: actual: expected: [{
    pass = actual == expected;
    message = "${name}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";
  }];
  ok = name: cond: [{ pass = cond; message = "${name}: does not hold"; }];
  has = name: list: x: ok "${name} contains ${builtins.toJSON x} (${builtins.toJSON list})" (builtins.elem x list);
  contains = name: text: s: ok "${name} contains ${builtins.toJSON s}" (lib.hasInfix s text);
  # Succeeds when evaluating the value fully works.
  evaluates = name: v:
    let r = builtins.tryEval (builtins.deepSeq (builtins.toJSON v) true);
    in ok "${name} evaluates" r.success;
  assertionsHold = name: cfg:
    lib.concatMap (a: ok "${name}: assertion \"${a.message}\"" a.assertion) cfg.assertions;

  readJSON = f: builtins.fromJSON (builtins.readFile f);
  pkg = n: pkgs.${n}.outPath;
  defaultAddress = "/run/nix-snapshotter/nix-snapshotter.sock";
  defaultRoot = "/var/lib/containerd/io.containerd.snapshotter.v1.nix";
  containerdSock = "/run/containerd/containerd.sock";

  nixSettings = address: s: lib.concatLists [
    (eq "containerd proxy_plugins.nix" s.proxy_plugins.nix { type = "snapshot"; inherit address; })
    (eq "containerd CRI snapshotter" s.plugins."io.containerd.grpc.v1.cri".containerd.snapshotter "nix")
    (eq "containerd CRI disable_snapshot_annotations" s.plugins."io.containerd.grpc.v1.cri".containerd.disable_snapshot_annotations false)
    (eq "containerd transfer unpack_config" s.plugins."io.containerd.transfer.v1.local".unpack_config [
      { platform = "linux/amd64"; snapshotter = "nix"; }
      { platform = "linux/amd64"; snapshotter = "overlayfs"; }
    ])
    (eq "containerd config version" s.version 2)
    (eq "containerd CRI default runtime" s.plugins."io.containerd.grpc.v1.cri".containerd.default_runtime_name "runc")
  ];

  # The text of a script built with the stub writeShellScript (a real file).
  scriptText = path: builtins.readFile path;
  # The first store file named NAME mentioned in TEXT.
  storeFileIn = name: text:
    let m = builtins.match ".*(/nix/store/[a-z0-9]{32}-${name}).*" text;
    in if m == null then throw "no ${name} in ${text}" else builtins.head m;

  # --- NixOS, rootful --------------------------------------------------------

  rootful = evalNixos [
    nixos
    {
      services.nix-snapshotter.enable = true;
      virtualisation.containerd = { enable = true; nixSnapshotterIntegration = true; };
    }
  ];
  rootfulUnit = rootful.systemd.services.nix-snapshotter;
  rootfulChecks = lib.concatLists [
    (evaluates "rootful systemd.services" rootful.systemd.services)
    (eq "nix-snapshotter Type" rootfulUnit.serviceConfig.Type "notify")
    (eq "nix-snapshotter ExecStart" rootfulUnit.serviceConfig.ExecStart
      "${pkg "nix-snapshotter"}/bin/nix-snapshotter --config ${rootful.services.nix-snapshotter.configFile}")
    (eq "nix-snapshotter Restart" rootfulUnit.serviceConfig.Restart "always")
    (eq "nix-snapshotter StateDirectory" rootfulUnit.serviceConfig.StateDirectory "nix-snapshotter")
    (eq "nix-snapshotter RuntimeDirectory" rootfulUnit.serviceConfig.RuntimeDirectory "nix-snapshotter")
    (has "nix-snapshotter before" rootfulUnit.before "containerd.service")
    (has "nix-snapshotter wantedBy" rootfulUnit.wantedBy "multi-user.target")
    (eq "nix-snapshotter path" (map (p: p.name) rootfulUnit.path) [ "nix" ])
    (eq "generated config.toml" (readJSON rootful.services.nix-snapshotter.configFile) {
      address = defaultAddress;
      root = defaultRoot;
      image_service.containerd_address = containerdSock;
    })
    (eq "/etc/nix-snapshotter/config.toml" "${rootful.environment.etc."nix-snapshotter/config.toml".source}"
      "${rootful.services.nix-snapshotter.configFile}")
    (nixSettings defaultAddress rootful.virtualisation.containerd.settings)
    (has "containerd wants" rootful.systemd.services.containerd.wants "nix-snapshotter.service")
    (contains "extraInit" rootful.environment.extraInit ''export CONTAINERD_SNAPSHOTTER="nix"'')
    (contains "extraInit" rootful.environment.extraInit ''export CONTAINERD_ADDRESS="${containerdSock}"'')
    (assertionsHold "rootful" rootful)
  ];

  custom = evalNixos [
    nixos
    {
      services.nix-snapshotter = {
        enable = true;
        settings = {
          address = "/run/custom/ns.sock";
          external_builder = "/etc/nix-snapshotter/builder";
          image_service.enable = false;
        };
      };
      virtualisation.containerd = { enable = true; nixSnapshotterIntegration = true; };
    }
  ];
  customChecks = lib.concatLists [
    (eq "custom generated config.toml" (readJSON custom.services.nix-snapshotter.configFile) {
      address = "/run/custom/ns.sock";
      root = defaultRoot;
      external_builder = "/etc/nix-snapshotter/builder";
      image_service = { enable = false; containerd_address = containerdSock; };
    })
    (eq "custom proxy plugin address" custom.virtualisation.containerd.settings.proxy_plugins.nix.address "/run/custom/ns.sock")
  ];

  configFileOverride = evalNixos [
    nixos
    { services.nix-snapshotter = { enable = true; configFile = "/etc/my-nix-snapshotter.toml"; }; }
  ];
  configFileChecks = eq "configFile override ExecStart"
    configFileOverride.systemd.services.nix-snapshotter.serviceConfig.ExecStart
    "${pkg "nix-snapshotter"}/bin/nix-snapshotter --config /etc/my-nix-snapshotter.toml";

  # Each module file alone.
  alone = {
    nix-snapshotter = evalNixos [ (nixos + "/nix-snapshotter.nix") { services.nix-snapshotter.enable = true; } ];
    containerd = evalNixos [
      (nixos + "/containerd.nix")
      { virtualisation.containerd = { enable = true; nixSnapshotterIntegration = true; }; }
    ];
    preload-containerd = evalNixos [
      (nixos + "/preload-containerd.nix")
      { services.preload-containerd = { enable = true; targets = [{ archives = [ (stubs.pkgs.nerdctl // { name = "img"; outPath = stubs.storePath "img.tar"; }) ]; namespace = "k8s.io"; }]; }; }
    ];
    nix-snapshotter-rootless = evalNixos [ (nixos + "/nix-snapshotter-rootless.nix") { services.nix-snapshotter.rootless.enable = true; } ];
    containerd-rootless = evalNixos [
      (nixos + "/containerd-rootless.nix")
      { virtualisation.containerd.rootless = { enable = true; nixSnapshotterIntegration = true; }; }
    ];
    preload-containerd-rootless = evalNixos [
      (nixos + "/preload-containerd-rootless.nix")
      { services.preload-containerd.rootless = { enable = true; targets = [{ archives = [ pkgs.nerdctl ]; address = "$XDG_RUNTIME_DIR/containerd/containerd.sock"; }]; }; }
    ];
    k3s = evalNixos [ (nixos + "/k3s.nix") { services.k3s = { enable = true; snapshotter = "nix"; }; } ];
    k3s-rootless = evalNixos [ (nixos + "/k3s-rootless.nix") { services.k3s.rootless = { enable = true; snapshotter = "nix"; }; } ];
  };
  aloneChecks = lib.concatLists (lib.mapAttrsToList
    (name: cfg: lib.concatLists [
      (evaluates "${name} alone: systemd" cfg.systemd)
      (evaluates "${name} alone: environment" cfg.environment)
      (evaluates "${name} alone: virtualisation" cfg.virtualisation)
      (assertionsHold "${name} alone" cfg)
    ])
    alone);

  # containerd.nix without the nix-snapshotter module: the default socket.
  containerdAloneChecks = nixSettings defaultAddress alone.containerd.virtualisation.containerd.settings;

  preloadUnit = alone.preload-containerd.systemd.services.preload-containerd;
  preloadChecks = lib.concatLists [
    (eq "preload Type" preloadUnit.serviceConfig.Type "oneshot")
    (has "preload wantedBy" preloadUnit.wantedBy "multi-user.target")
    (has "preload After" preloadUnit.unitConfig.After "containerd.service")
    (contains "preload script" (scriptText preloadUnit.serviceConfig.ExecStart)
      ''${pkg "nix-snapshotter"}/bin/nix2container load ${stubs.storePath "img.tar"} --address "${containerdSock}" --namespace "k8s.io"'')
  ];

  # --- NixOS, rootless -------------------------------------------------------

  rootless = evalNixos [
    nixos
    {
      virtualisation.containerd.rootless = { enable = true; nixSnapshotterIntegration = true; };
      services.nix-snapshotter.rootless.enable = true;
      services.preload-containerd.rootless = {
        enable = true;
        targets = [{ archives = [ pkgs.nerdctl ]; address = "$XDG_RUNTIME_DIR/containerd/containerd.sock"; }];
      };
    }
  ];
  rlCfg = rootless.virtualisation.containerd.rootless;
  rlSnap = rootless.systemd.user.services.nix-snapshotter;
  rlCtrd = rootless.systemd.user.services.containerd;
  launcherText = scriptText rlCtrd.serviceConfig.ExecStart;
  childText = scriptText (storeFileIn "containerd-rootless-child" launcherText);
  rootlessChecks = lib.concatLists [
    (evaluates "rootless systemd.user.services" rootless.systemd.user.services)
    (eq "rootless nix-snapshotter Type" rlSnap.serviceConfig.Type "notify")
    (eq "rootless nix-snapshotter ExecStart" rlSnap.serviceConfig.ExecStart
      "${rlCfg.nsenter}/bin/containerd-nsenter ${pkg "nix-snapshotter"}/bin/nix-snapshotter --config ${rootless.services.nix-snapshotter.rootless.configFile} --root %S/nix-snapshotter")
    (has "rootless nix-snapshotter Environment" rlSnap.serviceConfig.Environment "NIX_REMOTE=daemon")
    (has "rootless nix-snapshotter After" rlSnap.unitConfig.After "containerd.service")
    (has "rootless nix-snapshotter wantedBy" rlSnap.wantedBy "default.target")
    (eq "rootless generated config.toml" (readJSON rootless.services.nix-snapshotter.rootless.configFile) {
      address = defaultAddress;
      image_service.containerd_address = containerdSock;
    })
    (contains "containerd-nsenter" rlCfg.nsenter.text "containerd-rootless/child_pid")
    (eq "rootless containerd Type" rlCtrd.serviceConfig.Type "notify")
    (eq "rootless containerd NotifyAccess" rlCtrd.serviceConfig.NotifyAccess "all")
    (contains "rootless launcher" launcherText "rootlesskit")
    (contains "rootless launcher" launcherText ''--state-dir="$XDG_RUNTIME_DIR/containerd-rootless"'')
    (contains "rootless launcher" launcherText "--config ")
    (contains "rootless child" childText ''bind "$XDG_RUNTIME_DIR/nix-snapshotter" "/run/nix-snapshotter"'')
    (contains "rootless child" childText ''bind "$XDG_RUNTIME_DIR/containerd" "/run/containerd"'')
    (contains "rootless child" childText ''exec containerd "$@"'')
    (nixSettings defaultAddress rlCfg.settings)
    (contains "rootless extraInit" rootless.environment.extraInit ''export CONTAINERD_ADDRESS="$XDG_RUNTIME_DIR/containerd/containerd.sock"'')
    (contains "rootless preload script"
      (scriptText rootless.systemd.user.services.preload-containerd.serviceConfig.ExecStart)
      ''--address "$XDG_RUNTIME_DIR/containerd/containerd.sock" --namespace "default"'')
    (assertionsHold "rootless" rootless)
  ];

  rootlessWithRoot = evalNixos [
    nixos
    {
      virtualisation.containerd.rootless = { enable = true; nixSnapshotterIntegration = true; };
      services.nix-snapshotter.rootless = { enable = true; settings.root = "/home/alice/ns"; };
    }
  ];
  rootlessRootChecks = ok "rootless: settings.root replaces --root"
    (!lib.hasInfix "--root" rootlessWithRoot.systemd.user.services.nix-snapshotter.serviceConfig.ExecStart);

  # --- NixOS, k3s ------------------------------------------------------------

  k3sNix = evalNixos [ nixos { services.k3s = { enable = true; snapshotter = "nix"; setKubeConfig = true; }; } ];
  k3sChecks = lib.concatLists [
    (eq "k3s nix: containerd enabled" k3sNix.virtualisation.containerd.enable true)
    (eq "k3s nix: nix-snapshotter enabled" k3sNix.services.nix-snapshotter.enable true)
    (eq "k3s nix: extraFlags" k3sNix.services.k3s.extraFlags [
      "--container-runtime-endpoint unix://${containerdSock}"
      "--kubelet-arg=image-service-endpoint=unix://${defaultAddress}"
    ])
    (eq "k3s nix: CNI conf_dir" k3sNix.virtualisation.containerd.settings.plugins."io.containerd.grpc.v1.cri".cni.conf_dir
      "/var/lib/rancher/k3s/agent/etc/cni/net.d")
    (has "k3s nix: k3s after" k3sNix.systemd.services.k3s.after "nix-snapshotter.service")
    (nixSettings defaultAddress k3sNix.virtualisation.containerd.settings)
    (contains "k3s nix: extraInit" k3sNix.environment.extraInit ''export CONTAINERD_NAMESPACE="k8s.io"'')
    (contains "k3s nix: extraInit" k3sNix.environment.extraInit ''export KUBECONFIG="/etc/rancher/k3s/k3s.yaml"'')
    (assertionsHold "k3s nix" k3sNix)
  ];

  k3sOverlay = evalNixos [ nixos { services.k3s.enable = true; } ];
  k3sOverlayChecks = lib.concatLists [
    (eq "k3s overlayfs: extraFlags" k3sOverlay.services.k3s.extraFlags [ "--snapshotter overlayfs" ])
    (eq "k3s overlayfs: containerd" k3sOverlay.virtualisation.containerd.enable false)
  ];

  k3sRootless = evalNixos [ nixos { services.k3s.rootless = { enable = true; snapshotter = "nix"; }; } ];
  k3sRlExec = k3sRootless.systemd.user.services.k3s.serviceConfig.ExecStart;
  k3sRlChild = scriptText (storeFileIn "containerd-rootless-child"
    (scriptText k3sRootless.systemd.user.services.containerd.serviceConfig.ExecStart));
  k3sRootlessChecks = lib.concatLists [
    (ok "k3s rootless nix: runs in containerd's namespaces" (lib.hasPrefix "${k3sRootless.virtualisation.containerd.rootless.nsenter}/bin/containerd-nsenter ${pkg "k3s"}/bin/k3s server" k3sRlExec))
    (contains "k3s rootless nix: ExecStart" k3sRlExec "--container-runtime-endpoint unix://${containerdSock}")
    (contains "k3s rootless nix: ExecStart" k3sRlExec "--kubelet-arg=image-service-endpoint=unix://${defaultAddress}")
    (ok "k3s rootless nix: no --rootless" (!lib.hasInfix "--rootless" k3sRlExec))
    (eq "k3s rootless nix: containerd rootless" k3sRootless.virtualisation.containerd.rootless.enable true)
    (eq "k3s rootless nix: nix-snapshotter rootless" k3sRootless.services.nix-snapshotter.rootless.enable true)
    (ok "k3s rootless nix: /etc/cni mounted before /etc/cni/net.d"
      (let
        a = lib.strings.splitString ''"/etc/cni"'' k3sRlChild;
      in builtins.length a == 2 && lib.hasInfix ''"/etc/cni/net.d"'' (builtins.elemAt a 1)))
    (assertionsHold "k3s rootless nix" k3sRootless)
  ];

  k3sRootlessOverlay = evalNixos [ nixos { services.k3s.rootless.enable = true; } ];
  k3sRootlessOverlayChecks = eq "k3s rootless overlayfs: ExecStart"
    k3sRootlessOverlay.systemd.user.services.k3s.serviceConfig.ExecStart
    "${pkg "k3s"}/bin/k3s server --rootless --snapshotter overlayfs";

  # --- Home Manager ----------------------------------------------------------

  hm = evalHome [
    home
    {
      virtualisation.containerd.rootless = { enable = true; nixSnapshotterIntegration = true; };
      services.nix-snapshotter.rootless.enable = true;
      services.preload-containerd.rootless = { enable = true; targets = [{ archives = [ pkgs.nerdctl ]; }]; };
    }
  ];
  hmSnap = hm.systemd.user.services.nix-snapshotter;
  hmChecks = lib.concatLists [
    (evaluates "home systemd.user.services" hm.systemd.user.services)
    (eq "home nix-snapshotter Type" hmSnap.Service.Type "notify")
    (eq "home nix-snapshotter ExecStart" hmSnap.Service.ExecStart
      "${hm.virtualisation.containerd.rootless.nsenter}/bin/containerd-nsenter ${pkg "nix-snapshotter"}/bin/nix-snapshotter --config ${hm.services.nix-snapshotter.rootless.configFile} --root %S/nix-snapshotter")
    (eq "home nix-snapshotter WantedBy" hmSnap.Install.WantedBy [ "default.target" ])
    (eq "home containerd Type" hm.systemd.user.services.containerd.Service.Type "notify")
    (eq "home preload Type" hm.systemd.user.services.preload-containerd.Service.Type "oneshot")
    (contains "home sessionVariablesExtra" hm.home.sessionVariablesExtra ''export CONTAINERD_SNAPSHOTTER="nix"'')
    (nixSettings defaultAddress hm.virtualisation.containerd.rootless.settings)
    (assertionsHold "home" hm)
  ];

  hmAlone = {
    nix-snapshotter-rootless = evalHome [ (home + "/nix-snapshotter-rootless.nix") { services.nix-snapshotter.rootless.enable = true; } ];
    containerd-rootless = evalHome [ (home + "/containerd-rootless.nix") { virtualisation.containerd.rootless.enable = true; } ];
    preload-containerd-rootless = evalHome [
      (home + "/preload-containerd-rootless.nix")
      { services.preload-containerd.rootless = { enable = true; targets = [{ archives = [ pkgs.nerdctl ]; }]; }; }
    ];
    k3s-rootless = evalHome [ (home + "/k3s-rootless.nix") { services.k3s.rootless = { enable = true; snapshotter = "nix"; setKubeConfig = true; }; } ];
  };
  hmAloneChecks = lib.concatLists (lib.mapAttrsToList
    (name: cfg: lib.concatLists [
      (evaluates "home ${name} alone: systemd" cfg.systemd)
      (evaluates "home ${name} alone: home" cfg.home)
      (assertionsHold "home ${name} alone" cfg)
    ])
    hmAlone)
  ++ contains "home k3s-rootless: KUBECONFIG" hmAlone.k3s-rootless.home.sessionVariablesExtra ''export KUBECONFIG="$HOME/.kube/k3s.yaml"''
  ++ ok "home k3s-rootless: containerd unit" (hmAlone.k3s-rootless.systemd.user.services ? containerd);

  all = {
    inherit rootfulChecks customChecks configFileChecks aloneChecks containerdAloneChecks preloadChecks
      rootlessChecks rootlessRootChecks k3sChecks k3sOverlayChecks k3sRootlessChecks k3sRootlessOverlayChecks
      hmChecks hmAloneChecks;
  };
in
{
  failures = map (c: c.message) (lib.filter (c: !c.pass) (lib.concatLists (lib.attrValues all)));
  checks = lib.length (lib.concatLists (lib.attrValues all));

  generated = {
    nixSnapshotter = {
      rootful = readJSON rootful.services.nix-snapshotter.configFile;
      custom = readJSON custom.services.nix-snapshotter.configFile;
      rootless = readJSON rootless.services.nix-snapshotter.rootless.configFile;
    };
    containerd = {
      rootful = builtins.unsafeDiscardStringContext (builtins.toJSON rootful.virtualisation.containerd.settings);
      rootless = builtins.unsafeDiscardStringContext (builtins.toJSON rlCfg.settings);
      k3s = builtins.unsafeDiscardStringContext (builtins.toJSON k3sNix.virtualisation.containerd.settings);
    };
  };
}
