# Example image: the redis image as base layers (fromImage), plus a nix
# layer with bash, coreutils and redis linked into /bin; runs a shell.
{ nix-snapshotter, buildEnv, bashInteractive, coreutils, redis, redisImage }:
nix-snapshotter.buildImage {
  name = "localhost:5000/nix-snapshotter/redis-shell";
  tag = "latest";
  fromImage = redisImage;
  copyToRoot = buildEnv {
    name = "redis-shell-root";
    paths = [ bashInteractive coreutils redis ];
    pathsToLink = [ "/bin" ];
  };
  config = {
    Entrypoint = [ "/bin/bash" ];
    Env = [ "PATH=/bin" ];
  };
}
