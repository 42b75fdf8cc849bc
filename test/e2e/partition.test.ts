import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { EnvironmentService, EnvironmentStatus, type Environment } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus, type Host } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import {
  agentTempDir,
  ROOT,
  agentArgv,
  freePort,
  serverEnv,
  spawnServer,
  type ServerProcess,
  simulatedAgentFlags,
} from "../support/child.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { eventually } from "../support/eventually.js";
import { ADMIN_TOKEN, clients } from "../support/server.js";
import { TcpProxy } from "../support/tcp-proxy.js";

// Short settings so that every outcome happens within seconds: a heartbeat a second, a host OFFLINE
// after 6 s without one, its environments FAILED after 18 s OFFLINE.
const GRACE_S = 6;
const LOST_S = 18;

const time = (t: Timestamp | undefined) => (t ? timestampDate(t).getTime() : 0);

describe("e2e: the network between the agent and the control plane partitioned (a TCP proxy between real processes)", function () {
  this.timeout(180_000);
  let db: TestDatabase;
  let dataDir: string;
  let server: ServerProcess;
  let proxy: TcpProxy;
  let agent: ChildProcess | undefined;
  let agentOut = "";
  const watching = new AbortController();

  let api: ReturnType<typeof clients>;
  let hostId: string;
  let envId: string;
  let hostPort: number;
  let hostEvents: Host[];
  let envEvents: Environment[];

  const getHost = async () => (await api.client(HostService).getHost({ id: hostId })).host!;
  const getEnv = async () => (await api.client(EnvironmentService).getEnvironment({ id: envId })).environment!;
  const listGpus = async () => (await api.client(GpuService).listGpus({ hostId })).gpus;
  const gpuState = async () => (await listGpus()).map((g) => `${g.index}:${GpuStatus[g.status]}:${g.environmentId}`).sort();
  /** Whether the environment answers on its host port: straight to the host, not through the proxy. */
  const serves = async () => {
    try {
      return (await fetch(`http://127.0.0.1:${hostPort}/starts.log`)).status === 200;
    } catch {
      return false;
    }
  };
  /** How many times the workload was started: each start appends a line to its volume's starts.log. */
  const starts = async () =>
    (await readFile(path.join(dataDir, "agent", "environments", envId, "volume", "starts.log"), "utf8")).trim().split("\n").length;
  const logs = () =>
    `\n--- agent ---\n${agentOut.slice(-3000)}\n--- server ---\n${server.stdout().slice(-3000)}${server.stderr().slice(-1000)}`;
  /** eventually(), with both processes' latest output when it gives up. */
  const waitFor = <T>(what: string, check: () => Promise<T | undefined | false>, ms?: number) =>
    eventually(what, check, ms).catch((err: Error) => {
      throw new Error(`${err.message}${logs()}`);
    });
  /** Heartbeats and readings arrive again: a heartbeat recorded and a GPU reading taken after `since`. */
  const freshAfter = (since: number) =>
    waitFor(
      `a heartbeat and a reading after ${new Date(since).toISOString()}`,
      async () => {
        const [host, gpus] = await Promise.all([getHost(), listGpus()]);
        return time(host.lastHeartbeatTime) > since && gpus.every((g) => time(g.latestSample?.sampleTime) > since);
      },
      30_000,
    );
  const hold = (ms: number) => new Promise((r) => setTimeout(r, ms));

  before(async () => {
    db = await createTestDatabase();
    dataDir = await agentTempDir("remotegpu-partition-");
    const [port, appPort] = [await freePort(), await freePort()];
    server = spawnServer(
      serverEnv({
        DATABASE_URL: db.url,
        PORT: String(port),
        BIND_ADDRESS: "127.0.0.1",
        REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
        LOG_LEVEL: "info",
        RATE_LIMIT_PER_SECOND: "0",
        HEARTBEAT_INTERVAL_SECONDS: "1",
        HOST_GRACE_SECONDS: String(GRACE_S),
        ENVIRONMENT_LOST_HOST_SECONDS: String(LOST_S),
        HOST_PORT_RANGE: `${appPort}-${appPort}`,
        SHUTDOWN_TIMEOUT_SECONDS: "1",
        DATA_DIR: path.join(dataDir, "server"),
      }),
    );
    await server.listening(60_000);
    api = clients(`http://127.0.0.1:${port}`);
    proxy = await TcpProxy.start(port);

    const { host, agentToken } = await api.client(HostService).createHost({ name: "partitioned", address: "127.0.0.1" });
    hostId = host!.id;
    // The agent reaches the control plane only through the proxy; users reach its workloads directly.
    agent = spawn(
      process.execPath,
      agentArgv(simulatedAgentFlags({ server: proxy.url, hostId, token: agentToken, gpus: 2, dataDir: path.join(dataDir, "agent") })),
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    for (const s of [agent.stdout!, agent.stderr!])
      s.setEncoding("utf8").on("data", (c: string) => (agentOut = (agentOut + c).slice(-20_000)));
    await waitFor(
      "the host ONLINE with its 2 GPUs",
      async () => (await getHost()).status === HostStatus.ONLINE && (await listGpus()).length === 2,
      60_000,
    );

    const workspaceId = (await api.client(WorkspaceService).createWorkspace({ name: "partition" })).workspace!.id;
    const containerPort = await freePort();
    const created = (
      await api.client(EnvironmentService).createEnvironment({
        workspaceId,
        name: "web",
        image: "python:3.12",
        command: ["sh", "-c", `echo started >> starts.log; exec python3 -m http.server ${containerPort} --bind 127.0.0.1`],
        gpuCount: 1,
        ports: [{ name: "http", containerPort }],
      })
    ).environment!;
    envId = created.id;
    hostPort = created.portMappings[0]!.hostPort;
    await waitFor("RUNNING", async () => (await getEnv()).status === EnvironmentStatus.RUNNING, 60_000);
    assert.ok(await serves());

    hostEvents = [];
    const hostWatch = api.client(HostService).watchHosts({ hostId }, { signal: watching.signal });
    const envWatch = api.client(EnvironmentService).watchEnvironments({ environmentId: envId }, { signal: watching.signal });
    void (async () => {
      for await (const e of hostWatch) hostEvents.push(e.host!);
    })().catch(() => undefined);
    envEvents = [];
    void (async () => {
      for await (const e of envWatch) envEvents.push(e.environment!);
    })().catch(() => undefined);
    // Each watch starts with the current state; past it, every event is a change.
    await waitFor("both watches started", async () => hostEvents.length > 0 && envEvents.length > 0);
  });

  after(async () => {
    watching.abort();
    await proxy?.close();
    agent?.kill("SIGKILL");
    await server?.kill();
    await db?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** What a user sees of the host, its GPUs and the environment, to compare before and after. */
  const snapshot = async () => {
    const [host, env] = await Promise.all([getHost(), getEnv()]);
    return {
      host: [HostStatus[host.status], host.statusMessage],
      gpus: await gpuState(),
      env: [
        EnvironmentStatus[env.status],
        env.statusMessage,
        env.hostId,
        [...env.gpuIds].sort().join(","),
        env.portMappings.map((p) => p.hostPort).join(","),
        env.transitions.length,
      ],
    };
  };

  /** What a user or a watcher sees is as it was before the partition, and the workload never restarted. */
  const nothingChanged = async (before: unknown, during: unknown, hostMark: number, envMark: number) => {
    assert.deepEqual(during, before);
    assert.deepEqual(await snapshot(), before);
    assert.ok(await serves());
    assert.equal(await starts(), 1);
    assert.deepEqual(envEvents.slice(envMark), [], "no environment event");
    assert.deepEqual(
      hostEvents
        .slice(hostMark)
        .map((h) => HostStatus[h.status])
        .filter((s) => s !== "ONLINE"),
      [],
      "no host status change",
    );
  };

  it("a partition shorter than the grace changes nothing users see, and the agent's heartbeats resume", async () => {
    const before = await snapshot();
    assert.deepEqual(before.host, ["ONLINE", ""]);
    const [hostMark, envMark] = [hostEvents.length, envEvents.length];

    const partitionedAt = Date.now();
    proxy.partition();
    await hold(2500); // two heartbeats or more go nowhere; the grace is 6 s
    const during = await snapshot();
    assert.ok(time((await getHost()).lastHeartbeatTime) < partitionedAt, "no heartbeat got through the partition");
    assert.ok(await serves(), "the workload keeps serving on its host port");
    proxy.heal();
    const healedAt = Date.now();

    await freshAfter(healedAt);
    await nothingChanged(before, during, hostMark, envMark);
  });

  it("a short partition that resets connections (a firewall rejecting) changes nothing either; the agent reconnects", async () => {
    const before = await snapshot();
    const [hostMark, envMark, accepted] = [hostEvents.length, envEvents.length, proxy.accepted];

    proxy.reject();
    // Short enough that the agent's growing reconnect delays (0.5, 1, 2 s at most) end inside the 6 s
    // grace even at their longest: a 2.5 s reset could push the reconnect to 7.5 s.
    await hold(1500);
    const during = await snapshot();
    assert.ok(await serves());
    proxy.heal();
    const healedAt = Date.now();

    await freshAfter(healedAt);
    assert.ok(proxy.accepted > accepted, "the agent opened a new connection");
    await nothingChanged(before, during, hostMark, envMark);
  });

  it("a connection that silently died (no reset, ever) is noticed by the agent, which reconnects by itself", async () => {
    const before = await snapshot();
    const accepted = proxy.accepted;
    // The connection open now goes nowhere for good; a new one gets through. (It is the one opened
    // after the reset above, so its keepalive follows the 1 s heartbeat the server asked for; the
    // agent's first connection, opened before any welcome, assumes the default 10 s.)
    const strandedAt = Date.now();
    proxy.strand();
    await freshAfter(strandedAt);
    assert.ok(proxy.accepted > accepted, "the agent opened a new connection");
    await waitFor("the host ONLINE, the environment RUNNING and unmarked", async () => {
      const s = await snapshot();
      return s.host[0] === "ONLINE" && s.env[1] === "running" && s;
    });
    const after = await snapshot();
    assert.deepEqual(after.env.slice(0, 5), before.env.slice(0, 5));
    assert.deepEqual(after.gpus, before.gpus);
    assert.ok(await serves());
    assert.equal(await starts(), 1);
  });

  it("a partition longer than the grace: host and GPUs OFFLINE, the environment marked but kept; all restored on return", async () => {
    const before = await snapshot();
    const env0 = await getEnv();
    const [hostMark, envMark] = [hostEvents.length, envEvents.length];

    proxy.partition();
    const offline = await waitFor("the host OFFLINE", async () => {
      const h = await getHost();
      return h.status === HostStatus.OFFLINE && h;
    });
    assert.match(offline.statusMessage, new RegExp(`no heartbeat for more than ${GRACE_S}s`));
    const marked = await waitFor("the environment marked", async () => {
      const e = await getEnv();
      return e.statusMessage.startsWith("host offline since") && e;
    });
    assert.equal(EnvironmentStatus[marked.status], "RUNNING", "marked, not failed");
    assert.match(marked.statusMessage, new RegExp(`failing it after ${LOST_S} s offline`));
    const gpus = await listGpus();
    assert.deepEqual(
      gpus.map((g) => GpuStatus[g.status]),
      ["OFFLINE", "OFFLINE"],
    );
    assert.deepEqual(
      gpus.filter((g) => g.environmentId === envId).map((g) => g.id),
      env0.gpuIds,
      "its GPU is still its own",
    );
    assert.deepEqual(marked.gpuIds, env0.gpuIds);
    assert.deepEqual(
      marked.portMappings.map((p) => p.hostPort),
      [hostPort],
    );
    assert.ok(await serves(), "the workload keeps serving while its host is unreachable");
    proxy.heal();
    const healedAt = Date.now();

    await waitFor("the host ONLINE again", async () => (await getHost()).status === HostStatus.ONLINE);
    await waitFor("the mark cleared", async () => (await getEnv()).statusMessage === "running");
    await freshAfter(healedAt);
    const after = await snapshot();
    assert.deepEqual(after, before, "same status, GPUs, ports, and no new transition");
    assert.ok(await serves());
    assert.equal(await starts(), 1, "the workload was not started again");

    // What watchers saw: the host OFFLINE then ONLINE; the environment marked then cleared, RUNNING throughout.
    const hostStatuses = hostEvents.slice(hostMark).map((h) => HostStatus[h.status]);
    assert.ok(hostStatuses.includes("OFFLINE") && hostStatuses.at(-1) === "ONLINE", hostStatuses.join(" "));
    const envSeen = envEvents.slice(envMark);
    assert.deepEqual([...new Set(envSeen.map((e) => EnvironmentStatus[e.status]))], ["RUNNING"]);
    assert.ok(envSeen[0]?.statusMessage.startsWith("host offline since"), envSeen.map((e) => e.statusMessage).join(" | "));
    assert.equal(envSeen.at(-1)?.statusMessage, "running");
  });

  it("a partition longer than ENVIRONMENT_LOST_HOST_SECONDS: the environment FAILED, its GPU freed, its workload stopped when the host returns", async () => {
    const env0 = await getEnv();
    proxy.partition();
    const failed = await waitFor(
      "FAILED",
      async () => {
        const e = await getEnv();
        return e.status === EnvironmentStatus.FAILED && e;
      },
      60_000,
    );
    assert.match(failed.statusMessage, new RegExp(`offline for more than ${LOST_S} s`));
    assert.deepEqual(failed.gpuIds, []);
    assert.deepEqual(
      failed.portMappings.map((p) => [p.name, p.hostPort]),
      [["http", 0]],
      "its host port released (the port itself is kept for a start)",
    );
    assert.ok(
      (await listGpus()).every((g) => g.environmentId === ""),
      "its GPU released",
    );
    assert.ok(await serves(), "the agent, cut off, has not heard yet");
    proxy.heal();

    await waitFor("the host ONLINE again", async () => (await getHost()).status === HostStatus.ONLINE);
    await waitFor("the stray workload stopped", async () => !(await serves()));
    const free = await waitFor("both GPUs AVAILABLE", async () => {
      const gpus = await listGpus();
      return gpus.every((g) => g.status === GpuStatus.AVAILABLE && g.environmentId === "") && gpus;
    });
    assert.equal(free.length, 2);
    assert.ok(env0.gpuIds.every((id) => free.some((g) => g.id === id)));
    const after = await getEnv();
    assert.equal(EnvironmentStatus[after.status], "FAILED", "the agent's return does not revive it");
    assert.equal(await starts(), 1);
  });
});
