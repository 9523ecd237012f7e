import t from "tap";
import { createLogger, formatLine } from "../../src/log.js";

t.test("logfmt lines, one per event", async (t) => {
  const line = formatLine("info", "prepared", { key: "default/1/x", ms: 1.5, error: new Error("boom\nsecond"), skip: undefined }, new Date(0));
  t.equal(line, 'time=1970-01-01T00:00:00.000Z level=info msg="prepared" key=default/1/x ms=1.5 error="boom\\nsecond"');
  t.notMatch(line, /\n/);
});

t.test("levels filter and fields accumulate", async (t) => {
  const lines: string[] = [];
  const log = createLogger("info", (l) => lines.push(l)).with({ component: "test" });
  log.debug("hidden");
  log.warn("shown", { key: "k" });
  t.equal(lines.length, 1);
  t.match(lines[0], /level=warn msg="shown" component=test key=k$/);
  t.equal(log.enabled("debug"), false);
});
