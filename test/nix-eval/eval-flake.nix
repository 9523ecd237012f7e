# Evaluates flake.nix's outputs and default.nix without flakes and without
# nixpkgs: flake.nix is imported as a plain file and its `outputs` called
# with a stand-in nixpkgs input (fake-nixpkgs/: standins.nix with the lib
# of the 24.11 sources).
#
#   NIX_SOURCES=... nix-instantiate --eval --strict --json --read-write-mode \
#     test/nix-eval/eval-flake.nix --arg sources "$NIX_SOURCES"
#
# Result: { failures = [ "message", ... ]; checks = N; }
{ sources }:
let
  lib = import (sources + "/nixpkgs/lib");

  # lib.nixosSystem comes from nixpkgs' flake, not from lib/.
  nixosSystem = args: {
    inherit args;
    config.system.build.vm = {
      type = "derivation";
      name = "nixos-vm";
      outPath = "/nix/store/00000000000000000000000000000000-nixos-vm";
    };
  };

  nixpkgs = {
    outPath = ./fake-nixpkgs;
    lib = lib // { inherit nixosSystem; };
  };

  flake = import ../../flake.nix;
  self = flake.outputs { inherit self nixpkgs; } // { outPath = ../..; };

  nonFlake = import ../../default.nix { pkgs = import ./fake-nixpkgs { system = "x86_64-linux"; }; };

  eq = name: actual: expected: [{
    pass = actual == expected;
    message = "${name}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";
  }];
  ok = name: cond: [{ pass = cond; message = "${name}: does not hold"; }];
  names = lib.attrNames;

  systems = [ "aarch64-linux" "x86_64-linux" ];
  images = [ "hello" "redis" "redisWithShell" ];
  tests = [ "k3s" "k3s-rootless" "kubernetes" "push-n-pull" "snapshotter" ];
  nixosModuleNames = [
    "containerd" "containerd-rootless" "default" "k3s" "k3s-rootless" "nix-snapshotter"
    "nix-snapshotter-rootless" "preload-containerd" "preload-containerd-rootless"
  ];
  homeModuleNames = [ "containerd-rootless" "default" "k3s-rootless" "nix-snapshotter-rootless" "preload-containerd-rootless" ];

  perSystem = system: lib.concatLists [
    (eq "${system}: packages" (names self.packages.${system})
      (lib.sort (a: b: a < b) ([ "default" "nix-snapshotter" ] ++ map (i: "image-${i}") images)))
    (eq "${system}: default package" self.packages.${system}.default.name "nix-snapshotter-0.1.0")
    (eq "${system}: apps" (names self.apps.${system}) (lib.sort (a: b: a < b) (
      [ "vm" "vm-rootless" ] ++ map (t: "test-${t}") tests ++ map (i: "push-${i}") images ++ map (i: "load-${i}") images)))
    (ok "${system}: every app is a store program" (lib.all
      (a: a.type == "app" && lib.hasPrefix "/nix/store/" a.program)
      (lib.attrValues self.apps.${system})))
    (eq "${system}: checks" (names self.checks.${system})
      (lib.sort (a: b: a < b) ([ "nix-snapshotter" ] ++ map (i: "image-${i}") images ++ tests)))
    (eq "${system}: test files" (map (t: toString self.checks.${system}.${t}.test) tests)
      (map (t: toString ../../modules/nixos/tests + "/${t}.nix") tests))
    (ok "${system}: devShell" (self.devShells.${system}.default.packages != [ ]))
    (ok "${system}: pod image is nix:0 + archive"
      (let i = (builtins.head self.k8sResources.${system}.redisPod.spec.containers).image;
      in lib.hasPrefix "nix:0/nix/store/" i && lib.hasSuffix "-nix-image-redis.tar" i))
    (eq "${system}: service" self.k8sResources.${system}.redisService.spec.type "NodePort")
    (eq "${system}: nodePort" (builtins.head self.k8sResources.${system}.redisService.spec.ports).nodePort 30000)
    (eq "${system}: image-redisWithShell image" self.packages.${system}.image-redisWithShell.image
      "localhost:5000/nix-snapshotter/redis-shell:latest")
  ];

  checks = lib.concatLists [
    (lib.concatMap perSystem systems)
    (eq "nixosModules" (names self.nixosModules) nixosModuleNames)
    (eq "homeModules" (names self.homeModules) homeModuleNames)
    (ok "nixosModules exist" (lib.all builtins.pathExists (lib.attrValues self.nixosModules)))
    (ok "homeModules exist" (lib.all builtins.pathExists (lib.attrValues self.homeModules)))
    (ok "overlay" (builtins.isFunction self.overlays.default))
    (eq "nixosConfigurations" (names self.nixosConfigurations) [ "vm" "vm-rootless" ])
    (eq "vm system" self.nixosConfigurations.vm.args.system "x86_64-linux")
    (ok "vm module list" (builtins.elem ../../modules/nixos/vm.nix self.nixosConfigurations.vm.args.modules))
    (eq "default.nix attributes" (names nonFlake)
      [ "homeModules" "images" "k8sResources" "nix-snapshotter" "nixosModules" "overlay" "tests" ])
    (eq "default.nix modules" (names nonFlake.nixosModules) nixosModuleNames)
    (eq "default.nix images" (names nonFlake.images) images)
    (eq "default.nix tests" (names nonFlake.tests) tests)
    (eq "default.nix package" nonFlake.nix-snapshotter.name "nix-snapshotter-0.1.0")
    (eq "flake.lock pins nixpkgs"
      (builtins.fromJSON (builtins.readFile ../../flake.lock)).nodes.nixpkgs.original
      { type = "github"; owner = "NixOS"; repo = "nixpkgs"; ref = "nixos-26.05"; })
    (ok "flake.lock: a full revision and an SRI narHash"
      (let l = (builtins.fromJSON (builtins.readFile ../../flake.lock)).nodes.nixpkgs.locked;
      in builtins.match "[0-9a-f]{40}" l.rev != null && builtins.match "sha256-[A-Za-z0-9+/]{43}=" l.narHash != null))
    (eq "flake input" flake.inputs.nixpkgs.url "github:NixOS/nixpkgs/nixos-26.05")
  ];
in
{
  failures = map (c: c.message) (lib.filter (c: !c.pass) checks);
  checks = lib.length checks;
}
