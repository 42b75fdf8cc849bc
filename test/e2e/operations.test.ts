import { strict as assert } from "node:assert";
import { execFile, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { ROOT, freePort } from "../support/child.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";
import { systemClock } from "../../src/platform/clock.js";

const execFileP = promisify(execFile);

/** One ```sh block of docs/operations.md: what it runs and what its output must contain. */
interface DocBlock {
  line: number;
  heading: string;
  code: string;
  expects: string[];
}

function parseBlocks(markdown: string): DocBlock[] {
  const blocks: DocBlock[] = [];
  const lines = markdown.split("\n");
  let heading = "";
  for (let i = 0; i < lines.length; i++) {
    if (/^#{1,4} /.test(lines[i]!)) heading = lines[i]!.replace(/^#+ /, "");
    if (lines[i] !== "```sh") continue;
    const start = i + 1;
    while (i + 1 < lines.length && lines[++i] !== "```");
    const body = lines.slice(start, i);
    const expects = body.map((l) => /^# expect: (.*)$/.exec(l)?.[1]).filter((e): e is string => e !== undefined);
    blocks.push({ line: start, heading, code: body.join("\n"), expects });
  }
  return blocks;
}

/**
 * Each block runs in its own `bash -euo pipefail`; the variables and functions it made are saved to
 * a state file the next block sources, so blocks chain like one shell session. Unless the block
 * expects an error code, `curl` fails on an HTTP error status: a Connect error piped into jq would
 * otherwise pass unnoticed.
 */
function script(block: DocBlock): string {
  const expectsError = block.expects.some((e) => e.includes('"code":"'));
  return [
    `__base=" $(compgen -v | tr '\\n' ' ') "`,
    `source "$__STATE"`,
    expectsError ? "" : `curl() { command curl --fail-with-body "$@"; }`,
    "set -euo pipefail",
    block.code,
    "set +u",
    "unset -f curl",
    `{ for __v in $(compgen -v); do [[ $__v == __* || "$__base" == *" $__v "* ]] || declare -p "$__v"; done; declare -f; } > "$__STATE"`,
  ].join("\n");
}

/** An `# expect:` line: text the output contains, or `/regex/`. */
function found(output: string, expect: string): boolean {
  return /^\/.+\/$/.test(expect) ? new RegExp(expect.slice(1, -1)).test(output) : output.includes(expect);
}

describe("e2e: docs/operations.md, every command run against a live server", function () {
  this.timeout(600_000);
  const doc = readFileSync(path.join(ROOT, "docs/operations.md"), "utf8");
  const blocks = parseBlocks(doc);
  let server: TestServer;
  let dir: string;
  let env: NodeJS.ProcessEnv;
  const groups: number[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "remotegpu-ops-doc-"));
    const hostPort = await freePort();
    server = await startTestServer({
      clock: systemClock,
      // Fleet metrics read afresh every second: an agent upgrade (an npm install with no agent running)
      // can outlast the grace, and the metrics block must see the host back ONLINE, not a stale snapshot.
      env: {
        HEARTBEAT_INTERVAL_SECONDS: "1",
        HOST_GRACE_SECONDS: "5",
        METRICS_REFRESH_SECONDS: "1",
        HOST_PORT_RANGE: `${hostPort}-${hostPort}`,
      },
    });
    await writeFile(path.join(dir, "state"), "");
    env = { ...process.env, URL: server.baseUrl, TOKEN: ADMIN_TOKEN, APP_PORT: String(await freePort()), __STATE: path.join(dir, "state") };
    for (const name of ["REMOTEGPU_URL", "REMOTEGPU_TOKEN"]) delete env[name];
  });
  after(async () => {
    // Whatever a failed run left behind (the agent started in the background) goes with its block's process group.
    for (const pgid of groups) {
      try {
        process.kill(-pgid, "SIGTERM");
      } catch {
        // already gone
      }
    }
    // The agent leaves its workloads running when it stops: a run that failed midway may have left one.
    await execFileP("pkill", ["-f", `http.server ${env?.APP_PORT} `]).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 500));
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("has sh blocks, each with at least one expectation", () => {
    assert.ok(blocks.length >= 30, `only ${blocks.length} blocks`);
    for (const b of blocks) assert.ok(b.expects.length > 0, `block at docs/operations.md:${b.line} ("${b.heading}") has no # expect: line`);
  });

  it("covers buf curl and plain curl for every service", () => {
    for (const service of ["HostService", "GpuService", "WorkspaceService", "EnvironmentService"]) {
      const uses = blocks.filter((b) => b.code.includes(`remotegpu.v1.${service}/`));
      assert.ok(
        uses.some((b) => b.code.includes("buf curl")),
        `${service}: no buf curl`,
      );
      assert.ok(
        uses.some((b) => b.code.includes("curl -s")),
        `${service}: no plain curl`,
      );
    }
  });

  it("runs every block in order: exit code 0 and the expected output", async () => {
    for (const [n, block] of blocks.entries()) {
      const name = `block ${n + 1} at docs/operations.md:${block.line} ("${block.heading}")`;
      const started = Date.now();
      const { code, output } = await run(script(block), env, groups, 120_000);
      const report = `${name}\n--- code ---\n${block.code}\n--- output (exit ${code}, ${Date.now() - started} ms) ---\n${output.slice(-6000)}`;
      if (process.env.OPS_DOC_VERBOSE) console.log(report); // to see what each block prints
      assert.equal(code, 0, `${name} failed\n${report}`);
      for (const e of block.expects) assert.ok(found(output, e), `${name}: output lacks ${JSON.stringify(e)}\n${report}`);
    }
  });

  it("covers the agent upgrade and the dead host, and leaves no agent or workload behind", async () => {
    const headings = new Set(blocks.map((b) => b.heading));
    for (const h of ["Restart or upgrade the agent", "When a host dies"]) assert.ok(headings.has(h), `no section "${h}"`);
    assert.ok(
      blocks.some((b) => b.code.includes('kill -9 "$AGENT_PID"')),
      "a host dies with its agent killed",
    );
    assert.ok(
      blocks.some((b) => b.expects.includes("no process of the environment left")),
      "the leftovers of a deleted environment are checked",
    );
    // After the last block: neither the agent (started with --server <this server>) nor the app it ran is left.
    const { stdout } = await execFileP("ps", ["-eo", "pid=,args="]);
    const left = stdout.split("\n").filter((l) => l.includes(`--server ${server.baseUrl} `) || l.includes(`http.server ${env.APP_PORT} `));
    assert.deepEqual(left, [], "processes left running");
  });
});

/** Runs a bash script in its own process group; resolves with its exit code and stdout+stderr interleaved. */
function run(
  code: string,
  env: NodeJS.ProcessEnv,
  groups: number[],
  timeoutMs: number,
): Promise<{ code: number | string; output: string }> {
  return new Promise((resolve) => {
    const child = spawn("bash", ["-c", code], { cwd: ROOT, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    groups.push(child.pid!);
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (output += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (output += c));
    const timer = setTimeout(() => {
      output += `\n[killed after ${timeoutMs} ms]`;
      process.kill(-child.pid!, "SIGKILL");
    }, timeoutMs);
    child.on("close", (exit, signal) => {
      clearTimeout(timer);
      resolve({ code: exit ?? signal ?? "unknown", output });
    });
  });
}
