import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { freePort, isListening } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

describe("two replicas sharing PostgreSQL and Redis", () => {
  const env = { REDIS_URL, REDIS_KEY_PREFIX: `remotegpu-test-${randomBytes(4).toString("hex")}:` };
  const clock = new ManualClock(new Date());
  let a: TestServer;
  let b: TestServer;
  let agent: WorkloadAgent;
  let hostId: string;

  /** Waits for `check`, running both replicas' background rounds between tries (their clock is manual). */
  const until = <T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>) =>
    eventually(what, check, { ms: 15_000, everyMs: 30, between: () => Promise.all([a.app.maintain(), b.app.maintain()]) });

  before(async () => {
    a = await startTestServer({ env, clock });
    b = await startTestServer({ env, clock, db: a.db });
    await b.app.maintain(); // B most likely leads: A's agent then gets its commands through Redis
    const host = await a.client(HostService).createHost({ name: "replica-host", address: "10.7.0.1" });
    hostId = host.host!.id;
    agent = new WorkloadAgent(a, host.agentToken, hostId, [
      { index: 0, uuid: "GPU-replica-0" },
      { index: 1, uuid: "GPU-replica-1" },
    ]);
    await agent.welcome;
  });
  after(async () => {
    await agent?.close();
    await b?.close();
    await a?.close();
  });

  it("runs an environment created through B on the agent connected to A, and watchers on both replicas see it", async () => {
    const ws = (await b.client(WorkspaceService).createWorkspace({ name: "replicated" })).workspace!.id;
    // One environment is there before the watches open: each shows it first, so a watch that did is open.
    const anchor = (await a.client(EnvironmentService).createEnvironment({ workspaceId: ws, name: "anchor", image: "img", command: ["x"] }))
      .environment!;
    const seen = { a: [] as string[], b: [] as string[] };
    const abort = new AbortController();
    for (const [name, server] of [
      ["a", a],
      ["b", b],
    ] as const) {
      void (async () => {
        for await (const ev of server.client(EnvironmentService).watchEnvironments({ workspaceId: ws }, { signal: abort.signal })) {
          if (ev.environment) seen[name].push(`${ev.environment.name} ${EnvironmentStatus[ev.environment.status]}`);
        }
      })().catch(() => undefined);
    }
    await eventually("both watches open", () => seen.a.length > 0 && seen.b.length > 0);

    const created = (
      await b
        .client(EnvironmentService)
        .createEnvironment({ workspaceId: ws, name: "everywhere", image: "img", command: ["x"], gpuCount: 1 })
    ).environment!;
    await until(
      "RUNNING, read through B",
      async () => (await b.client(EnvironmentService).getEnvironment({ id: created.id })).environment?.status === EnvironmentStatus.RUNNING,
    );
    assert.ok(agent.running.has(created.id), "the agent on A runs it");
    await until("both watchers to see it RUNNING", () => seen.a.includes("everywhere RUNNING") && seen.b.includes("everywhere RUNNING"));

    await a.client(EnvironmentService).deleteEnvironment({ id: created.id });
    await until("both watchers to see it deleted", () => seen.a.includes("everywhere DELETED") && seen.b.includes("everywhere DELETED"));
    assert.ok(!agent.running.has(created.id));
    abort.abort();
    await a.client(EnvironmentService).deleteEnvironment({ id: anchor.id });
    await until(
      "the anchor gone",
      async () => (await a.client(EnvironmentService).listEnvironments({ workspaceId: ws })).environments.length === 0,
    );
  });

  it("streams live telemetry of an agent on A to a watcher on B", async () => {
    const abort = new AbortController();
    const utilisations: number[] = [];
    void (async () => {
      for await (const ev of b.client(GpuService).watchGpuTelemetry({ hostId }, { signal: abort.signal })) {
        for (const s of [ev.sample!]) utilisations.push(s.metrics?.gpuUtilizationPercent ?? -1);
      }
    })().catch(() => undefined);
    // The watch has no first event to show it is open: the agent reports until B's watcher hears it.
    await until("the sample on B", async () => {
      await agent.beat([{ uuid: "GPU-replica-0", index: 0, util: 77 }]);
      return utilisations.includes(77);
    });
    abort.abort();
  });
  it("sends commands to the replica an agent moved to, not down the connection it left on another", async () => {
    const { host, agentToken } = await a.client(HostService).createHost({ name: "moving-host", address: "10.7.0.3" });
    const gpus = [{ index: 0, uuid: "GPU-moving-0", model: "NVIDIA A100-SXM4-80GB" }];
    const ws = (await a.client(WorkspaceService).createWorkspace({ name: "moving" })).workspace!.id;
    // The agent moves twice (B → A → B) while each old connection stays open, as one that went
    // silent would; one of the two replicas leads and would otherwise send down the stale one.
    let current = new WorkloadAgent(b, agentToken, host!.id, gpus);
    await current.welcome;
    for (const [n, to] of [
      [1, a],
      [2, b],
    ] as const) {
      const stale = current;
      current = new WorkloadAgent(to, agentToken, host!.id, gpus, stale.running);
      await current.welcome;
      const created = (
        await b.client(EnvironmentService).createEnvironment({
          workspaceId: ws,
          name: `moved-${n}`,
          image: "img",
          command: ["x"],
          gpuCount: 1,
          gpuModel: "NVIDIA A100-SXM4-80GB",
        })
      ).environment!;
      await until(`moved-${n} running on the agent's new connection`, async () => current.running.has(created.id));
      assert.ok(!stale.running.has(created.id), "nothing went down the connection the agent left");
      await b.client(EnvironmentService).deleteEnvironment({ id: created.id });
      await until(
        `moved-${n} gone`,
        async () => (await b.client(EnvironmentService).listEnvironments({ workspaceId: ws })).environments.length === 0,
      );
      await stale.close();
    }
    await current.close();
  });

  it("ends the stream of an agent on A when its host is deleted through B", async () => {
    const { host, agentToken } = await a.client(HostService).createHost({ name: "deleted-elsewhere", address: "10.7.0.4" });
    const doomed = new WorkloadAgent(a, agentToken, host!.id, [{ index: 0, uuid: "GPU-doomed-0" }]);
    await doomed.welcome;
    await b.client(HostService).deleteHost({ id: host!.id });
    let ended = false;
    void doomed.ended.then(() => (ended = true));
    await until("the stream on A ended", () => ended);
  });

  it("shows a watcher on B what happened to a host on A: an operator's cordon, the leader's lease expiry, the agent's return", async () => {
    const abort = new AbortController();
    const seen = { a: [] as string[], b: [] as string[] };
    for (const [name, server] of [
      ["a", a],
      ["b", b],
    ] as const) {
      void (async () => {
        for await (const ev of server.client(HostService).watchHosts({ hostId }, { signal: abort.signal })) {
          seen[name].push(`${HostStatus[ev.host!.status]}${ev.host!.schedulable ? "" : "/cordoned"}`);
        }
      })().catch(() => undefined);
    }
    await until("both watches open", async () => seen.a.length > 0 && seen.b.length > 0);

    await a.client(HostService).cordonHost({ id: hostId });
    await until("B to see the cordon made through A", async () => seen.b.includes("ONLINE/cordoned"));
    await a.client(HostService).uncordonHost({ id: hostId });

    // Only the leader expires leases; whichever it is, both replicas' watchers hear of it.
    clock.advance(120_000);
    await until("both to see the host OFFLINE", async () => seen.a.includes("OFFLINE") && seen.b.includes("OFFLINE"));
    await agent.beat();
    await until("both to see it ONLINE again", async () => seen.a.at(-1) === "ONLINE" && seen.b.at(-1) === "ONLINE");
    abort.abort();
  });
});

describe("two replicas when Redis goes away and comes back", function () {
  this.timeout(60_000);
  // A Redis of this test's own, so that stopping it disturbs nothing else.
  let redisPort: number;
  let redis: ChildProcess | undefined;
  let a: TestServer;
  let b: TestServer;
  let agent: WorkloadAgent;
  let hostId: string;
  const startRedis = async () => {
    redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    await eventually("redis up", async () => isListening(redisPort));
  };

  before(async () => {
    redisPort = await freePort();
    await startRedis();
    const env = { REDIS_URL: `redis://127.0.0.1:${redisPort}` };
    a = await startTestServer({ env });
    b = await startTestServer({ env, db: a.db });
    await b.app.maintain(); // B most likely leads: A's agent then gets its commands through Redis
    const host = await a.client(HostService).createHost({ name: "outage-host", address: "10.7.0.2" });
    hostId = host.host!.id;
    agent = new WorkloadAgent(a, host.agentToken, hostId, [{ index: 0, uuid: "GPU-outage-0" }]);
    await agent.welcome;
  });
  after(async () => {
    await agent?.close();
    await b?.close();
    await a?.close();
    redis?.kill("SIGKILL");
  });

  it("keeps each replica serving without Redis, tells watchers that may have missed changes to watch again, and fans out again once Redis is back", async () => {
    const watch = (server: TestServer) => {
      const seen: string[] = [];
      const abort = new AbortController();
      const watcher = { seen, abort, done: false, ended: Promise.resolve("") };
      watcher.ended = (async () => {
        for await (const ev of server.client(HostService).watchHosts({ hostId }, { signal: abort.signal }))
          seen.push(ev.host!.schedulable ? "open" : "cordoned");
      })()
        .then(
          () => "ended",
          (e: unknown) => Code[ConnectError.from(e).code],
        )
        .finally(() => (watcher.done = true));
      return watcher;
    };
    const before = watch(b);
    await eventually("the watch open", async () => before.seen.length > 0);

    redis!.kill("SIGKILL");
    await eventually("redis gone", async () => !(await isListening(redisPort)));
    // Each replica goes on by itself: the cordon through A is made, and read back through B from PostgreSQL.
    await a.client(HostService).cordonHost({ id: hostId });
    assert.equal((await b.client(HostService).getHost({ id: hostId })).host!.schedulable, false);
    assert.ok(!before.seen.includes("cordoned"), "B's watcher cannot hear of A's change while Redis is away");

    await startRedis();
    assert.equal(await before.ended, "Unavailable", "the watcher that missed a change is told to watch again");

    // Fan-out works again: a new watcher on B hears of A's changes, and B's commands reach A's agent.
    let after = watch(b);
    await eventually("the new watch open", async () => after.seen.length > 0);
    assert.deepEqual(after.seen, ["cordoned"], "watching again starts from the current state");
    await eventually("A's uncordon reaching B's watcher", async () => {
      // A's connections may come back after B's, and the gap A then announces ends this watcher too:
      // it watches again, as a client does.
      if (after.done) after = watch(b);
      await a.client(HostService).uncordonHost({ id: hostId }); // repeated: B may still be re-subscribing
      return after.seen.length > 1 && after.seen.at(-1) === "open"; // heard from A, not only read at the start
    });
    after.abort.abort();
    const ws = (await b.client(WorkspaceService).createWorkspace({ name: "after-outage" })).workspace!.id;
    const created = (
      await b
        .client(EnvironmentService)
        .createEnvironment({ workspaceId: ws, name: "after-outage", image: "img", command: ["x"], gpuCount: 1 })
    ).environment!;
    await eventually("the environment running on A's agent", async () => {
      await Promise.all([a.app.maintain(), b.app.maintain()]);
      return agent.running.has(created.id);
    });
  });
});
