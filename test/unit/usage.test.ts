import { execFileSync } from "node:child_process";
import { linkSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { diskUsage } from "../../src/snapshotter/usage.js";
import { tempDir } from "../lib/tmp.js";

t.test("disk usage agrees with du and find, hard links once", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const root = path.join(tmp.path, "tree");
  for (let d = 0; d < 20; d++) {
    mkdirSync(path.join(root, `d${d}`, "sub"), { recursive: true });
    for (let f = 0; f < 20; f++) writeFileSync(path.join(root, `d${d}`, f % 2 ? "sub" : "", `f${f}`), "x".repeat(f * 300));
  }
  linkSync(path.join(root, "d0/f2"), path.join(root, "d1/hardlink"));
  const u = await diskUsage(root);
  const inodes = Number(execFileSync("sh", ["-c", `find ${root} | xargs -n1 stat -c %i | sort -u | wc -l`]).toString());
  const bytes = Number(execFileSync("du", ["-s", "-B1", root]).toString().split("\t")[0]);
  t.equal(u.inodes, inodes, `inodes (${inodes})`);
  t.equal(u.size, bytes, `bytes (${bytes}), as du counts them`);
  await t.rejects(diskUsage(path.join(tmp.path, "missing")), { code: "ENOENT" });
});
