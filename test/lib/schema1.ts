/**
 * A root written by the first release (metadata schema 1), for the upgrade
 * test: test/fixtures/schema1/root.tar was produced by that release's daemon
 * with test/fixtures/schema1/generate.ts, and expected.json records what it
 * answered before it was stopped. Its nix layers name store paths built
 * from the fixed expression below: the same derivations give the same
 * paths on every x86_64-linux machine, so the test builds them again.
 */
import { closureOf, nixBuild, prelude } from "./nix.js";

export interface Schema1Expected {
  snapshots: {
    name: string;
    parent: string;
    kind: "active" | "view" | "committed";
    labels: Record<string, string>;
    /** Milliseconds, as the first release kept them. */
    createdMs: number;
    updatedMs: number;
  }[];
  /** Committed nix layers: name -> store paths the first release recorded. */
  nixLayers: Record<string, string[]>;
  /** An active nix layer whose Prepare a kill -9 interrupted. */
  interrupted: string;
  /** A file written into the base layer. */
  baseFile: { path: string; content: string };
}

/** Two closures (three paths each) and a closure file listing the second. */
export async function schema1Closures(): Promise<{ a: string[]; b: string[]; bInfo: string }> {
  const [appA, appB, info] = await nixBuild(`${prelude("schema1-fixture")}
    let mk3 = tag: let data = mk "s1-\${tag}-data" "echo \${tag} > $out";
                       lib = mk "s1-\${tag}-lib" "mkdir -p $out; echo \${data} > $out/ref";
                   in mk "s1-\${tag}-app" "mkdir -p $out/bin; echo \${lib} > $out/bin/app";
        a = mk3 "a";
        b = mk3 "b";
        info = builtins.derivation {
          name = "s1-closure-info"; system = builtins.currentSystem; builder = "/bin/sh";
          exportReferencesGraph = [ "graph" b ];
          PATH = "/usr/bin:/bin";
          args = [ "-c" "while read p; do case $p in /nix/store/*) echo $p;; esac; done < graph | sort -u > $out" ];
        };
    in [ a b info ]`);
  return { a: await closureOf(appA!), b: await closureOf(appB!), bInfo: info! };
}
