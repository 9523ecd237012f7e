import t from "tap";
import { encodeMountsResponse } from "../../src/service/mount-codec.js";
import { snapshotsService } from "../../src/service/proto.js";
import type { Mount } from "../../src/snapshotter/snapshotter.js";

t.test("hand-encoded mount responses decode as the proto says", async (t) => {
  const mounts: Mount[] = [
    { type: "overlay", source: "overlay", options: ["index=off", "workdir=/r/2/work", "upperdir=/r/2/fs", "lowerdir=/r/1/fs"] },
    { type: "bind", source: "/nix/store/aaaa-é-unicode", target: "/nix/store/aaaa-é-unicode", options: ["ro", "rbind"] },
    { type: "bind", source: "/x".repeat(100), options: [] },
  ];
  const decode = snapshotsService().service.Mounts!.responseDeserialize;
  for (const res of [encodeMountsResponse(mounts), encodeMountsResponse(mounts)]) {
    const got = decode(res) as { mounts: { type: string; source: string; target: string; options: string[] }[] };
    t.same(
      got.mounts,
      mounts.map((m) => ({ type: m.type, source: m.source, target: m.target ?? "", options: m.options })),
      "round trip (first call encodes, second uses the cache)",
    );
  }
  t.equal(encodeMountsResponse([]).length, 0, "no mounts: an empty message");
});
