{
  description = "nix-snapshotter: a containerd snapshotter that runs containers straight from the Nix store";

  # The current stable release. The modules and the package also work with
  # nixos-24.11 (containerd 1.7): a flake using them may set
  # `inputs.nix-snapshotter.inputs.nixpkgs.follows = "nixpkgs"` (docs/nix.md).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems f;

      pkgsFor = system: import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      };

      # A NixOS system with nix-snapshotter's modules and overlay.
      nixosSystemFor = system: module: lib.nixosSystem {
        inherit system;
        modules = [
          self.nixosModules.default
          { nixpkgs.overlays = [ self.overlays.default ]; }
          module
        ];
      };

      app = program: { type = "app"; inherit program; };

      nixosTests = {
        snapshotter = ./modules/nixos/tests/snapshotter.nix;
        push-n-pull = ./modules/nixos/tests/push-n-pull.nix;
        kubernetes = ./modules/nixos/tests/kubernetes.nix;
        k3s = ./modules/nixos/tests/k3s.nix;
        k3s-rootless = ./modules/nixos/tests/k3s-rootless.nix;
      };

      perSystem = system:
        let
          pkgs = pkgsFor system;
          examples = import ./pkgs/examples.nix pkgs;
          k8s = pkgs.callPackage ./pkgs/k8s-resources.nix { };
          tests = lib.mapAttrs (_: pkgs.testers.runNixOSTest) nixosTests;
        in
        { inherit pkgs examples k8s tests; };

      each = lib.genAttrs systems perSystem;
    in
    {
      overlays.default = import ./pkgs/overlay.nix;

      packages = forAllSystems (system:
        let s = each.${system}; in
        {
          nix-snapshotter = s.pkgs.nix-snapshotter;
          default = s.pkgs.nix-snapshotter;
        }
        // lib.mapAttrs' (name: image: lib.nameValuePair "image-${name}" image) s.examples);

      apps = forAllSystems (system:
        let
          s = each.${system};
          vm = name: app "${(nixosSystemFor system ./modules/nixos/${name}.nix).config.system.build.vm}/bin/run-nixos-vm";
        in
        {
          vm = vm "vm";
          vm-rootless = vm "vm-rootless";
        }
        # The interactive test drivers (machine.shell_interact() etc.).
        // lib.mapAttrs' (name: test: lib.nameValuePair "test-${name}" (app "${test.driverInteractive}/bin/nixos-test-driver")) s.tests
        # Push an example image to a registry at localhost:5000 (plain HTTP).
        // lib.mapAttrs' (name: image: lib.nameValuePair "push-${name}"
          (app "${image.copyToRegistry { plainHTTP = true; }}/bin/copy-to-registry")) s.examples
        # Load an example image into containerd ($CONTAINERD_ADDRESS and
        # $CONTAINERD_NAMESPACE when set, e.g. for a rootless containerd).
        // lib.mapAttrs' (name: image: lib.nameValuePair "load-${name}"
          (app "${image.copyToContainerd {
            address = "\${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}";
            namespace = "\${CONTAINERD_NAMESPACE:-default}";
          }}/bin/copy-to-containerd")) s.examples);

      checks = forAllSystems (system:
        let s = each.${system}; in
        { nix-snapshotter = s.pkgs.nix-snapshotter; }
        // lib.mapAttrs' (name: image: lib.nameValuePair "image-${name}" image) s.examples
        // s.tests);

      inherit (import ./modules/outputs.nix) nixosModules homeModules;

      # Try it in a VM: `nix run .#vm` (or .#vm-rootless), log in as root/root
      # (rootless/rootless).
      nixosConfigurations = {
        vm = nixosSystemFor "x86_64-linux" ./modules/nixos/vm.nix;
        vm-rootless = nixosSystemFor "x86_64-linux" ./modules/nixos/vm-rootless.nix;
      };

      # `kubectl apply` these (as JSON): a redis Pod with a nix:0 image and
      # a NodePort Service on port 30000.
      k8sResources = forAllSystems (system: {
        inherit (each.${system}.k8s) redisPod redisService;
      });

      devShells = forAllSystems (system:
        let pkgs = each.${system}.pkgs; in
        {
          default = pkgs.mkShell {
            packages = with pkgs; [
              nodejs_20
              python3 # node-gyp
              nix
              containerd
              runc
              nerdctl
              kubectl
              cri-tools
              redis
            ];
          };
        });
    };
}
