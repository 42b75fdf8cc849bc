import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
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

  async function until<T>(what: string, check: () => Promise<T | undefined | false>): Promise<T> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const got = await check();
      if (got) return got;
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
      await Promise.all([a.app.maintain(), b.app.maintain()]);
      await new Promise((r) => setTimeout(r, 30));
    }
  }

  before(async () => {
    a = await startTestServer({ env, clock });
    b = await startTestServer({ env, clock, db: a.db });
    await b.app.maintain(); // B most likely leads: A's agent then gets its commands through Redis
    const host = await a.client(HostService).createHost({ name: "replica-host", address: "10.7.0.1" });
    hostId = host.host!.id;
    agent = new WorkloadAgent(a, host.agentToken, hostId, [{ index: 0, uuid: "GPU-replica-0" }, { index: 1, uuid: "GPU-replica-1" }]);
    await agent.welcome;
  });
  after(async () => {
    await agent?.close();
    await b?.close();
    await a?.close();
  });

  it("runs an environment created through B on the agent connected to A, and watchers on both replicas see it", async () => {
    const ws = (await b.client(WorkspaceService).createWorkspace({ name: "replicated" })).workspace!.id;
    const seen = { a: [] as string[], b: [] as string[] };
    const abort = new AbortController();
    for (const [name, server] of [["a", a], ["b", b]] as const) {
      void (async () => {
        for await (const ev of server.client(EnvironmentService).watchEnvironments({ workspaceId: ws }, { signal: abort.signal })) {
          if (ev.environment) seen[name].push(EnvironmentStatus[ev.environment.status]);
        }
      })().catch(() => undefined);
    }
    await new Promise((r) => setTimeout(r, 200)); // both watches open

    const created = (await b.client(EnvironmentService).createEnvironment({ workspaceId: ws, name: "everywhere", image: "img", command: ["x"], gpuCount: 1 })).environment!;
    await until("RUNNING, read through B", async () => (await b.client(EnvironmentService).getEnvironment({ id: created.id })).environment?.status === EnvironmentStatus.RUNNING);
    assert.ok(agent.running.has(created.id), "the agent on A runs it");
    await until("both watchers to see it RUNNING", async () => seen.a.includes("RUNNING") && seen.b.includes("RUNNING"));

    await a.client(EnvironmentService).deleteEnvironment({ id: created.id });
    await until("both watchers to see it deleted", async () => seen.a.includes("DELETED") && seen.b.includes("DELETED"));
    assert.ok(!agent.running.has(created.id));
    abort.abort();
  });

  it("streams live telemetry of an agent on A to a watcher on B", async () => {
    const abort = new AbortController();
    const utilisations: number[] = [];
    void (async () => {
      for await (const ev of b.client(GpuService).watchGpuTelemetry({ hostId }, { signal: abort.signal })) {
        for (const s of [ev.sample!]) utilisations.push(s.metrics?.gpuUtilizationPercent ?? -1);
      }
    })().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    await agent.beat([{ uuid: "GPU-replica-0", index: 0, util: 77 }]);
    await until("the sample on B", async () => utilisations.includes(77));
    abort.abort();
  });
});
