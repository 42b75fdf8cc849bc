import { strict as assert } from "node:assert";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { freePort, isListening, serverEnv, spawnServer, type ServerProcess } from "../support/child.js";

const TOKEN = /rgpu_[0-9a-f]{16}_[A-Za-z0-9_-]{43}/;

/** The only plain text the server writes on stderr in normal operation: the one-time admin-token notice. */
const TOKEN_NOTICE = [
  /^No REMOTEGPU_ADMIN_TOKEN was configured, so an admin token was generated\. It is shown only now;$/,
  /^only its hash is stored\. Keep it safe:$/,
  new RegExp(`^ {4}${TOKEN.source}$`),
];

describe("e2e: what the server prints", function () {
  // initdb plus two starts; each step below has its own, tighter, deadline.
  this.timeout(90_000);

  let dataDir: string;
  let pgPort: number;
  let port: number;
  let adminToken: string;
  const spawned: ServerProcess[] = [];

  const start = async (vars: Record<string, string> = {}) => {
    const env = serverEnv({
      DATA_DIR: dataDir,
      PORT: String(port),
      EMBEDDED_POSTGRES_PORT: String(pgPort),
      BIND_ADDRESS: "127.0.0.1",
      // Every level, the embedded PostgreSQL's own lines included.
      LOG_LEVEL: "trace",
      ...vars,
    });
    if (vars.LOG_FORMAT === undefined) delete env.LOG_FORMAT;
    delete env.NO_COLOR;
    const server = spawnServer(env);
    spawned.push(server);
    return server;
  };

  const listHosts = (token: string) =>
    fetch(`http://127.0.0.1:${port}/remotegpu.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: "{}",
    });

  before(async () => {
    dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "remotegpu-e2e-log-format-"));
    // As root, PostgreSQL runs as the postgres user, which must be able to reach DATA_DIR.
    await fs.chmod(dataDir, 0o755);
    port = await freePort();
    do pgPort = await freePort();
    while (pgPort === port);
  });

  after(async () => {
    await Promise.all(spawned.map((s) => s.kill()));
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it("LOG_FORMAT unset: every stdout line is a JSON log record through start, an RPC and SIGTERM", async () => {
    const s = await start();
    assert.equal(await s.listening(60_000), port);
    adminToken = TOKEN.exec(s.stderr())?.[0] ?? "";
    assert.ok(adminToken, `a generated admin token on stderr:\n${s.stderr()}`);

    const res = await listHosts(adminToken);
    assert.equal(res.status, 200, await res.text());
    assert.equal(await s.stop(15_000), 0, s.stderr());
    assert.equal(await isListening(pgPort), false);

    const stdout = s.stdout();
    assert.ok(stdout.endsWith("\n"), "the last record is complete");
    const records = stdout
      .slice(0, -1)
      .split("\n")
      .map((line, i) => {
        let record: unknown;
        assert.doesNotThrow(() => (record = JSON.parse(line)), `stdout line ${i + 1} is not JSON: ${line}`);
        assert.ok(record !== null && typeof record === "object" && !Array.isArray(record), `line ${i + 1}: ${line}`);
        const r = record as Record<string, unknown>;
        assert.equal(typeof r.level, "number", `line ${i + 1} has a level: ${line}`);
        assert.equal(typeof r.time, "number", `line ${i + 1} has a time: ${line}`);
        return r;
      });
    const messages = records.map((r) => r.msg);
    for (const expected of ["embedded PostgreSQL started", "remotegpu listening", "rpc", "shutting down", "embedded PostgreSQL stopped"])
      assert.ok(messages.includes(expected), `"${expected}" among ${JSON.stringify(messages)}`);
    assert.ok(
      records.some((r) => r.msg === "embedded postgres" && typeof r.postgres === "string" && !r.postgres.includes("\n")),
      "PostgreSQL's own log comes through as records, one line each",
    );
    assert.ok(!stdout.includes(adminToken), "the admin token stays out of the logs");

    // stderr holds the token notice and nothing else: no library or warning output.
    const stray = s
      .stderr()
      .split("\n")
      .filter((l) => l.trim() !== "" && !TOKEN_NOTICE.some((p) => p.test(l)));
    assert.deepEqual(stray, [], "nothing but the admin-token notice on stderr");
  });

  it("LOG_FORMAT=pretty: one readable line per record, no colour on a pipe", async () => {
    const s = await start({ LOG_FORMAT: "pretty", LOG_LEVEL: "info" });
    const listening = /^\d\d:\d\d:\d\d\.\d{3} INFO {2}remotegpu listening .*\bport=(\d+)/m;
    const deadline = Date.now() + 60_000;
    while (!listening.test(s.stdout()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(Number(listening.exec(s.stdout())?.[1]), port, s.stdout() + s.stderr());

    assert.equal((await listHosts(adminToken)).status, 200);
    assert.equal(await s.stop(15_000), 0, s.stderr());

    const lines = s.stdout().trimEnd().split("\n");
    for (const line of lines)
      assert.match(line, /^\d\d:\d\d:\d\d\.\d{3} (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) \S/, `a pretty line: ${line}`);
    assert.ok(!s.stdout().includes("\u001b["), "no colour codes when stdout is not a terminal");
    assert.ok(
      lines.some((l) => /INFO {2}rpc .*rpc=remotegpu\.v1\.HostService\/ListHosts/.test(l)),
      lines.join("\n"),
    );
    assert.ok(
      lines.some((l) => /INFO {2}shutting down .*signal=SIGTERM/.test(l)),
      lines.join("\n"),
    );
    assert.equal(s.stderr().trim(), "", "no token on a later start, and nothing else");
  });
});
