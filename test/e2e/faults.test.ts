import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { EmbeddedPostgres } from "../../src/platform/embedded-postgres.js";
import { createLogger } from "../../src/platform/logger.js";
import { freePort, isListening, serverEnv, spawnServer, type ServerProcess } from "../support/child.js";
import { ADMIN_TOKEN, clients } from "../support/server.js";
import { eventually } from "../support/eventually.js";

const code = (p: Promise<unknown>) => p.then(() => "OK", (e: unknown) => Code[ConnectError.from(e).code]);

describe("e2e: PostgreSQL and Redis go away and come back", function () {
  this.timeout(120_000);
  let dir: string;
  let server: ServerProcess | undefined;
  let pg: EmbeddedPostgres | undefined;
  let redis: ChildProcess | undefined;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "remotegpu-faults-"));
    // As root, PostgreSQL runs as the postgres user: keep its cluster here (and removed with it) rather than elsewhere.
    await chmod(dir, 0o755);
  });
  after(async () => {
    await server?.kill();
    await pg?.stop();
    redis?.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  });

  it("answers UNAVAILABLE while PostgreSQL is down and recovers by itself; keeps serving without Redis", async () => {
    // A PostgreSQL and a Redis of this test's own, so that stopping them disturbs nothing else.
    const pgPort = await freePort();
    const logger = createLogger("silent");
    pg = await EmbeddedPostgres.start(path.join(dir, "pg"), pgPort, logger);
    const redisPort = await freePort();
    const startRedis = () => spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    redis = startRedis();
    await eventually("redis", async () => isListening(redisPort));

    const port = await freePort();
    server = spawnServer(
      serverEnv({ DATABASE_URL: pg.url, REDIS_URL: `redis://127.0.0.1:${redisPort}`, REDIS_KEY_PREFIX: `faults-${randomBytes(3).toString("hex")}:`, PORT: String(port), BIND_ADDRESS: "127.0.0.1", REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN, LOG_LEVEL: "info", DATA_DIR: path.join(dir, "data") }),
    );
    await server.listening(30_000);
    const api = clients(`http://127.0.0.1:${port}`);
    const hosts = api.client(HostService);
    await hosts.createHost({ name: "before-outage", address: "10.0.0.1" });

    await pg.stop();
    assert.equal(await code(hosts.listHosts({})), "Unavailable");
    assert.equal(await code(hosts.createHost({ name: "during-outage", address: "10.0.0.2" })), "Unavailable");

    pg = await EmbeddedPostgres.start(path.join(dir, "pg"), pgPort, logger);
    const names = await eventually("the server answering again", async () => (await hosts.listHosts({})).hosts.map((h) => h.name));
    assert.deepEqual(names, ["before-outage"], "nothing half-written by the refused call");

    // Redis away: a single replica does not need it.
    redis.kill("SIGKILL");
    await eventually("redis gone", async () => !(await isListening(redisPort)));
    await api.client(WorkspaceService).createWorkspace({ name: "without-redis" });
    assert.equal((await hosts.listHosts({})).hosts.length, 1);
    redis = startRedis();
    await eventually("redis back", async () => isListening(redisPort));
    await api.client(WorkspaceService).createWorkspace({ name: "with-redis-again" });
  });
});
