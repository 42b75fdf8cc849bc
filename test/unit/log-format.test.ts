import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { stripVTControlCharacters } from "node:util";

import { formatPretty, prettyDestination, useColour } from "../../src/platform/log-format.js";
import { createLogger } from "../../src/platform/logger.js";
import { ROOT } from "../support/child.js";
import { loadConfig } from "../../src/config.js";
import { problemsOf } from "../support/expect.js";

/** 2024-01-02 03:04:05.006 in local time, which is what a pretty line shows. */
const TIME = new Date(2024, 0, 2, 3, 4, 5, 6).getTime();
const line = (record: Record<string, unknown>) => JSON.stringify({ level: 30, time: TIME, ...record });

describe("LOG_FORMAT=pretty: one readable line per record", () => {
  it("shows time, padded upper-case level, message, then the other fields as key=value", () => {
    assert.equal(
      formatPretty(line({ msg: "remotegpu listening", service: "remotegpu", port: 8080, tls: false })),
      "03:04:05.006 INFO  remotegpu listening service=remotegpu port=8080 tls=false\n",
    );
    const levels = [10, 20, 30, 40, 50, 60].map((level) => formatPretty(line({ level, msg: "m" })).slice(13, 19));
    assert.deepEqual(levels, ["TRACE ", "DEBUG ", "INFO  ", "WARN  ", "ERROR ", "FATAL "]);
  });

  it("keeps plain strings as they are and JSON-encodes everything else", () => {
    const out = formatPretty(
      line({
        msg: "rpc",
        rpc: "remotegpu.v1.HostService/ListHosts",
        error: 'missing "authorization" header',
        empty: "",
        ms: 1.5,
        ok: true,
        none: null,
        ids: ["a", "b"],
        labels: { zone: "a b" },
      }),
    );
    assert.equal(
      out,
      '03:04:05.006 INFO  rpc rpc=remotegpu.v1.HostService/ListHosts error="missing \\"authorization\\" header" empty="" ms=1.5 ok=true none=null ids=["a","b"] labels={"zone":"a b"}\n',
    );
    assert.equal(out.split("\n").length, 2, "one line");
  });

  it("keeps a record on one line when its message or a value holds a line break", () => {
    const out = formatPretty(line({ msg: "two\nlines", postgres: "LOG:  a\nb" }));
    assert.equal(out, '03:04:05.006 INFO  "two\\nlines" postgres="LOG:  a\\nb"\n');
  });

  it("shows an error's other fields inline and its stack on the following lines, indented", () => {
    const err = {
      type: "DatabaseError",
      message: "boom",
      code: "42601",
      stack: "error: boom\n    at parse (parser.ts:1:2)\n    at next (x.ts:3:4)",
    };
    const out = formatPretty(line({ level: 50, msg: "query failed", err, requestId: "r1" }));
    assert.deepEqual(out.split("\n"), [
      '03:04:05.006 ERROR query failed err={"type":"DatabaseError","message":"boom","code":"42601"} requestId=r1',
      "    error: boom",
      "        at parse (parser.ts:1:2)",
      "        at next (x.ts:3:4)",
      "",
    ]);
  });

  it("formats what pino itself writes, errors included", () => {
    let written = "";
    const logger = createLogger("info", prettyDestination({ write: (text: string) => (written += text) }));
    logger.info({ hostId: "h1", gpus: 2 }, "host registered");
    logger.error({ err: new Error("disk full") }, "flush failed");
    const lines = written.split("\n");
    assert.match(lines[0]!, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}host registered service=remotegpu hostId=h1 gpus=2$/);
    assert.match(lines[1]!, /^\d\d:\d\d:\d\d\.\d{3} ERROR flush failed service=remotegpu err=\{"type":"Error","message":"disk full"\}$/);
    assert.equal(lines[2], "    Error: disk full");
    assert.match(lines[3]!, /^ {8}at /);
  });

  it("passes a line that is not a JSON object through unchanged", () => {
    assert.equal(formatPretty("not json\n"), "not json\n");
    assert.equal(formatPretty("[1,2]"), "[1,2]\n");
  });

  it("colours only when asked, and only stdout on a terminal without NO_COLOR asks", () => {
    const plain = formatPretty(line({ level: 40, msg: "slow", ms: 3 }));
    const coloured = formatPretty(line({ level: 40, msg: "slow", ms: 3 }), { colour: true });
    assert.ok(!plain.includes("\u001b["));
    assert.ok(coloured.includes("\u001b[33mWARN "), "the level in yellow");
    assert.equal(stripVTControlCharacters(coloured), plain);

    assert.equal(useColour({ isTTY: true }, {}), true);
    assert.equal(useColour({ isTTY: true }, { NO_COLOR: "1" }), false);
    assert.equal(useColour({ isTTY: false }, {}), false);
    assert.equal(useColour({}, {}), false, "a pipe or a file");
  });
});

describe("routeStrayOutput: what libraries print becomes log records", () => {
  it("turns console output, process warnings and an uncaught exception into JSON lines on stdout", async () => {
    // A process of its own: the routing replaces console methods and process listeners for good.
    const script = [
      'import { createLogger, routeStrayOutput } from "./src/platform/logger.ts";',
      'routeStrayOutput(createLogger("info"));',
      'console.log("pool %s", "ready", { size: 2 });',
      'console.warn("\\u001b[33mcoloured\\u001b[0m hint");',
      'console.error("Connection Error: %s", "reset");',
      'process.emitWarning("old API", "DeprecationWarning", "DEP0999");',
      'setImmediate(() => { throw new Error("unexpected"); });',
    ].join("\n");
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: ROOT,
    }).catch((err: { stdout: string; stderr: string; code: number }) => {
      assert.equal(err.code, 1, "the uncaught exception still ends the process");
      return err;
    });
    const records = stdout
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    // Each as a record; their order on a loaded machine is the stream's (CI once saw the first last).
    const byMessage = (a: unknown[], b: unknown[]) => String(a[2]).localeCompare(String(b[2]));
    assert.deepEqual(
      records.map((r) => [r.level, r.component ?? null, r.msg]).sort(byMessage),
      [
        [30, "console", "pool ready { size: 2 }"],
        [40, "console", "coloured hint"],
        [50, "console", "Connection Error: reset"],
        [40, "node", "old API"],
        [60, null, "uncaught exception"],
      ].sort(byMessage),
    );
    assert.equal(records.find((r) => r.msg === "old API")!.code, "DEP0999");
    assert.match(String((records.find((r) => r.msg === "uncaught exception")!.err as { stack: string }).stack), /unexpected/);
    // Node's own report of the crash still goes to stderr; nothing else does.
    assert.doesNotMatch(stderr, /Warning|pool|Connection Error|hint/);
    assert.match(stderr, /Error: unexpected/);
  });
});

describe("loadConfig: LOG_FORMAT", () => {
  it("is json unless set; json and pretty are accepted", () => {
    assert.equal(loadConfig({}).logFormat, "json");
    assert.equal(loadConfig({ LOG_FORMAT: "json" }).logFormat, "json");
    assert.equal(loadConfig({ LOG_FORMAT: "pretty" }).logFormat, "pretty");
    assert.equal(loadConfig({ LOG_FORMAT: " pretty " }).logFormat, "pretty");
  });

  it("reports anything else as one problem naming the allowed values", () => {
    assert.deepEqual(problemsOf({ LOG_FORMAT: "text" }), ['LOG_FORMAT="text": must be one of json, pretty']);
    assert.deepEqual(problemsOf({ LOG_FORMAT: "PRETTY" }), ['LOG_FORMAT="PRETTY": must be one of json, pretty']);
    assert.equal(problemsOf({ LOG_FORMAT: "xml", PORT: "x" }).length, 2, "alongside the other problems");
  });
});
