# The one-path closure of bench/nix-start: the same "Hello, world!" program
# as test/fixtures/nix/hello.nix, but linked statically (host gcc and the
# host's libc.a, sandbox = false), so its closure is exactly itself: no
# libc or loader store paths.
#
#   nix-build bench/nix-start/hello-static.nix     # $out/bin/hello
let
  lib = import ../../test/fixtures/nix/lib.nix;
  src = builtins.toFile "hello.c" ''
    #include <stdio.h>
    int main(void) { puts("Hello, world!"); return 0; }
  '';
in
# A local copy of the source, so that its store path does not end up in the
# binary (which would make it a reference).
lib.runScript "hello-static" { inherit src; } ''
  set -eu
  cp "$src" hello.c
  mkdir -p "$out/bin"
  gcc -O2 -s -static -o "$out/bin/hello" hello.c
  chmod 0555 "$out/bin/hello"
''
