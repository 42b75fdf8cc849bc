import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import {
  agentTempDir,
  ROOT,
  agentArgv,
  freePort,
  serverEnv,
  simulatedAgentFlags,
  spawnServer,
  type ServerProcess,
} from "../support/child.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { ADMIN_TOKEN, clients } from "../support/server.js";
import { eventually } from "../support/eventually.js";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

describe("e2e: two server processes; the one holding the agent and the leadership is killed", function () {
  this.timeout(120_000);
  let db: TestDatabase;
  let dataDir: string;
  const servers: ServerProcess[] = [];
  let agent: ChildProcess | undefined;

  before(async () => {
    db = await createTestDatabase();
    dataDir = await agentTempDir("remotegpu-failover-");
  });
  after(async () => {
    agent?.kill("SIGKILL");
    for (const s of servers) await s.kill();
    await db.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("the agent moves to the survivor, leadership follows, and the environment keeps running, not started twice", async () => {
    const prefix = `remotegpu-failover-${randomBytes(4).toString("hex")}:`;
    const [portA, portB, appPort] = [await freePort(), await freePort(), await freePort()];
    const start = async (port: number) => {
      const s = spawnServer(
        serverEnv({
          DATABASE_URL: db.url,
          REDIS_URL,
          REDIS_KEY_PREFIX: prefix,
          PORT: String(port),
          BIND_ADDRESS: "127.0.0.1",
          REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
          LOG_LEVEL: "info",
          HEARTBEAT_INTERVAL_SECONDS: "1",
          HOST_GRACE_SECONDS: "5",
          HOST_PORT_RANGE: `${appPort}-${appPort}`,
          DATA_DIR: path.join(dataDir, `server-${port}`),
        }),
      );
      servers.push(s);
      await s.listening(30_000);
      return s;
    };
    const a = await start(portA);
    await eventually("A to lead", async () => a.stdout().includes("now leads background reconciliation"));
    await start(portB);
    const apiB = clients(`http://127.0.0.1:${portB}`);

    const { host, agentToken } = await apiB.client(HostService).createHost({ name: "failover-host", address: "127.0.0.1" });
    agent = spawn(
      process.execPath,
      agentArgv(
        simulatedAgentFlags({
          server: `http://127.0.0.1:${portA},http://127.0.0.1:${portB}`,
          hostId: host!.id,
          token: agentToken,
          gpus: 2,
          dataDir: path.join(dataDir, "agent"),
        }),
      ),
      { cwd: ROOT, stdio: ["ignore", "ignore", "ignore"] },
    );
    await eventually(
      "the host ONLINE",
      async () => (await apiB.client(HostService).getHost({ id: host!.id })).host?.status === HostStatus.ONLINE,
    );
    assert.ok(a.stdout().includes('"agent connected"'), "the agent's stream is on A");

    // A watcher on B sees the live telemetry of the agent whose stream A holds.
    const watching = new AbortController();
    for await (const ev of apiB.client(GpuService).watchGpuTelemetry({ hostId: host!.id }, { signal: watching.signal })) {
      assert.ok(ev.sample?.gpuUuid.startsWith("GPU-"), "a sample of one of the host's GPUs");
      break;
    }
    watching.abort();

    // Created through B; the leader (A) sends it to the agent, whose stream A holds.
    const ws = (await apiB.client(WorkspaceService).createWorkspace({ name: "failover" })).workspace!.id;
    const envs = apiB.client(EnvironmentService);
    const containerPort = await freePort();
    const created = (
      await envs.createEnvironment({
        workspaceId: ws,
        name: "survivor",
        image: "img",
        command: ["sh", "-c", `echo started >> starts.log; exec python3 -m http.server ${containerPort} --bind 127.0.0.1`],
        gpuCount: 1,
        ports: [{ name: "http", containerPort }],
      })
    ).environment!;
    await eventually(
      "RUNNING",
      async () => (await envs.getEnvironment({ id: created.id })).environment?.status === EnvironmentStatus.RUNNING,
    );
    assert.equal((await fetch(`http://127.0.0.1:${appPort}/starts.log`)).status, 200);

    a.child.kill("SIGKILL");
    await a.exited(10_000);
    const b = servers[1]!;
    await eventually("B to lead", async () => b.stdout().includes("now leads background reconciliation"));
    await eventually("the agent on B", async () => b.stdout().includes('"agent connected"'));

    // Reconcile passes on B with the agent on B's stream: an environment created now gets to RUNNING
    // only through them (a pass sends the run, the agent's report kicks another), and every pass
    // looks at the first environment too.
    const later = { workspaceId: ws, name: "after-failover", image: "img", command: ["sleep", "600"], gpuCount: 1 };
    const laterId = (await envs.createEnvironment(later)).environment!.id;
    const status = async (id: string) => (await envs.getEnvironment({ id })).environment?.status;
    await eventually(
      "an environment created after the failover RUNNING",
      async () => (await status(laterId)) === EnvironmentStatus.RUNNING,
    );
    // After those passes: still RUNNING, still serving, started once.
    const after = (await envs.getEnvironment({ id: created.id })).environment!;
    assert.equal(EnvironmentStatus[after.status], "RUNNING", after.statusMessage);
    assert.equal((await fetch(`http://127.0.0.1:${appPort}/starts.log`)).status, 200);
    const starts = await readFile(path.join(dataDir, "agent", "environments", created.id, "volume", "starts.log"), "utf8");
    assert.equal(starts.trim().split("\n").length, 1, "the workload was never started a second time");

    // And B drives it: a stop goes through to the agent.
    await envs.stopEnvironment({ id: created.id });
    await envs.stopEnvironment({ id: laterId });
    for (const id of [created.id, laterId])
      await eventually("STOPPED through B", async () => (await status(id)) === EnvironmentStatus.STOPPED);
  });
});
