/**
 * The markdown report, the JSON rows and the goal rows (P2) of a run.
 */
import os from "node:os";
import { fmt, markdownTable, percentile, type BenchReport, type GoalRow } from "../lib/stats.js";
import type { Case } from "./closures.js";
import type { MountCost } from "./mountcost.js";
import { KINDS, NIX_KINDS, PHASES, phaseMs, type Kind, type RunSample } from "./runs.js";
import type { ImportSample } from "./timeline.js";

/** P2: a nix container's start at 1,000 store paths against the ordinary image's (first byte, p50). */
export const GOAL_START_RATIO_1000 = 1.5;

export interface Params {
  /** Closure sizes (store paths). */
  sizes: number[];
  /** Measured `ctr run`s per image and kind (after one warm-up run). */
  runs: number;
  /** Imports per image for the sizes in importSizes (others: one). */
  importReps: number;
  importSizes: number[];
  /** Mounts calls per image, through containerd. */
  mountsCalls: number;
  /** Runs of mountcost.c per size. */
  mountCostReps: number;
}

/** The store view of one size's nix layer (store_view = "tree"). */
export interface ViewStats {
  /** Built in the background after the unpack's Commit, ms (the daemon's log). */
  buildMs: number;
  /** Directories and files/symlinks in the view: the inodes and entries it costs. */
  dirs: number;
  entries: number;
}

export interface SizeResult {
  size: number;
  what: string;
  runs: Record<Kind, RunSample[]>;
  /** The first run after the import (not in runs); for tree, after its view was built. */
  firstRun: Record<Kind, RunSample>;
  imports: Record<Kind, ImportSample[]>;
  mountsMs: Record<Kind, number[]>;
  mountsCount: Record<Kind, number>;
  view?: ViewStats;
}

export interface Results {
  params: Params;
  quick: boolean;
  cases: Case[];
  mountCost: MountCost[][];
  mountCostSkipped?: string;
  sizes: SizeResult[];
  load: { before: number[]; after: number[] };
  fs: string;
  setupMs: number;
}

const p50 = (v: number[]) => percentile(v, 50);
const p99 = (v: number[]) => percentile(v, 99);
const N = (n: number) => n.toLocaleString("en-US");

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den > 0 ? num / den : NaN;
}

function ratioText(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : "–";
}

const LABEL: Record<Kind, string> = { tree: "nix, tree", binds: "nix, binds", ordinary: "ordinary" };

export function report(res: Results): BenchReport {
  const PARAMS = res.params;
  const first = (s: SizeResult, k: Kind) => s.runs[k].map((x) => x.firstByteMs);
  const total = (s: SizeResult, k: Kind) => s.runs[k].map((x) => x.totalMs);
  const ratio = (s: SizeResult, k: Kind, f: typeof first) => p50(f(s, k)) / p50(f(s, "ordinary"));

  const startTable = markdownTable(
    ["Store paths", ...KINDS.map((k) => `${LABEL[k]}: first byte p50 ms`), "tree/ordinary", "binds/ordinary", ...KINDS.map((k) => `${LABEL[k]}: whole run p50 ms`), "tree/ordinary", "binds/ordinary", "goal (tree, first byte)"],
    res.sizes.map((s) => {
      const rt = ratio(s, "tree", first);
      return [
        N(s.size),
        ...KINDS.map((k) => fmt(p50(first(s, k)))),
        ratioText(rt),
        ratioText(ratio(s, "binds", first)),
        ...KINDS.map((k) => fmt(p50(total(s, k)))),
        ratioText(ratio(s, "tree", total)),
        ratioText(ratio(s, "binds", total)),
        s.size === 1000 ? `≤ ${GOAL_START_RATIO_1000}× ${rt <= GOAL_START_RATIO_1000 ? "met" : "missed"}` : "",
      ];
    }),
    ["right", "right", "right", "right", "right", "right", "right", "right", "right", "right", "right", "left"],
  );

  const xs = res.sizes.map((s) => s.size);
  const growth = (f: typeof first, k: Kind) => fmt(slope(xs, res.sizes.map((s) => p50(f(s, k)))) * 1000);
  const growthText = `Growth with the closure (least-squares slope of the p50s over ${xs.map(N).join(", ")} paths, ms per 1,000 store paths): \
first byte ${KINDS.map((k) => `${LABEL[k]} ${growth(first, k)}`).join(", ")}; whole run ${KINDS.map((k) => `${LABEL[k]} ${growth(total, k)}`).join(", ")}.`;

  const small = res.sizes[0]!;
  const large = res.sizes[res.sizes.length - 1]!;
  const ph = (s: SizeResult, k: Kind, p: (typeof PHASES)[number]) => p50(s.runs[k].map((x) => phaseMs(x, p)).filter(Number.isFinite));
  const gcRow = (s: SizeResult, k: Kind) => p50(s.runs[k].map((x) => x.gcMs));
  const phaseRows = PHASES.map((p) => [p.label, ...KINDS.map((k) => fmt(ph(small, k, p))), ...KINDS.map((k) => fmt(ph(large, k, p)))]);
  phaseRows.push(["(after the run: synchronous GC removing the container's snapshot)", ...KINDS.map((k) => fmt(gcRow(small, k))), ...KINDS.map((k) => fmt(gcRow(large, k)))]);
  const phaseTable = markdownTable(
    ["Phase of `ctr run --rm` (p50 ms)", ...KINDS.map((k) => `${LABEL[k]}, ${N(small.size)}`), ...KINDS.map((k) => `${LABEL[k]}, ${N(large.size)}`)],
    phaseRows,
    ["left", "right", "right", "right", "right", "right", "right"],
  );

  const tc = PHASES.find((p) => p.id === "task-create")!;
  const mountsTable = markdownTable(
    ["Store paths", ...KINDS.flatMap((k) => [`${LABEL[k]}: mounts`, "Mounts p50 ms", "p99 ms", "task created − container created, p50 ms"])],
    res.sizes.map((s) => [N(s.size), ...KINDS.flatMap((k) => [N(s.mountsCount[k]), fmt(p50(s.mountsMs[k])), fmt(p99(s.mountsMs[k])), fmt(ph(s, k, tc))])]),
    ["right", "right", "right", "right", "right", "right", "right", "right", "right", "right", "right", "right", "right"],
  );

  const viewTable = markdownTable(
    ["Store paths", "view built in (background, after Commit) ms", "directories (inodes)", "links and symlinks", "first start after the view, first byte ms", "binds: first start after import, ms"],
    res.sizes.map((s) => [
      N(s.size),
      s.view ? fmt(s.view.buildMs) : "–",
      s.view ? N(s.view.dirs) : "–",
      s.view ? N(s.view.entries) : "–",
      fmt(s.firstRun.tree.firstByteMs),
      fmt(s.firstRun.binds.firstByteMs),
    ]),
    ["right", "right", "right", "right", "right", "right"],
  );

  const METHODS = ["stat", "prepare", "mounts", "remove"];
  const cap = (m: string) => m.charAt(0).toUpperCase() + m.slice(1);
  const daemonMs = (s: SizeResult, k: Kind, m: string | undefined) =>
    p50(
      s.runs[k].map((r) => {
        const calls = r.daemon ?? {};
        if (m !== undefined) return calls[m]?.ms ?? 0;
        return Object.values(calls).reduce((a, c) => a + c.ms, 0);
      }),
    );
  const callCounts = (s: SizeResult, k: Kind) =>
    Object.entries(s.runs[k][0]?.daemon ?? {})
      .map(([m, c]) => `${cap(m)} ${c.n}`)
      .join(", ");
  const daemonTable = markdownTable(
    ["Store paths", "store view", "calls per run (first run)", ...METHODS.map((m) => `${cap(m)} ms`), "daemon total ms"],
    res.sizes.flatMap((s) => NIX_KINDS.map((k) => [N(s.size), k, callCounts(s, k), ...METHODS.map((m) => fmt(daemonMs(s, k, m))), fmt(daemonMs(s, k, undefined))])),
    ["right", "left", "left", "right", "right", "right", "right", "right"],
  );

  const imp = (s: SizeResult, k: Kind) => s.imports[k].map((x) => x.ms);
  const importTable = markdownTable(
    ["Store paths", "nix image", ...KINDS.map((k) => `${LABEL[k]}: import p50 ms`), "nix (tree): daemon Prepare / Commit p50 ms", "ordinary image", "imports each"],
    res.sizes.map((s) => {
      const c = res.cases.find((x) => x.size === s.size)!;
      const dp = p50(s.imports.tree.map((x) => x.daemonPrepareMs).filter((x): x is number => x !== undefined));
      const dc = p50(s.imports.tree.map((x) => x.daemonCommitMs).filter((x): x is number => x !== undefined));
      return [N(s.size), `${fmt(c.nix.bytes / 1024)} KiB`, ...KINDS.map((k) => fmt(p50(imp(s, k)))), `${fmt(dp)} / ${fmt(dc)}`, `${fmt(c.ordinary.bytes / 1024)} KiB`, String(s.imports.tree.length)];
    }),
    ["right", "right", "right", "right", "right", "right", "right", "right"],
  );

  const mc = (runs: MountCost[], f: (m: MountCost) => number) => p50(runs.map(f)) / 1000;
  const kernelTable = res.mountCost.length
    ? markdownTable(
        ["Bind mounts (N)", "N ro binds (2N mount calls) ms", "µs per bind", "N umount2, one by one, ms", "µs per umount", "1 umount2(MNT_DETACH) of N, ms", "1 rbind copying N, ms", "unshare(CLONE_NEWNS) with N, ms", "child life incl. namespace teardown, ms"],
        res.mountCost.map((runs) => {
          const n = runs[0]!.n;
          return [
            N(n),
            fmt(mc(runs, (m) => m.mount)),
            fmt((mc(runs, (m) => m.mount) * 1000) / n),
            fmt(mc(runs, (m) => m.umount)),
            fmt((mc(runs, (m) => m.umount) * 1000) / n),
            fmt(mc(runs, (m) => m.detach)),
            fmt(mc(runs, (m) => m.rbind)),
            `${fmt(mc(runs, (m) => m.unshare))} (none: ${fmt(mc(runs, (m) => m.base_unshare))})`,
            `${fmt(mc(runs, (m) => m.unshare_exit))} (none: ${fmt(mc(runs, (m) => m.base_unshare_exit))})`,
          ];
        }),
        ["right", "right", "right", "right", "right", "right", "right", "right", "right"],
      )
    : `(skipped: ${res.mountCostSkipped ?? "no closure of 1,000 paths or more"})`;

  const closuresText = res.cases.map((c) => `${N(c.size)} = ${c.what}`).join("; ");
  const buildText = res.cases.map((c) => `${N(c.size)}: ${fmt(c.buildMs / 1000)} s`).join(", ");
  const la = (l: number[]) => l.map((x) => x.toFixed(2)).join(" ");
  const busy = Math.max(res.load.before[0] ?? 0, res.load.after[0] ?? 0) > os.cpus().length;

  const markdown = `${res.quick ? "**Quick run (--quick): closures up to 1,000 store paths (the 5,000-path case is skipped), few repetitions; the numbers are noisy.**\n\n" : ""}\
Container start time, \`ctr run --rm --snapshotter S IMAGE ID ENTRYPOINT\` against a private containerd. The nix image \
(one layer of empty mountpoints whose annotations name the store paths, built by \`nix2container build\`, imported with \
\`ctr images import --local=false\`) runs on two nix-snapshotters, one per \`store_view\` setting: *tree* (the default: one \
read-only bind of the layer's store view, a tree of hard links of its closure, onto /nix/store) and *binds* (one read-only \
bind mount per store path). *ordinary* is an ordinary single-layer image holding the real files of the same store paths \
under /nix/store (no annotations) on containerd's \`overlayfs\`. All run the same program, which prints "Hello, world!". \
*First byte*: from spawning ctr to the first byte of the container's output reaching ctr; *whole run*: to ctr's exit, \
container and snapshot removed. p50 of ${PARAMS.runs} runs per image, kind and size (after one warm-up run each), the kinds in rotating order.

${startTable}

${growthText}

Closures (store paths as the container sees them under /nix/store): ${closuresText}. Sizes above 1 come from \
test/fixtures/nix/many.nix (\`withHello = true\`), the 1-path case from bench/nix-start/hello-static.nix (the same program, \
linked statically, since the dynamic hello alone is already 3 paths); each closure is listed by test/fixtures/nix/closure-info.nix, \
whose store-paths file the nix image names in its \`nix-closure\` annotation.

**What the tree costs instead.** The store view is built once per nix layer, in the background after the unpack's Commit \
(the daemon's log); the runs above start once it exists (before that, containers get per-path binds). Its directories \
are new inodes on the snapshotter's filesystem; files are hard links (no data copied):

${viewTable}

**Where the time goes.** From containerd's event stream (timestamps of /snapshot/prepare, /containers/create, \
/tasks/create, /tasks/start, /tasks/exit, /tasks/delete), p50 per phase, at the smallest and the largest closure. Events \
are stamped by their publisher (containerd, or the shim for /tasks/*), so phases of a few ms can come out slightly negative:

${phaseTable}

Mounts of a container's snapshot above the image's layer, through containerd's snapshots API (${PARAMS.mountsCalls} calls; \
ctr calls it once per start, within "task created"), and the whole task-create phase beside it:

${mountsTable}

Our daemons' own share of each nix start: the time their gRPC handlers took (debug log), per method, summed over the \
run and the garbage collection after it, p50 over the runs:

${daemonTable}

**Whole import** (\`ctr images import --local=false\`, through the Transfer service, which unpacks), the nix image on each \
nix-snapshotter and the ordinary image on \`overlayfs\`; between repetitions the image is removed with \`ctr images rm --sync\` \
and a synchronous garbage collection, so every import is a full one:

${importTable}

**The kernel's share of per-path binds.** A small C program (bench/nix-start/mountcost.c) makes the same read-only bind \
mounts of the same store paths that containerd's mount code makes for the rootfs with store_view = "binds" (mount \
MS_BIND|MS_REC, then a remount read-only), in a private mount namespace on a tmpfs, and times the other operations a \
start and a stop do with them; p50 of ${PARAMS.mountCostReps} run(s). A \`ctr run\` makes and unmakes the rootfs's mounts \
twice (ctr's temporary mount to read /etc/group, then the shim's for runc); with the tree there is one store mount instead of N:

${kernelTable}

Setup, not measured: closures built with \`nix-build\` in ${buildText} (cached in the Nix store after the first run; \
GC roots under the benchmark's temporary directory for the run only), and everything up to the first measurement took \
${fmt(res.setupMs / 1000)} s. State on ${res.fs}. Load average (1, 5, 15 min) before: ${la(res.load.before)}, after: ${la(res.load.after)}\
${busy ? " — **the machine was busy with other work during the run: absolute numbers are depressed and noisy; compare the ratios measured side by side.**" : "."}
`;

  const rows = res.sizes.map((s) => ({
    size: s.size,
    closure: s.what,
    firstByteMs: Object.fromEntries(KINDS.map((k) => [k, first(s, k)])),
    totalMs: Object.fromEntries(KINDS.map((k) => [k, total(s, k)])),
    p50FirstByteMs: Object.fromEntries(KINDS.map((k) => [k, p50(first(s, k))])),
    p50TotalMs: Object.fromEntries(KINDS.map((k) => [k, p50(total(s, k))])),
    ratioFirstByte: { tree: ratio(s, "tree", first), binds: ratio(s, "binds", first) },
    ratioTotal: { tree: ratio(s, "tree", total), binds: ratio(s, "binds", total) },
    phasesP50Ms: Object.fromEntries(KINDS.map((k) => [k, Object.fromEntries(PHASES.map((p) => [p.id, ph(s, k, p)]))])),
    view: s.view,
    runs: s.runs,
    firstRun: s.firstRun,
    imports: s.imports,
    mountsMs: s.mountsMs,
  }));
  const goals: GoalRow[] = [];
  const at1000 = res.sizes.find((s) => s.size === 1000);
  if (at1000) {
    for (const k of NIX_KINDS) {
      const r = ratio(at1000, k, first);
      goals.push({
        id: "P2",
        measure: `container start, 1,000-path closure, nix/ordinary (first byte p50), store_view = "${k}"${k === "tree" ? "" : " (for comparison)"}`,
        goal: `≤ ${GOAL_START_RATIO_1000}×`,
        now: ratioText(r),
        met: r <= GOAL_START_RATIO_1000,
      });
    }
  }
  return {
    name: "nix-start",
    title: "Container start: nix images (store view tree and per-path binds) vs ordinary images",
    markdown,
    rows,
    meta: {
      params: PARAMS,
      mountCost: res.mountCost,
      quick: res.quick,
      load: res.load,
      fs: res.fs,
      images: res.cases.map((c) => ({ size: c.size, buildMs: c.buildMs, nix: { bytes: c.nix.bytes, buildMs: c.nix.buildMs }, ordinary: { bytes: c.ordinary.bytes, buildMs: c.ordinary.buildMs } })),
    },
    goals,
  };
}
