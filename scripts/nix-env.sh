# Sourced by the project's scripts: their Nix calls (and the daemons they
# start) read scripts/nix-conf/nix.conf, which includes the machine's
# /etc/nix/nix.conf and adds what the tests need, without changing it.
NIX_CONF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/nix-conf"
export NIX_CONF_DIR
