import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { promisify } from "node:util";
import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { EnvironmentService, EnvironmentStatus, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { agentTempDir, ROOT, agentArgv, freePort, isListening, publishablePorts, simulatedAgentFlags } from "../support/child.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { systemClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { preparePodman, TEST_IMAGE } from "../support/podman.js";

const execFileP = promisify(execFile);

describe("e2e: environments run for real by the agent (processes and podman containers, simulated GPUs)", function () {
  this.timeout(90_000);
  let server: TestServer;
  let dataDir: string;
  let agent: ChildProcess | undefined;
  let agentErr = "";

  before(async () => {
    dataDir = await agentTempDir("remotegpu-agent-");
    const first = await publishablePorts(10); // host ports of its environments, containers' included
    server = await startTestServer({
      clock: systemClock,
      env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5", HOST_PORT_RANGE: `${first}-${first + 9}` },
    });
  });
  after(async () => {
    agent?.kill("SIGKILL");
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** Starts the agent (again) with `flags`; its stderr collects in agentErr. */
  function startAgent(flags: string[]): ChildProcess {
    agent = spawn(process.execPath, agentArgv(flags), { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] });
    agent.stderr!.setEncoding("utf8").on("data", (c: string) => (agentErr += c));
    return agent;
  }

  async function killAgent(signal: NodeJS.Signals): Promise<void> {
    const exited = new Promise((resolve) => agent!.once("exit", resolve));
    agent!.kill(signal);
    await exited;
    agent = undefined;
  }

  it("serves HTTP on its mapped port, logs, stops (GPUs free), starts again, and deletes (port closed, volume gone)", async () => {
    const { host, agentToken } = await server.client(HostService).createHost({ name: "real-agent", address: "127.0.0.1" });
    startAgent(simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 4, dataDir }));
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

    const exited = new Promise((resolve) => agent!.once("exit", resolve));
    agent!.kill("SIGTERM");
    assert.equal(await exited, 0, agentErr.slice(-2000));
    agent = undefined;
  });

  it("survives kill -9 of its agent: the restarted agent adopts every workload, one of each, serving, logs continuous; ports change without a restart", async () => {
    const { host, agentToken } = await server.client(HostService).createHost({ name: "crashing-agent", address: "127.0.0.1" });
    const flags = simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 2, dataDir });
    startAgent(flags);
    const gpus = server.client(GpuService);
    await eventually("the agent's GPUs", async () => (await gpus.listGpus({ hostId: host!.id, freeOnly: true })).gpus.length === 2);
    const workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "crash-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const containerPort = await freePort();
    // Serves HTTP on $PORT and prints a numbered line every 100 ms.
    const ticker = `import http.server, os, threading, time
def tick():
    n = 0
    while True:
        print(f"tick {n}", flush=True); n += 1; time.sleep(0.1)
threading.Thread(target=tick, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()`;
    const web = (
      await envs.createEnvironment({
        workspaceId,
        name: "web",
        image: "python:3.12",
        command: ["python3", "-c", ticker],
        gpuCount: 1,
        ports: [{ name: "http", containerPort, protocol: PortProtocol.HTTP }],
      })
    ).environment!;
    const sleeper = (await envs.createEnvironment({ workspaceId, name: "sleeper", image: "x", command: ["sleep", "600"] })).environment!;
    const running = (id: string) =>
      eventually(`${id} RUNNING\n${agentErr.slice(-2000)}`, async () => {
        const e = (await envs.getEnvironment({ id })).environment!;
        last = `${EnvironmentStatus[e.status]} ${e.statusMessage}`;
        return e.status === EnvironmentStatus.RUNNING && e;
      }).catch((err: Error) => {
        throw new Error(`${err.message}; last: ${last}`);
      });
    let last = "";
    await running(web.id);
    await running(sleeper.id);
    const hostPort = web.portMappings[0]!.hostPort;
    const pids = () => [web.id, sleeper.id].map((id) => readState(id).trace.pid as number);
    const readState = (id: string) => JSON.parse(readFileSync(path.join(dataDir, "environments", id, "workload.json"), "utf8"));
    const before = pids();
    const ticks = async () => {
      const lines: string[] = [];
      for await (const r of envs.streamLogs({ environmentId: web.id, tailLines: 10_000 })) lines.push(...r.lines.map((l) => l.text));
      return lines.filter((l) => l.startsWith("tick ")).map((l) => Number(l.slice(5)));
    };
    await eventually("some ticks", async () => (await ticks()).length >= 5);

    await killAgent("SIGKILL");
    assert.ok(pids().every(alive), "the workloads outlive the agent");
    await new Promise((r) => setTimeout(r, 1500)); // output nobody reads
    startAgent(flags);
    await eventually("HTTP through the new agent's forwarder", async () => (await fetch(`http://127.0.0.1:${hostPort}/`)).status === 200);
    const after = await eventually("fifty more ticks", async () => {
      const t = await ticks();
      return t.length >= 40 && t.at(-1)! > 40 && t;
    });
    assert.deepEqual(pids(), before, "the same processes: nothing started twice");
    assert.deepEqual(after, [...after.keys()], "every line once, in order, across the crash");
    for (const id of [web.id, sleeper.id]) {
      const e = (await envs.getEnvironment({ id })).environment!;
      assert.equal(e.status, EnvironmentStatus.RUNNING);
      const statuses = e.transitions.map((t) => EnvironmentStatus[t.status]);
      assert.ok(!statuses.includes("FAILED"), statuses.join(" "));
      assert.equal(statuses.at(-1), "RUNNING", statuses.join(" "));
      assert.equal(statuses.filter((s) => s === "RUNNING").length, 1, `started once: ${statuses.join(" ")}`);
    }

    // A port added and removed on the running environment: it runs on, the first port answers.
    const altPort = await freePort();
    await envs.addPortMapping({ environmentId: web.id, port: { name: "alt", containerPort: altPort } });
    await new Promise((r) => setTimeout(r, 1000));
    const withAlt = (await envs.getEnvironment({ id: web.id })).environment!;
    assert.equal(withAlt.status, EnvironmentStatus.RUNNING, withAlt.statusMessage);
    assert.deepEqual(withAlt.portMappings.map((p) => p.name).sort(), ["alt", "http"]);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200);
    const alt = withAlt.portMappings.find((p) => p.name === "alt")!;
    await envs.removePortMapping({ environmentId: web.id, portMappingId: alt.id });
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await envs.getEnvironment({ id: web.id })).environment!.status, EnvironmentStatus.RUNNING);
    assert.equal((await fetch(`http://127.0.0.1:${hostPort}/`)).status, 200);
    assert.deepEqual(pids(), before, "no restart for a port change in process mode");

    for (const id of [web.id, sleeper.id]) await envs.deleteEnvironment({ id });
    for (const pid of before) await eventually(`process ${pid} gone`, async () => !alive(pid));
    await killAgent("SIGTERM");
  });

  it("a rotated token: refused with its old one, the agent leaves the environment running; given the new file, it adopts it", async () => {
    const hosts = server.client(HostService);
    const { host, agentToken } = await hosts.createHost({ name: "rotated-agent", address: "127.0.0.1" });
    const tokenFile = path.join(dataDir, "agent-token");
    await writeFile(tokenFile, `${agentToken}\n`, { mode: 0o600 });
    const flags = simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: "", gpus: 1, dataDir });
    flags.splice(flags.indexOf("--token"), 2, "--token-file", tokenFile);
    startAgent(flags);
    await eventually("the host ONLINE", async () => (await hosts.getHost({ id: host!.id })).host!.status === HostStatus.ONLINE);
    // Hosts of the tests before may still be ONLINE (their agents just stopped, within the grace).
    for (const other of (await hosts.listHosts({})).hosts) if (other.id !== host!.id) await hosts.cordonHost({ id: other.id });
    const workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "rotation-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const env = (await envs.createEnvironment({ workspaceId, name: "steady", image: "x", command: ["sleep", "600"] })).environment!;
    await eventually("RUNNING", async () => (await envs.getEnvironment({ id: env.id })).environment!.status === EnvironmentStatus.RUNNING);
    const pid = () => JSON.parse(readFileSync(path.join(dataDir, "environments", env.id, "workload.json"), "utf8")).trace.pid as number;
    const first = pid();

    // Rotated with no grace: the old token is revoked at once. The agent, restarted on it, is refused.
    await killAgent("SIGTERM");
    const { agentToken: fresh } = await hosts.rotateHostToken({ hostId: host!.id, grace: { seconds: 0n, nanos: 0 } });
    agentErr = "";
    const refused = startAgent(flags);
    const code = await new Promise((resolve) => refused.once("exit", resolve));
    agent = undefined;
    assert.equal(code, 1);
    assert.match(agentErr, /token revoked; put the host's new token in place/);
    assert.ok(alive(first), "the environment runs on");

    await writeFile(tokenFile, `${fresh}\n`, { mode: 0o600 });
    startAgent(flags);
    const restarted = Date.now();
    await eventually("a heartbeat on the new token", async () => {
      const seen = (await hosts.getHost({ id: host!.id })).host!.lastHeartbeatTime;
      return seen !== undefined && Number(seen.seconds) * 1000 > restarted;
    });
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(pid(), first, "adopted: the same process");
    assert.equal((await envs.getEnvironment({ id: env.id })).environment!.status, EnvironmentStatus.RUNNING);
    await envs.deleteEnvironment({ id: env.id });
    await eventually(`process ${first} gone`, async () => !alive(first));
    await killAgent("SIGTERM");
  });

  it("runs an environment in a real podman container: HTTP on its mapped port, adopted after kill -9, removed on delete", async function () {
    this.timeout(120_000);
    await preparePodman();
    const { host, agentToken } = await server.client(HostService).createHost({ name: "container-agent", address: "127.0.0.1" });
    // Without --process-mode the agent runs what it finds: podman here.
    const flags = simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 0, dataDir }).filter(
      (f) => f !== "--process-mode",
    );
    startAgent(flags);
    await eventually(
      "the agent connected",
      async () => (await server.client(HostService).getHost({ id: host!.id })).host!.agentVersion !== "",
    );
    const workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "container-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const web = (
      await envs.createEnvironment({
        workspaceId,
        name: "web",
        image: TEST_IMAGE,
        command: ["sh", "-c", "echo served from $(pwd) > index.html; exec python3 -m http.server $PORT"],
        ports: [{ name: "http", containerPort: 8000, protocol: PortProtocol.HTTP }],
      })
    ).environment!;
    const running = () =>
      eventually(`RUNNING\n${agentErr.slice(-2000)}`, async () => {
        const e = (await envs.getEnvironment({ id: web.id })).environment!;
        return e.status === EnvironmentStatus.RUNNING && e;
      });
    await running();
    const url = `http://127.0.0.1:${web.portMappings[0]!.hostPort}/`;
    assert.equal(await (await fetch(url)).text(), "served from /workspace\n");
    const containerId = async () => (await execFileP("podman", ["container", "inspect", "--format", "{{.Id}}", `rgpu-${web.id}`])).stdout;
    const before = await containerId();

    await killAgent("SIGKILL");
    assert.equal((await fetch(url)).status, 200, "the container serves with no agent");
    startAgent(flags);
    await eventually(
      "the agent back",
      async () => (await server.client(HostService).getHost({ id: host!.id })).host!.status === HostStatus.ONLINE,
    );
    await new Promise((r) => setTimeout(r, 1500));
    const e = await running();
    assert.equal(await containerId(), before, "the same container");
    assert.equal(e.transitions.filter((t) => t.status === EnvironmentStatus.RUNNING).length, 1, "started once");

    await envs.deleteEnvironment({ id: web.id });
    await eventually("the container removed", async () => (await containerId().catch(() => "")) === "");
    await killAgent("SIGTERM");
  });
});

/** Whether the process exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}
