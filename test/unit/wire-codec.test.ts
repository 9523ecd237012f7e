import t from "tap";
import { encodeInfo, encodeInfoResponse, encodeListResponse, encodeMountsResponse } from "../../src/wire/codec.js";
import type { WireInfo } from "../../src/wire/convert.js";
import { snapshotsService } from "../../src/wire/proto.js";
import type { Mount } from "../../src/snapshotter/snapshotter.js";

t.test("hand-encoded mount responses decode as the proto says", async (t) => {
  const mounts: Mount[] = [
    { type: "overlay", source: "overlay", options: ["index=off", "workdir=/r/2/work", "upperdir=/r/2/fs", "lowerdir=/r/1/fs"] },
    { type: "bind", source: "/nix/store/aaaa-é-unicode", target: "/nix/store/aaaa-é-unicode", options: ["ro", "rbind"] },
    { type: "bind", source: "/x".repeat(100), options: [] },
    { type: "", source: "", target: "/t", options: ["", "ro", "é".repeat(70)] },
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

t.test("hand-encoded Info responses decode as proto-loader's own encoding does", async (t) => {
  const svc = snapshotsService().service;
  const infos: WireInfo[] = [
    { name: "a", parent: "", kind: "COMMITTED", createdAt: { seconds: 1_700_000_000, nanos: 123_000_000 }, updatedAt: { seconds: 1_700_000_001, nanos: 0 }, labels: {} },
    {
      name: "default/42/sha256:é-unicode",
      parent: "p".repeat(300),
      kind: "ACTIVE",
      createdAt: { seconds: 0, nanos: 0 },
      updatedAt: { seconds: 2 ** 40, nanos: 999_999_999 },
      labels: { "containerd.io/gc.root": "x", "containerd.io/snapshot/nix-store-path.1": "/nix/store/aaaa-b", empty: "", ["k".repeat(200)]: "v".repeat(20_000) },
    },
    { name: "v", parent: "a", kind: "VIEW", createdAt: { seconds: -1, nanos: 500 }, updatedAt: null, labels: { "": "empty key" } },
    { name: "", parent: "", kind: "UNKNOWN", createdAt: null, updatedAt: null, labels: {} },
  ];
  for (const info of infos) {
    const ours = encodeInfoResponse(encodeInfo(info));
    const theirs = svc.Stat!.responseSerialize({ info });
    t.same(svc.Stat!.responseDeserialize(ours), svc.Stat!.responseDeserialize(theirs), `Stat response of ${JSON.stringify(info.name).slice(0, 40)}`);
    t.same(svc.Update!.responseDeserialize(ours), svc.Update!.responseDeserialize(svc.Update!.responseSerialize({ info })), "Update response, same message");
  }
  const list = encodeListResponse(infos.map(encodeInfo));
  t.same(svc.List!.responseDeserialize(list), svc.List!.responseDeserialize(svc.List!.responseSerialize({ info: infos })), "List batch");
  t.same(svc.List!.responseDeserialize(encodeListResponse([])), { info: [] }, "empty List batch");
  // A decoded Info carries every field as sent (not only what the other side would drop).
  const back = svc.Stat!.responseDeserialize(encodeInfoResponse(encodeInfo(infos[1]!))) as { info: WireInfo };
  t.equal(back.info.labels["k".repeat(200)], "v".repeat(20_000), "a long label survives");
  t.same(back.info.updatedAt, { seconds: 2 ** 40, nanos: 999_999_999 }, "a timestamp beyond 32 bits survives");
});
