import { strict as assert } from "node:assert";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ConfigError, loadConfig } from "../../src/config.js";
import { serverEnv, spawnServer, type ServerProcess } from "../support/child.js";

interface Outcome {
  code: number | string;
  stdout: string;
  /** stderr lines, empty ones dropped. */
  lines: string[];
}

describe("e2e: bad configuration", function () {
  this.timeout(30_000);

  let dir: string;
  const spawned: ServerProcess[] = [];

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "remotegpu-e2e-config-"));
  });

  after(async () => {
    await Promise.all(spawned.map((s) => s.kill()));
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** Runs src/main.ts with `vars` on top of a clean environment; DATA_DIR points at a path that does not exist. */
  async function run(vars: Record<string, string>): Promise<Outcome & { dataDir: string }> {
    const dataDir = path.join(dir, `data-${spawned.length}`);
    const server = spawnServer(serverEnv({ DATA_DIR: dataDir, EMBEDDED_POSTGRES_PORT: "1", PORT: "1", ...vars }));
    spawned.push(server);
    const code = await server.exited(20_000);
    const lines = server
      .stderr()
      .split("\n")
      .filter((l) => l.trim() !== "");
    return { code, stdout: server.stdout(), lines, dataDir };
  }

  it("reports every bad variable at once, one 'config error:' line each, and exits 2 without touching anything", async () => {
    const out = await run({
      PORT: "abc",
      LOG_LEVEL: "loud",
      REMOTEGPU_ADMIN_TOKEN: "short",
      TLS_CERT: path.join(dir, "cert.pem"),
      DATABASE_URL: "mysql://x",
      HEARTBEAT_INTERVAL_SECONDS: "10",
      HOST_GRACE_SECONDS: "5",
    });
    assert.equal(out.code, 2, out.lines.join("\n"));
    for (const line of out.lines) assert.match(line, /^config error: /, `unexpected stderr line: ${line}`);
    const starting = (v: string) => out.lines.filter((l) => l.startsWith(`config error: ${v}`));
    const expectations: [string, RegExp][] = [
      ["PORT", /^config error: PORT="abc": .*whole number.*0.*65535/],
      ["LOG_LEVEL", /^config error: LOG_LEVEL="loud": .*info/],
      ["REMOTEGPU_ADMIN_TOKEN", /^config error: REMOTEGPU_ADMIN_TOKEN: .*16 characters/],
      // The problem is the missing half of the pair: the line names it and the half that was given.
      ["TLS_KEY", /^config error: TLS_KEY: .*TLS_CERT/],
      ["DATABASE_URL", /^config error: DATABASE_URL: .*postgres/],
      ["HOST_GRACE_SECONDS", /^config error: HOST_GRACE_SECONDS=5: .*HEARTBEAT_INTERVAL_SECONDS=10/],
    ];
    for (const [name, pattern] of expectations) {
      const lines = starting(name);
      assert.equal(lines.length, 1, `one line for ${name} in:\n${out.lines.join("\n")}`);
      assert.match(lines[0]!, pattern);
    }
    assert.equal(out.lines.length, expectations.length, out.lines.join("\n"));
    // The DATABASE_URL line must not echo the URL: real ones carry passwords.
    assert.ok(!out.lines.some((l) => l.includes("mysql://x")));
    assert.equal(out.stdout, "", "nothing is logged before the configuration is valid");
    assert.equal(existsSync(out.dataDir), false, "DATA_DIR is not created for a bad configuration");
  });

  it("a single problem gives exactly one line", async () => {
    const out = await run({ PORT: "70000" });
    assert.equal(out.code, 2);
    assert.deepEqual(out.lines, ['config error: PORT="70000": must be a whole number from 0 to 65535']);
    assert.equal(out.stdout, "");
  });

  it("TLS files that do not exist are each named", async () => {
    const out = await run({ TLS_CERT: path.join(dir, "nope-cert.pem"), TLS_KEY: path.join(dir, "nope-key.pem") });
    assert.equal(out.code, 2);
    assert.equal(out.lines.length, 2, out.lines.join("\n"));
    assert.match(out.lines[0]!, /^config error: TLS_CERT=.*nope-cert\.pem.*not found/);
    assert.match(out.lines[1]!, /^config error: TLS_KEY=.*nope-key\.pem.*not found/);
  });

  it("a file that is not a certificate stops the start before anything runs", async () => {
    const notPem = path.join(dir, "not-a-cert.pem");
    await fs.writeFile(notPem, "hello\n");
    const out = await run({ TLS_CERT: notPem, TLS_KEY: notPem });
    assert.equal(out.code, 1);
    assert.match(out.lines.join("\n"), /cannot start: TLS_CERT\/TLS_KEY: not a usable PEM certificate/);
    assert.equal(existsSync(path.join(out.dataDir, "postgres")), false, "no embedded PostgreSQL was started");
  });
});

describe("loadConfig", () => {
  it("has the documented defaults for an empty environment", () => {
    const c = loadConfig({});
    assert.equal(c.port, 8080);
    assert.equal(c.bindAddress, "0.0.0.0");
    assert.equal(c.dataDir, path.resolve("./.data"));
    assert.ok(path.isAbsolute(c.dataDir));
    assert.equal(c.heartbeatIntervalSeconds, 10);
    assert.equal(c.hostGraceSeconds, 40);
    assert.equal(c.shutdownTimeoutSeconds, 10);
    assert.equal(c.databasePoolSize, 20);
    assert.equal(c.embeddedPostgresPort, 54329);
    assert.equal(c.logLevel, "info");
    assert.equal(c.databaseUrl, undefined);
    assert.equal(c.redisUrl, undefined);
    assert.equal(c.adminToken, undefined);
    assert.equal(c.tls, undefined);
  });

  it("treats blank values as unset and trims the rest", () => {
    const c = loadConfig({ PORT: " 9090 ", LOG_LEVEL: "  ", DATA_DIR: "", REMOTEGPU_ADMIN_TOKEN: "   " });
    assert.equal(c.port, 9090);
    assert.equal(c.logLevel, "info");
    assert.equal(c.dataDir, path.resolve("./.data"));
    assert.equal(c.adminToken, undefined);
  });

  it("accepts a full valid environment", () => {
    const c = loadConfig({
      PORT: "0",
      BIND_ADDRESS: "127.0.0.1",
      DATABASE_URL: "postgresql://u:p@db:5432/x",
      REDIS_URL: "rediss://cache:6380",
      LOG_LEVEL: "silent",
      REMOTEGPU_ADMIN_TOKEN: "0123456789abcdef",
      DATA_DIR: "/var/lib/remotegpu",
      HEARTBEAT_INTERVAL_SECONDS: "5",
      HOST_GRACE_SECONDS: "6",
      SHUTDOWN_TIMEOUT_SECONDS: "0",
      DATABASE_POOL_SIZE: "1",
    });
    assert.equal(c.port, 0);
    assert.equal(c.databaseUrl, "postgresql://u:p@db:5432/x");
    assert.equal(c.redisUrl, "rediss://cache:6380");
    assert.equal(c.adminToken, "0123456789abcdef");
    assert.equal(c.dataDir, "/var/lib/remotegpu");
    assert.equal(c.hostGraceSeconds, 6);
    assert.equal(c.shutdownTimeoutSeconds, 0);
  });

  it("throws a ConfigError listing every problem", () => {
    assert.throws(
      () => loadConfig({ PORT: "1e3", DATABASE_POOL_SIZE: "0", REDIS_URL: "http://cache", HOST_GRACE_SECONDS: "10" }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(err.problems.length, 4, err.problems.join("\n"));
        assert.match(err.problems.join("\n"), /^PORT=/m);
        assert.match(err.problems.join("\n"), /^DATABASE_POOL_SIZE=/m);
        assert.match(err.problems.join("\n"), /^REDIS_URL: /m);
        assert.match(err.problems.join("\n"), /^HOST_GRACE_SECONDS=10: /m);
        return true;
      },
    );
  });

  it("compares the grace with the interval only when both were given well", () => {
    for (const env of [
      { HEARTBEAT_INTERVAL_SECONDS: "100", HOST_GRACE_SECONDS: "abc" },
      { HEARTBEAT_INTERVAL_SECONDS: "abc", HOST_GRACE_SECONDS: "5" },
    ]) {
      assert.throws(
        () => loadConfig(env),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError);
          assert.equal(err.problems.length, 1, err.problems.join("\n"));
          assert.match(err.problems[0]!, /="abc": must be a whole number/);
          return true;
        },
      );
    }
  });

  it("rolls telemetry up into 5-minute buckets by default, where the resolution divides them", () => {
    assert.equal(loadConfig({}).telemetryRollupSeconds, 300);
    assert.equal(loadConfig({}).telemetryRollupAfterHours, 24);
    assert.equal(loadConfig({ TELEMETRY_RESOLUTION_SECONDS: "60" }).telemetryRollupSeconds, 300);
    // Already that coarse, or 300 s would cut its buckets: no rollup unless one is asked for.
    assert.equal(loadConfig({ TELEMETRY_RESOLUTION_SECONDS: "300" }).telemetryRollupSeconds, 0);
    assert.equal(loadConfig({ TELEMETRY_RESOLUTION_SECONDS: "7" }).telemetryRollupSeconds, 0);
    assert.equal(loadConfig({ TELEMETRY_RESOLUTION_SECONDS: "7", TELEMETRY_ROLLUP_SECONDS: "70" }).telemetryRollupSeconds, 70);
    assert.equal(loadConfig({ TELEMETRY_ROLLUP_SECONDS: "0" }).telemetryRollupSeconds, 0);
    for (const rollup of ["45", "10", "5"]) {
      assert.throws(
        () => loadConfig({ TELEMETRY_ROLLUP_SECONDS: rollup }),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError);
          assert.deepEqual(err.problems, [
            `TELEMETRY_ROLLUP_SECONDS=${rollup}: must be 0 (no rollup) or a multiple of TELEMETRY_RESOLUTION_SECONDS=10 larger than it`,
          ]);
          return true;
        },
      );
    }
  });
});
