# nix-snapshotter with containerd: a nix image whose entrypoint is a store
# path, a nix image of redis, and an ordinary (dockerTools) image, on
#   rootful  - system containerd + nix-snapshotter,
#   rootless - user containerd (rootlesskit) + nix-snapshotter in its namespaces,
#   external - rootful, realising store paths with an external builder.
#
#   nix build .#checks.x86_64-linux.snapshotter
#   nix run .#test-snapshotter       # interactive driver
{ pkgs, lib, ... }:
let
  inherit (pkgs.nix-snapshotter) buildImage;

  hello = buildImage {
    name = "localhost/nix/hello";
    config.Entrypoint = [
      (pkgs.writeShellScript "hello" ''
        echo "Hello, world!"
      '')
    ];
  };

  redisArgs = [ "--protected-mode" "no" "--save" "" "--appendonly" "no" ];

  redisNix = buildImage {
    name = "localhost/nix/redis";
    config = {
      Entrypoint = [ "${pkgs.redis}/bin/redis-server" ];
      Cmd = redisArgs;
    };
  };

  # An ordinary image: the snapshotter is a full overlayfs snapshotter too.
  redisDocker = pkgs.dockerTools.buildLayeredImage {
    name = "localhost/docker/redis";
    tag = "latest";
    contents = [ pkgs.redis ];
    config = {
      Entrypoint = [ "${pkgs.redis}/bin/redis-server" ];
      Cmd = redisArgs;
    };
  };

  archives = [ hello redisNix redisDocker ];

  builderLog = "/var/log/nix-snapshotter-external-builder.log";

  rootful = {
    virtualisation.containerd = {
      enable = true;
      nixSnapshotterIntegration = true;
    };
    services.nix-snapshotter.enable = true;
    services.preload-containerd = {
      enable = true;
      targets = [{ inherit archives; }];
    };
    environment.systemPackages = [ pkgs.nerdctl pkgs.redis ];
  };
in
{
  name = "nix-snapshotter-snapshotter";

  defaults.imports = [ ../default.nix ];

  nodes = {
    inherit rootful;

    rootless = {
      virtualisation.containerd.rootless = {
        enable = true;
        nixSnapshotterIntegration = true;
      };
      services.nix-snapshotter.rootless.enable = true;
      services.preload-containerd.rootless = {
        enable = true;
        targets = [{
          inherit archives;
          address = "$XDG_RUNTIME_DIR/containerd/containerd.sock";
        }];
      };
      users.users.alice = {
        uid = 1000;
        isNormalUser = true;
        linger = true;
      };
      environment.systemPackages = [ pkgs.nerdctl pkgs.redis ];
    };

    external = {
      imports = [ rootful ];
      services.nix-snapshotter.settings.external_builder = "${pkgs.writeShellScript "external-builder" ''
        echo "$2" >> ${builderLog}
        exec ${pkgs.nix}/bin/nix-store --realise "$2" --add-root "$1"
      ''}";
    };
  };

  testScript = ''
    def as_alice(cmd):
        return f"sudo -u alice env XDG_RUNTIME_DIR=/run/user/1000 {cmd}"

    def wait_for(machine, unit):
        if machine.name == "rootless":
            machine.wait_until_succeeds(f"systemctl --user --machine=alice@ is-active {unit}")
        else:
            machine.wait_for_unit(unit)

    def check(machine):
        run = as_alice if machine.name == "rootless" else (lambda c: c)
        nerdctl = "nerdctl --snapshotter nix"

        for unit in ["containerd.service", "nix-snapshotter.service", "preload-containerd.service"]:
            wait_for(machine, unit)

        with subtest(f"{machine.name}: a nix image runs its store-path entrypoint"):
            out = machine.succeed(run(f"{nerdctl} run --rm localhost/nix/hello:latest"))
            assert "Hello, world!" in out, out

        with subtest(f"{machine.name}: redis from a nix image"):
            machine.succeed(run(f"{nerdctl} run -d --name redis-nix -p 30001:6379 localhost/nix/redis:latest"))
            machine.wait_until_succeeds("redis-cli -p 30001 ping | grep PONG")

        with subtest(f"{machine.name}: redis from a dockerTools image"):
            machine.succeed(run(f"{nerdctl} run -d --name redis-docker -p 30002:6379 localhost/docker/redis:latest"))
            machine.wait_until_succeeds("redis-cli -p 30002 ping | grep PONG")

        with subtest(f"{machine.name}: containers survive a snapshotter restart"):
            if machine.name == "rootless":
                machine.succeed("systemctl --user --machine=alice@ restart nix-snapshotter.service")
            else:
                machine.succeed("systemctl restart nix-snapshotter.service")
            wait_for(machine, "nix-snapshotter.service")
            machine.succeed("redis-cli -p 30001 ping | grep PONG")
            out = machine.succeed(run(f"{nerdctl} run --rm localhost/nix/hello:latest"))
            assert "Hello, world!" in out, out

    start_all()

    with subtest("rootful: the generated config is installed"):
        rootful.wait_for_unit("nix-snapshotter.service")
        rootful.succeed("grep -q nix-snapshotter.sock /etc/nix-snapshotter/config.toml")
        rootful.succeed("test -S /run/nix-snapshotter/nix-snapshotter.sock")

    check(rootful)

    with subtest("rootful: store paths of running nix images are GC roots"):
        rootful.succeed("find /var/lib/containerd/io.containerd.snapshotter.v1.nix/gcroots -type l | grep -q .")
        rootful.succeed("nix-store --query --roots ${pkgs.redis} | grep -q io.containerd.snapshotter.v1.nix/gcroots")

    check(rootless)

    check(external)

    with subtest("external: the builder realised the store paths"):
        external.succeed("grep -q /nix/store/ ${builderLog}")
  '';
}
