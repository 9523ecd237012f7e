import t from "tap";
import { computeMounts } from "../../src/snapshotter/mounts.js";
import { inUserNamespace } from "../../src/userns.js";

const p = { snapshotsDir: "/r/snapshots" };

t.test("mounts follow containerd's overlayfs rules", async (t) => {
  t.same(computeMounts(p, { id: "1", kind: "active", parentIds: [] }, ["index=off"]), [
    { type: "bind", source: "/r/snapshots/1/fs", options: ["rw", "rbind"] },
  ], "active, no parent: rw bind of its own dir");
  t.same(computeMounts(p, { id: "1", kind: "view", parentIds: [] }, []), [
    { type: "bind", source: "/r/snapshots/1/fs", options: ["ro", "rbind"] },
  ], "view, no parent: ro bind");
  t.same(computeMounts(p, { id: "5", kind: "view", parentIds: ["3"] }, ["index=off"]), [
    { type: "bind", source: "/r/snapshots/3/fs", options: ["ro", "rbind"] },
  ], "view of one parent: ro bind of the parent");
  t.same(computeMounts(p, { id: "5", kind: "view", parentIds: ["3", "2"] }, ["index=off"]), [
    { type: "overlay", source: "overlay", options: ["index=off", "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"] },
  ], "view of several: overlay with lowerdirs only, nearest first");
  t.same(computeMounts(p, { id: "5", kind: "active", parentIds: ["3", "2"] }, ["index=off"]), [
    {
      type: "overlay",
      source: "overlay",
      options: ["index=off", "workdir=/r/snapshots/5/work", "upperdir=/r/snapshots/5/fs", "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"],
    },
  ], "active on parents: overlay with upper and work");
  const opts = ["index=off"];
  computeMounts(p, { id: "5", kind: "active", parentIds: ["3"] }, opts);
  t.same(opts, ["index=off"], "the shared option list is not mutated");
});

t.test("fuse-overlayfs: the same options under the FUSE type; bind mounts stay", async (t) => {
  const fuse = "fuse3.fuse-overlayfs";
  t.same(computeMounts(p, { id: "5", kind: "active", parentIds: ["3", "2"] }, [], fuse), [
    { type: fuse, source: "overlay", options: ["workdir=/r/snapshots/5/work", "upperdir=/r/snapshots/5/fs", "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"] },
  ]);
  t.same(computeMounts(p, { id: "5", kind: "view", parentIds: ["3"] }, [], fuse), [{ type: "bind", source: "/r/snapshots/3/fs", options: ["ro", "rbind"] }]);
});

t.test("the initial user namespace is told from a nested one", async (t) => {
  t.notOk(inUserNamespace("         0          0 4294967295\n"), "the initial namespace maps every id onto itself");
  t.ok(inUserNamespace("         0       1001          1\n         1     100000      65536\n"), "rootlesskit's map");
  t.ok(inUserNamespace("         0       1001          1\n"), "a single mapped id");
});
