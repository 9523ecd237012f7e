# Evaluates the NixOS tests (modules/nixos/tests/*.nix) as far as possible
# without nixpkgs: each node's configuration, with the test's `defaults`,
# against the option stubs (stubs.nix, plus the few NixOS options the tests
# set for themselves), with fake-nixpkgs as pkgs; and the test script. This
# catches wrong option names, types and interpolations; it does not run
# anything (that needs nixpkgs and VMs: `nix build .#checks.<system>.<test>`).
#
#   NIXPKGS_LIB=... nix-instantiate --eval --strict --json --read-write-mode \
#     test/nix-eval/eval-tests.nix --arg nixpkgsLib "$NIXPKGS_LIB"
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./stubs.nix { inherit lib; };
  pkgs = import ./fake-nixpkgs { overlays = [ (import ../../pkgs/overlay.nix) ]; };
  inherit (lib) mkOption types;

  # Options the tests set that belong to other NixOS modules.
  testOptions = {
    options = {
      virtualisation.memorySize = mkOption { type = types.int; default = 1024; };
      virtualisation.diskSize = mkOption { type = types.int; default = 1024; };
      environment.variables = mkOption { type = types.attrsOf types.str; default = { }; };
      services.dockerRegistry = mkOption { type = types.attrsOf types.anything; default = { }; };
      services.kubernetes = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
    config.services.kubernetes.pki.etcClusterAdminKubeconfig = "kubernetes/cluster-admin.kubeconfig";
  };

  evalNode = test: node:
    (lib.evalModules {
      modules = [ stubs.nixos testOptions { _module.args.pkgs = lib.mkForce pkgs; } test.defaults node ];
    }).config;

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

  checkTest = name: file:
    let
      test = import file { inherit pkgs lib; };
      nodes = lib.mapAttrs (_: evalNode test) test.nodes;
      script = if builtins.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
    in
    ok "${name}: has a name" (test ? name)
    ++ ok "${name}: imports the modules" (test.defaults.imports == [ ../../modules/nixos/default.nix ])
    ++ lib.concatLists (lib.mapAttrsToList
      (node: cfg:
        evaluates "${name}.${node}: systemd" cfg.systemd
        ++ evaluates "${name}.${node}: environment" cfg.environment
        ++ evaluates "${name}.${node}: virtualisation" cfg.virtualisation
        ++ evaluates "${name}.${node}: services" cfg.services
        ++ lib.concatMap (a: ok "${name}.${node}: assertion \"${a.message}\"" a.assertion) cfg.assertions)
      nodes)
    ++ evaluates "${name}: testScript" script
    ++ ok "${name}: testScript starts the machines" (lib.hasInfix "start_all()" script);

  checks = lib.concatLists (lib.mapAttrsToList checkTest testFiles);
in
{
  failures = map (c: c.message) (lib.filter (c: !c.pass) checks);
  checks = lib.length checks;
}
