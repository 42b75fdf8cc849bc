import { strict as assert } from "node:assert";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { freePort, serverEnv, spawnServer, type ServerProcess } from "../support/child.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { ADMIN_TOKEN, clients } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

describe("e2e: the control plane SIGKILLed while creating environments", function () {
  this.timeout(90_000);
  let db: TestDatabase;
  const spawned: ServerProcess[] = [];
  const agents: WorkloadAgent[] = [];

  before(async () => {
    db = await createTestDatabase();
  });
  after(async () => {
    for (const a of agents) await a.close();
    for (const s of spawned) await s.kill();
    await db.drop();
  });

  it("converges after a restart: every environment RUNNING or FAILED, nothing leaked, the agent runs exactly the RUNNING ones", async () => {
    const port = await freePort();
    const start = async () => {
      const s = spawnServer(
        serverEnv({
          DATABASE_URL: db.url,
          PORT: String(port),
          BIND_ADDRESS: "127.0.0.1",
          REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
          LOG_LEVEL: "info",
          HOST_PORT_RANGE: "41000-41999",
        }),
      );
      spawned.push(s);
      await s.listening(30_000);
      return s;
    };
    const api = clients(`http://127.0.0.1:${port}`);
    const first = await start();
    const host = await api.client(HostService).createHost({ name: "crash-host", address: "10.4.0.1" });
    const gpus = Array.from({ length: 8 }, (_, i) => ({ index: i, uuid: `GPU-crash-${i}` }));
    const agent = new WorkloadAgent(api, host.agentToken, host.host!.id, gpus);
    agents.push(agent);
    await agent.welcome;
    const ws = (await api.client(WorkspaceService).createWorkspace({ name: "crash-team" })).workspace!.id;

    // Creations in flight when the server dies: each commits whole or not at all.
    const envs = api.client(EnvironmentService);
    let answered = 0;
    const inFlight = Array.from({ length: 60 }, (_, i) =>
      envs
        .createEnvironment({
          workspaceId: ws,
          name: `c${i}`,
          image: "img",
          command: ["x"],
          gpuCount: i % 2,
          ports: [{ name: "web", containerPort: 80 }],
        })
        .catch(() => undefined)
        .finally(() => answered++),
    );
    while (answered < 20 || agent.running.size < 5) await new Promise((r) => setTimeout(r, 5));
    first.child.kill("SIGKILL");
    await first.exited(10_000);
    await Promise.all(inFlight);

    await start();
    // The agent reconnects with what it runs; the old stream died with the server.
    const back = new WorkloadAgent(api, host.agentToken, host.host!.id, gpus, agent.running);
    agents.push(back);
    await back.welcome;

    const deadline = Date.now() + 60_000;
    let all: Awaited<ReturnType<typeof envs.listEnvironments>>["environments"] = [];
    for (;;) {
      all = (await envs.listEnvironments({ workspaceId: ws, pageSize: 1000 })).environments;
      if (all.every((e) => e.status === EnvironmentStatus.RUNNING || e.status === EnvironmentStatus.FAILED)) break;
      if (Date.now() > deadline) assert.fail(`not converged: ${all.map((e) => `${e.name}=${EnvironmentStatus[e.status]}`).join(" ")}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(all.length >= 20, "the creations answered before the kill committed");

    const running = all.filter((e) => e.status === EnvironmentStatus.RUNNING);
    for (const e of all.filter((e) => e.status === EnvironmentStatus.FAILED)) {
      const hostPorts = e.portMappings.filter((p) => p.hostPort > 0);
      assert.deepEqual([e.gpuIds, hostPorts], [[], []], `FAILED ${e.name} holds nothing`);
    }
    for (const e of running) assert.equal(e.gpuIds.length, Number(e.name.slice(1)) % 2, `${e.name} holds its GPUs`);
    // Exactly the RUNNING ones run on the host, each at the generation the database has.
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual([...back.running.keys()].sort(), running.map((e) => e.id).sort());
    const usage = (await api.client(WorkspaceService).getUsage({ workspaceId: ws })).usage!;
    assert.equal(
      usage.gpus,
      running.reduce((n, e) => n + e.gpuIds.length, 0),
      "GPU usage is what RUNNING environments hold",
    );
  });
});
