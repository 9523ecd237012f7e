# Kubernetes resources for the examples and tests: a redis Pod whose image
# is resolved from the Nix store by nix-snapshotter's image service
# (`image: nix:0/nix/store/...-nix-image-redis.tar`), and a NodePort Service
# exposing it on every node's port 30000.
{ nix-snapshotter, redis }:
let
  image = nix-snapshotter.buildImage {
    name = "redis";
    resolvedByNix = true;
    config = {
      Entrypoint = [ "${redis}/bin/redis-server" ];
      ExposedPorts."6379/tcp" = { };
    };
  };
in
{
  inherit image;

  redisPod = {
    apiVersion = "v1";
    kind = "Pod";
    metadata = {
      name = "redis";
      labels.app = "redis";
    };
    spec.containers = [{
      name = "redis";
      inherit (image) image;
      args = [ "--protected-mode" "no" "--save" "" "--appendonly" "no" ];
      ports = [{ name = "redis"; containerPort = 6379; }];
    }];
  };

  redisService = {
    apiVersion = "v1";
    kind = "Service";
    metadata.name = "redis";
    spec = {
      type = "NodePort";
      selector.app = "redis";
      ports = [{
        name = "redis";
        port = 6379;
        targetPort = 6379;
        nodePort = 30000;
      }];
    };
  };
}
