import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { EmbeddedPostgres } from "../../src/platform/embedded-postgres.js";
import { createLogger } from "../../src/platform/logger.js";
import { freePort, isListening, serverEnv, spawnServer, type ServerProcess } from "../support/child.js";
import { ADMIN_TOKEN, clients } from "../support/server.js";
import { eventually } from "../support/eventually.js";
import { WorkloadAgent } from "../support/workload-agent.js";

const code = (p: Promise<unknown>) =>
  p.then(
    () => "OK",
    (e: unknown) => Code[ConnectError.from(e).code],
  );

describe("e2e: PostgreSQL and Redis go away and come back", function () {
  this.timeout(120_000);
  let dir: string;
  let server: ServerProcess | undefined;
  let pg: EmbeddedPostgres | undefined;
  let redis: ChildProcess | undefined;
  let agent: WorkloadAgent | undefined;
  let loading = false; // the load of the test below; stopped here too if the test fails midway

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "remotegpu-faults-"));
    // As root, PostgreSQL runs as the postgres user: keep its cluster here (and removed with it) rather than elsewhere.
    await chmod(dir, 0o755);
  });
  after(async () => {
    loading = false;
    await agent?.close();
    await server?.kill();
    await pg?.stop();
    redis?.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  });

  it("answers UNAVAILABLE while PostgreSQL is down under load and recovers by itself, no invariant broken; keeps serving without Redis", async () => {
    // A PostgreSQL and a Redis of this test's own, so that stopping them disturbs nothing else.
    const pgPort = await freePort();
    const logger = createLogger("silent");
    pg = await EmbeddedPostgres.start(path.join(dir, "pg"), pgPort, logger);
    const redisPort = await freePort();
    const startRedis = () =>
      spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    redis = startRedis();
    await eventually("redis", async () => isListening(redisPort));

    const port = await freePort();
    server = spawnServer(
      serverEnv({
        DATABASE_URL: pg.url,
        REDIS_URL: `redis://127.0.0.1:${redisPort}`,
        REDIS_KEY_PREFIX: `faults-${randomBytes(3).toString("hex")}:`,
        PORT: String(port),
        BIND_ADDRESS: "127.0.0.1",
        REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
        LOG_LEVEL: "info",
        DATA_DIR: path.join(dir, "data"),
      }),
    );
    await server.listening(30_000);
    const api = clients(`http://127.0.0.1:${port}`);
    const hosts = api.client(HostService);
    const envs = api.client(EnvironmentService);
    const { host, agentToken } = await hosts.createHost({ name: "before-outage", address: "10.0.0.1" });
    const gpus = Array.from({ length: 4 }, (_, i) => ({ index: i, uuid: `GPU-faults-${i}` }));
    agent = new WorkloadAgent(api, agentToken, host!.id, gpus);
    await agent.welcome;
    const ws = (await api.client(WorkspaceService).createWorkspace({ name: "under-load" })).workspace!.id;

    // Load through the outage: the agent beats (and reconnects, as the real one does, when a status
    // report it sent could not be recorded and its stream ended), four callers create and delete.
    // The pauses below pace the load (a heartbeat period, a caller's backoff after a refusal); the
    // test waits on what the load did, never on the clock.
    const codes = new Map<string, number>();
    const answered = [0, 0, 0, 0]; // per caller
    let acked = 0;
    let beats = 0; // heartbeats answered one way or the other (acked, or the stream ended)
    loading = true;
    const load = [
      (async () => {
        while (loading) {
          const current: WorkloadAgent = agent!;
          const beat = await Promise.race([current.beat().then(() => true), current.ended.then(() => false)]);
          beats++;
          if (beat) acked++;
          else agent = new WorkloadAgent(api, agentToken, host!.id, gpus, current.running);
          await new Promise((r) => setTimeout(r, 100));
        }
      })(),
      ...answered.map(async (_, w) => {
        for (let i = 0; loading; i++) {
          const outcome = await code(
            envs
              .createEnvironment({ workspaceId: ws, name: `w${w}-${i}`, image: "img", command: ["x"], gpuCount: 1 })
              .then(async ({ environment }) => void (await envs.deleteEnvironment({ id: environment!.id }).catch(() => undefined))),
          );
          codes.set(outcome, (codes.get(outcome) ?? 0) + 1);
          answered[w]!++;
          if (outcome !== "OK") await new Promise((r) => setTimeout(r, 50));
        }
      }),
    ];
    await eventually("some creations through", async () => (codes.get("OK") ?? 0) >= 4);

    await pg.stop();
    const atStop = { answered: [...answered], unavailable: codes.get("Unavailable") ?? 0, beats };
    assert.equal(await code(hosts.listHosts({})), "Unavailable");
    assert.equal(await code(hosts.createHost({ name: "during-outage", address: "10.0.0.2" })), "Unavailable");
    // The load meets the outage: every caller has had two answers since it began (so at least one
    // call started during it), refusals among them, and the agent has gone on beating.
    const refused = () => (codes.get("Unavailable") ?? 0) - atStop.unavailable;
    await eventually(
      "the load to meet the outage",
      () => answered.every((n, w) => n >= atStop.answered[w]! + 2) && refused() >= 4 && beats >= atStop.beats + 5,
      { ms: 30_000, everyMs: 20 },
    );

    pg = await EmbeddedPostgres.start(path.join(dir, "pg"), pgPort, logger);
    const names = await eventually("the server answering again", async () => (await hosts.listHosts({})).hosts.map((h) => h.name));
    assert.deepEqual(names, ["before-outage"], "nothing half-written by the refused call");
    const okBefore = codes.get("OK") ?? 0;
    const ackedBefore = acked;
    await eventually(
      "creations going through again, heartbeats acked again",
      async () => (codes.get("OK") ?? 0) >= okBefore + 4 && acked >= ackedBefore + 5,
    );
    loading = false;
    await Promise.all(load);
    assert.ok((codes.get("Unavailable") ?? 0) > 0, "the outage was felt");
    const unexpected = [...codes.keys()].filter(
      (c) => !["OK", "Unavailable", "ResourceExhausted", "Aborted", "FailedPrecondition", "NotFound"].includes(c),
    );
    assert.deepEqual(unexpected, [], `answers: ${JSON.stringify(Object.fromEntries(codes))}`);

    // Settled: what is held is held once, by what runs, and the agent runs exactly that.
    const settled = await eventually("no environment in between", async () => {
      const all = (await envs.listEnvironments({ workspaceId: ws, pageSize: 1000 })).environments;
      return all.every((e) => e.status === EnvironmentStatus.RUNNING || e.status === EnvironmentStatus.FAILED) && all;
    });
    const held = settled.flatMap((e) => e.gpuIds);
    assert.equal(new Set(held).size, held.length, "no GPU held twice");
    for (const e of settled.filter((e) => e.status === EnvironmentStatus.FAILED))
      assert.deepEqual(e.gpuIds, [], `FAILED ${e.name} holds nothing`);
    const running = settled.filter((e) => e.status === EnvironmentStatus.RUNNING).map((e) => e.id);
    await eventually(
      "the agent running exactly the RUNNING environments",
      async () => [...agent!.running.keys()].sort().join() === running.sort().join(),
    );
    assert.equal((await hosts.getHost({ id: host!.id })).host!.status, HostStatus.ONLINE, "the host never went OFFLINE");

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
