import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { EnvironmentService, EnvironmentStatus, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ROOT, agentArgv, freePort, isListening, simulatedAgentFlags } from "../support/child.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { systemClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";

describe("e2e: an environment run for real by the agent (process mode, simulated GPUs)", function () {
  this.timeout(90_000);
  let server: TestServer;
  let dataDir: string;
  let agent: ChildProcess | undefined;
  let agentErr = "";

  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), "remotegpu-agent-"));
    const first = await freePort();
    server = await startTestServer({
      clock: systemClock,
      env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5", HOST_PORT_RANGE: `${first}-${first}` },
    });
  });
  after(async () => {
    agent?.kill("SIGKILL");
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("serves HTTP on its mapped port, logs, stops (GPUs free), starts again, and deletes (port closed, volume gone)", async () => {
    const { host, agentToken } = await server.client(HostService).createHost({ name: "real-agent", address: "127.0.0.1" });
    agent = spawn(
      process.execPath,
      agentArgv(simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 4, dataDir })),
      { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] },
    );
    agent.stderr!.setEncoding("utf8").on("data", (c: string) => (agentErr += c));
    const gpus = server.client(GpuService);
    await eventually("the agent's 4 GPUs", async () => (await gpus.listGpus({ hostId: host!.id, freeOnly: true })).gpus.length === 4);

    const workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "real-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const containerPort = await freePort();
    const created = (
      await envs.createEnvironment({
        workspaceId,
        name: "web",
        image: "python:3.12",
        command: ["sh", "-c", `echo "gpus=$CUDA_VISIBLE_DEVICES"; exec python3 -m http.server ${containerPort} --bind 127.0.0.1`],
        gpuCount: 2,
        ports: [{ name: "http", containerPort, protocol: PortProtocol.HTTP }],
      })
    ).environment!;
    const hostPort = created.portMappings[0]!.hostPort;
    const status = (wanted: EnvironmentStatus) =>
      eventually(`${EnvironmentStatus[wanted]}\n${agentErr.slice(-2000)}`, async () => {
        const e = (await envs.getEnvironment({ id: created.id })).environment!;
        return e.status === wanted && e;
      });
    await status(EnvironmentStatus.RUNNING);

    const volume = path.join(dataDir, "environments", created.id, "volume");
    await writeFile(path.join(volume, "hello.txt"), "hello from the volume\n");
    const res = await fetch(`http://127.0.0.1:${hostPort}/hello.txt`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "hello from the volume\n");

    const logs = await eventually("the request and the GPUs in the logs", async () => {
      const lines: string[] = [];
      for await (const r of envs.streamLogs({ environmentId: created.id, tailLines: 100 })) lines.push(...r.lines.map((l) => l.text));
      return lines.some((l) => l.includes("GET /hello.txt")) && lines.some((l) => l.startsWith("gpus=GPU-")) && lines;
    });
    const visible = logs
      .find((l) => l.startsWith("gpus="))!
      .slice(5)
      .split(",");
    const allocated = await Promise.all(created.gpuIds.map(async (id) => (await gpus.getGpu({ id })).gpu!.uuid));
    assert.deepEqual(visible.sort(), allocated.sort(), "the process sees exactly its GPUs");

    await envs.stopEnvironment({ id: created.id });
    await status(EnvironmentStatus.STOPPED);
    assert.equal((await gpus.listGpus({ hostId: host!.id, freeOnly: true })).gpus.length, 4, "its GPUs are free again");
    assert.equal(await isListening(hostPort), false, "its port is closed");
    assert.ok(existsSync(path.join(volume, "hello.txt")), "its volume is kept");

    await envs.startEnvironment({ id: created.id });
    await status(EnvironmentStatus.RUNNING);
    const again = await eventually("HTTP after the start", async () => {
      const r = await fetch(`http://127.0.0.1:${hostPort}/hello.txt`);
      return r.status === 200 && r.text();
    });
    assert.equal(again, "hello from the volume\n");

    await envs.deleteEnvironment({ id: created.id });
    await eventually(
      "the environment gone",
      async () => (await envs.getEnvironment({ id: created.id }).catch(() => undefined)) === undefined,
    );
    assert.equal(await isListening(hostPort), false);
    await eventually("the volume removed", async () => !existsSync(path.join(dataDir, "environments", created.id)));

    agent.kill("SIGTERM");
    assert.equal(await new Promise((resolve) => agent!.once("exit", resolve)), 0, agentErr.slice(-2000));
    agent = undefined;
  });
});
