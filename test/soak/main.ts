/**
 * The fault soaks of test/lib/soak.ts at full size, for the figures a
 * release note quotes (the CI suite runs them short, in
 * test/integration/trust.test.ts). As root, after `make build`:
 *
 *   node build/test/soak/main.js [--seconds N] [--clients N] [--rounds N]
 *
 * Prints one line per soak and exits 1 when any found a lost snapshot, a
 * lost directory, a missing store path or a failed call.
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { startDaemonProcess } from "../../devenv/daemon.js";
import { buildNixFixture, clientLoad, deleteFixture, killRounds, nixDeleteRace } from "../lib/soak.js";
import { nonce } from "../lib/nix.js";
import { tempDir } from "../lib/tmp.js";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "60" },
    clients: { type: "string", default: "64" },
    rounds: { type: "string", default: "20" },
    "cleanup-share": { type: "string", default: "0.02" },
    only: { type: "string" },
  },
  strict: true,
});
if (process.getuid?.() !== 0) {
  console.error("soak: needs root (overlay directories owned by root, Nix store as root)");
  process.exit(2);
}
const seconds = Number(values.seconds);
const only = values.only?.split(",");
const want = (name: string) => !only || only.includes(name);
let bad = false;
const tmp = tempDir("nix-snapshotter-soak-");
const fixture = await buildNixFixture(8, nonce(), path.join(tmp.path, "cache"));
try {
  if (want("clients")) {
    const root = path.join(tmp.path, "clients");
    const address = path.join(tmp.path, "clients.sock");
    const d = await startDaemonProcess({ root, address, logLevel: "warn" });
    const r = await clientLoad({ address, root, clients: Number(values.clients), durationMs: seconds * 1000, cleanupShare: Number(values["cleanup-share"]) });
    await d.stop();
    console.log(`clients: ${values.clients} clients, ${seconds} s: ${r.ops} operations (${r.cleanups} Cleanup), ${r.errors.length} errors, ${r.lostDirectories.length} live directories lost`);
    for (const e of r.errors.slice(0, 10)) console.log(`  ${e}`);
    bad ||= r.errors.length > 0 || r.lostDirectories.length > 0;
  }
  if (want("race")) {
    const root = path.join(tmp.path, "race");
    const address = path.join(tmp.path, "race.sock");
    const d = await startDaemonProcess({ root, address, logLevel: "warn", env: { NIX_CONFIG: fixture.nixConfig } });
    const r = await nixDeleteRace({ address, fixture, durationMs: seconds * 1000 });
    await d.stop();
    console.log(
      `race: ${fixture.closures.length} workers, ${seconds} s: ${r.layers} nix layers, ${r.deletions} deletions of their paths (of ${r.deleteAttempts} attempts), ${r.missingWhileLive.length} paths missing while live, ${r.errors.length} errors`,
    );
    for (const e of [...r.missingWhileLive, ...r.errors].slice(0, 10)) console.log(`  ${e}`);
    bad ||= r.missingWhileLive.length > 0 || r.errors.length > 0;
  }
  if (want("kill")) {
    const r = await killRounds({
      root: path.join(tmp.path, "kill"),
      address: path.join(tmp.path, "kill.sock"),
      fixture,
      rounds: Number(values.rounds),
      workers: 8,
      killAfterMs: 1_500,
    });
    console.log(`kill: ${r.rounds} kill -9 rounds: ${r.acknowledged} acknowledged commits checked, ${r.lost.length} lost; ${r.nixLayersChecked} nix layer checks, ${r.damage.length} damaged; ${r.errors.length} errors`);
    for (const e of [...r.lost, ...r.damage, ...r.errors].slice(0, 10)) console.log(`  ${e}`);
    bad ||= r.lost.length > 0 || r.damage.length > 0 || r.errors.length > 0;
  }
} finally {
  await deleteFixture(fixture);
  tmp.cleanup();
}
process.exit(bad ? 1 : 0);
