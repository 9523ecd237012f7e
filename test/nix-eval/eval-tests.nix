# Evaluates the NixOS tests (modules/nixos/tests/*.nix) as far as this
# machine can: each node's configuration, with the test's `defaults`,
# against the real option declarations of each era (harness.nix) with the
# flake's overlay, plus the few options of NixOS's VM and test modules the
# tests set (stood in for below); and the test script. This catches wrong
# option names, types and interpolations; it does not run anything (that
# needs nixpkgs and VMs: `nix build .#checks.<system>.<test>`).
#
#   nix-instantiate --eval --strict --json --read-write-mode \
#     test/nix-eval/eval-tests.nix --arg sources "$NIX_SOURCES" -A failures
{ sources, eras ? [ "24.11" "26.05" ] }:
let
  lib = (import ./harness.nix { inherit sources; era = builtins.head eras; }).lib;
  inherit (lib) mkOption types;

  # Options of NixOS modules not in the sources that the tests set
  # (qemu-vm.nix, shells-environment.nix's variables are in the sources;
  # docker-registry.nix and the kubernetes modules are not).
  testOptions = {
    options = {
      virtualisation.memorySize = mkOption { type = types.ints.positive; default = 1024; };
      virtualisation.diskSize = mkOption { type = types.ints.positive; default = 1024; };
      services.dockerRegistry = mkOption { type = types.attrsOf types.anything; default = { }; };
      services.kubernetes = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
    config.services.kubernetes.pki.etcClusterAdminKubeconfig = "kubernetes/cluster-admin.kubeconfig";
  };

  testFiles = {
    snapshotter = ../../modules/nixos/tests/snapshotter.nix;
    push-n-pull = ../../modules/nixos/tests/push-n-pull.nix;
    kubernetes = ../../modules/nixos/tests/kubernetes.nix;
    k3s = ../../modules/nixos/tests/k3s.nix;
    k3s-rootless = ../../modules/nixos/tests/k3s-rootless.nix;
  };

  ok = name: cond: [{ pass = cond; message = "${name}: does not hold"; }];
  evaluates = name: v:
    let r = builtins.tryEval (builtins.deepSeq (builtins.toJSON v) true);
    in ok "${name} evaluates" r.success;

  perEra = era:
    let
      h = import ./harness.nix { inherit sources era; };
      pkgs = h.standins.pkgsWithOverlays [ (import ../../pkgs/overlay.nix) ];
      evalNode = test: node: (h.nixos { overlay = true; modules = [ testOptions test.defaults node ]; }).config;
      checkTest = name: file:
        let
          test = import file { inherit pkgs lib; };
          nodes = lib.mapAttrs (_: evalNode test) test.nodes;
          script = if builtins.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
          name' = "${era} ${name}";
        in
        ok "${name'}: has a name" (test ? name)
        ++ ok "${name'}: imports the modules" (test.defaults.imports == [ ../../modules/nixos/default.nix ])
        ++ lib.concatLists (lib.mapAttrsToList
          (node: cfg:
            evaluates "${name'}.${node}: systemd units" (lib.mapAttrs (_: u: u.text) cfg.systemd.units)
            ++ evaluates "${name'}.${node}: user units" (lib.mapAttrs (_: u: u.text) cfg.systemd.user.units)
            ++ evaluates "${name'}.${node}: environment" cfg.environment.extraInit
            ++ ok "${name'}.${node}: no warnings (${builtins.toJSON cfg.warnings})" (cfg.warnings == [ ])
            ++ lib.concatMap (a: ok "${name'}.${node}: assertion \"${a.message}\"" a.assertion) cfg.assertions)
          nodes)
        ++ evaluates "${name'}: testScript" script
        ++ ok "${name'}: testScript starts the machines" (lib.hasInfix "start_all()" script);
    in
    lib.concatLists (lib.mapAttrsToList checkTest testFiles);

  checks = lib.concatMap perEra eras;
in
{
  failures = map (c: c.message) (lib.filter (c: !c.pass) checks);
  checks = lib.length checks;
}
