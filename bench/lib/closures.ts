/**
 * The bench closures: images whose store paths are made of this host's own
 * files (libraries, programs, data), built with real Nix, fresh paths each
 * run. Every image has the same SHARED store paths (plus busybox), OWN of
 * its own and an entry point printing "started": 62 store paths, about
 * 2 MiB of files each, so each closure is ≥ 100 MiB.
 */
import { execFile } from "node:child_process";
import { lstatSync, readdirSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { REPO } from "../../devenv/daemon.js";
import { closureOf, nonce, prelude } from "../../test/lib/nix.js";

const exec = promisify(execFile);

/** Store paths every image has (besides busybox), and each image's own. */
export const SHARED = 54;
export const OWN = 6;
export const PATH_BYTES = 2 * 1024 * 1024;
const CLOSURE_INFO_NIX = path.join(REPO, "test/fixtures/nix/closure-info.nix");
/** Where the store paths' contents come from: this host's own files. */
const HOST_DIRS = ["/usr/lib", "/usr/bin", "/usr/libexec", "/usr/share"];

/**
 * Regular files of this host, 16 KiB to 8 MiB (a shell script per store
 * path copies them, so no one path has thousands), in a stable order, until
 * `want` bytes: the stuff packages are made of.
 */
function hostFiles(want: number): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  let total = 0;
  const walk = (dir: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of names) {
      if (total >= want) return;
      const p = path.join(dir, name);
      // Names go into a shell script and a Nix string: keep them plain.
      if (!/^[A-Za-z0-9._+-]+$/.test(name)) continue;
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size >= 16 * 1024 && st.size <= 8 * 1024 * 1024 && !seen.has(`${st.dev}:${st.ino}`)) {
        seen.add(`${st.dev}:${st.ino}`);
        out.push(p);
        total += st.size;
      }
    }
  };
  for (const d of HOST_DIRS) walk(d);
  if (total < want) throw new Error(`this host has only ${total} bytes of suitable files below ${HOST_DIRS.join(", ")}; ${want} needed`);
  return out;
}

/** Consecutive groups of files of at least `bytes` each. */
function buckets(files: string[], n: number, bytes: number): string[][] {
  const out: string[][] = [];
  let cur: string[] = [];
  let size = 0;
  for (const f of files) {
    cur.push(f);
    size += statSync(f).size;
    if (size >= bytes) {
      out.push(cur);
      if (out.length === n) return out;
      cur = [];
      size = 0;
    }
  }
  throw new Error(`only ${out.length} groups of ${bytes} bytes from ${files.length} files; ${n} needed`);
}

export interface Closures {
  /** Per image: its entry point's store path, its closureInfo, its closure. */
  images: { app: string; info: string; closure: string[] }[];
  /** Store paths in every image's closure (busybox included). */
  shared: Set<string>;
  busybox: string;
  /** Store paths this build made (busybox's closure excepted), and their derivations: the caller deletes them. */
  built: string[];
  derivations: string[];
}

/**
 * Builds `images` images' store paths with real Nix (fresh paths each
 * call); workDir holds the Nix expression.
 */
export async function buildClosures(workDir: string, busybox: string, images: number): Promise<Closures> {
  const groups = buckets(hostFiles((SHARED + images * OWN) * PATH_BYTES * 2), SHARED + images * OWN, PATH_BYTES);
  const pkg = (name: string, files: string[]) =>
    `mk "${name}" "mkdir $out && ${files.map((f, i) => `cp -L ${f} $out/${i}-${path.basename(f)}`).join(" && ")}"`;
  const shared = groups.slice(0, SHARED).map((g, i) => pkg(`bench-pull-shared-${i}`, g));
  const apps: string[] = [];
  for (let k = 0; k < images; k++) {
    const own = groups.slice(SHARED + k * OWN, SHARED + (k + 1) * OWN).map((g, j) => pkg(`bench-pull-img${k}-own-${j}`, g));
    const deps = [...shared.map((_, i) => `s${i}`), ...own.map((_, j) => `o${k}_${j}`)];
    apps.push(`o${k} = [ ${own.map((o) => `(${o})`).join(" ")} ];
      ${own.map((_, j) => `o${k}_${j} = builtins.elemAt o${k} ${j};`).join(" ")}
      app${k} = mk "bench-pull-app-${k}" "mkdir -p $out/bin && printf '#!${"${bb}"}/bin/sh\\\\necho started\\\\n' > $out/bin/app && chmod +x $out/bin/app && echo ${deps.map((d) => `${"${"}${d}}`).join(" ")} > $out/deps";
      info${k} = import ${CLOSURE_INFO_NIX} { rootPaths = [ app${k} ]; };`);
  }
  const expr = `${prelude(nonce())}
    let bb = builtins.storePath "${busybox}";
      ${shared.map((s, i) => `s${i} = ${s};`).join("\n      ")}
      ${apps.join("\n      ")}
    in [ ${Array.from({ length: images }, (_, k) => `app${k} info${k}`).join(" ")} ]`;
  // Too long for one argument (128 KiB): nix-build reads it from a file.
  const file = path.join(workDir, "closures.nix");
  writeFileSync(file, expr);
  const out = (await exec("nix-build", [file, "--no-out-link"], { maxBuffer: 16 * 1024 * 1024, timeout: 1_800_000 })).stdout.split("\n").filter(Boolean);
  const imgs: Closures["images"] = [];
  for (let k = 0; k < images; k++) {
    const app = out[2 * k]!;
    const info = out[2 * k + 1]!;
    imgs.push({ app, info, closure: await closureOf(app) });
  }
  const fixture = new Set(await closureOf(busybox));
  const built = [...new Set([...imgs.flatMap((i) => [i.app, i.info, ...i.closure])])].filter((p) => !fixture.has(p));
  // Their derivations, and the derivations built on them (closureInfo's), go too.
  const derivers = (await exec("nix-store", ["--query", "--deriver", ...built], { maxBuffer: 16 * 1024 * 1024 })).stdout.split("\n").filter((d) => d.endsWith(".drv"));
  const referrers = await exec("nix-store", ["--query", "--referrers-closure", ...derivers], { maxBuffer: 16 * 1024 * 1024 });
  const derivations = referrers.stdout.split("\n").filter((d) => d.endsWith(".drv"));
  const shared0 = new Set(imgs[0]!.closure.filter((p) => imgs.every((i) => i.closure.includes(p))));
  return { images: imgs, shared: shared0, busybox, built, derivations };
}
