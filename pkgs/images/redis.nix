# Example image: redis-server without persistence, on port 6379.
{ nix-snapshotter, redis }:
nix-snapshotter.buildImage {
  name = "localhost:5000/nix-snapshotter/redis";
  tag = "latest";
  config = {
    Entrypoint = [ "${redis}/bin/redis-server" ];
    Cmd = [ "--protected-mode" "no" "--save" "" "--appendonly" "no" ];
    ExposedPorts."6379/tcp" = { };
  };
}
