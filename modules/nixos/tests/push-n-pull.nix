# Push and pull nix images through a registry (localhost:5000, plain HTTP):
# nerdctl push/pull, and buildImage's copyToRegistry (nix2container push).
# A pulled nix image runs like a loaded one: containerd hands the layer
# annotations to nix-snapshotter, which mounts the store paths.
{ pkgs, lib, ... }:
let
  inherit (pkgs.nix-snapshotter) buildImage;

  hello = buildImage {
    name = "localhost:5000/nix/hello";
    tag = "v1";
    config.Entrypoint = [ "${pkgs.hello}/bin/hello" ];
  };

  helloDocker = pkgs.dockerTools.buildLayeredImage {
    name = "localhost:5000/docker/hello";
    tag = "v1";
    contents = [ pkgs.hello ];
    config.Entrypoint = [ "${pkgs.hello}/bin/hello" ];
  };

  pushWithNix2container = hello.copyToRegistry {
    imageName = "localhost:5000/nix2container/hello";
    imageTag = "v2";
    plainHTTP = true;
  };
in
{
  name = "nix-snapshotter-push-n-pull";

  defaults.imports = [ ../default.nix ];

  nodes.machine = {
    virtualisation.containerd = {
      enable = true;
      nixSnapshotterIntegration = true;
    };
    services.nix-snapshotter.enable = true;
    services.preload-containerd = {
      enable = true;
      targets = [{ archives = [ hello helloDocker ]; }];
    };

    services.dockerRegistry = {
      enable = true;
      listenAddress = "127.0.0.1";
      port = 5000;
    };

    environment.systemPackages = [ pkgs.nerdctl pushWithNix2container ];
  };

  testScript = ''
    nerdctl = "nerdctl --snapshotter nix"

    start_all()
    for unit in ["containerd.service", "nix-snapshotter.service", "preload-containerd.service", "docker-registry.service"]:
        machine.wait_for_unit(unit)
    machine.wait_until_succeeds("curl -fs http://127.0.0.1:5000/v2/")

    for image in ["localhost:5000/nix/hello:v1", "localhost:5000/docker/hello:v1"]:
        with subtest(f"push and pull {image}"):
            machine.succeed(f"{nerdctl} push --insecure-registry {image}")
            machine.succeed(f"{nerdctl} rmi {image}")
            machine.succeed(f"{nerdctl} pull --insecure-registry {image}")
            out = machine.succeed(f"{nerdctl} run --rm {image}")
            assert "Hello, world!" in out, out

    with subtest("copyToRegistry pushes with nix2container"):
        machine.succeed("copy-to-registry")
        machine.succeed(f"{nerdctl} pull --insecure-registry localhost:5000/nix2container/hello:v2")
        out = machine.succeed(f"{nerdctl} run --rm localhost:5000/nix2container/hello:v2")
        assert "Hello, world!" in out, out
  '';
}
