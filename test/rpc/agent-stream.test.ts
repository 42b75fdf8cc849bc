import { strict as assert } from "node:assert";
import v8 from "node:v8";
import vm from "node:vm";
import { Code } from "@connectrpc/connect";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { FakeAgent } from "../support/fake-agent.js";
import { eventually } from "../support/eventually.js";
import { ADMIN_TOKEN, clients, startTestServer, type TestServer } from "../support/server.js";
import { TcpProxy } from "../support/tcp-proxy.js";

describe("HostService.StreamHeartbeats", () => {
  let server: TestServer;
  let clock: ManualClock;
  let hosts: ReturnType<typeof server.client<typeof HostService>>;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;
  const agents: FakeAgent[] = [];

  const newHost = async (name: string) => {
    const { host, agentToken } = await hosts.createHost({ name, address: "10.9.0.1" });
    const agent = new FakeAgent(server, agentToken);
    agents.push(agent);
    return { host: host!, agent, token: agentToken };
  };
  const gpusOf = async (hostId: string) => (await gpus.listGpus({ hostId })).gpus;

  before(async () => {
    clock = new ManualClock(new Date("2026-11-30T12:00:00Z"));
    server = await startTestServer({ clock });
    hosts = server.client(HostService);
    gpus = server.client(GpuService);
  });
  after(async () => {
    for (const a of agents) a.close();
    await server.close();
  });

  it("answers a hello with a welcome, records the host and upserts its GPU inventory", async () => {
    const { host, agent } = await newHost("agent-hello");
    const welcome = await agent.hello(host.id, [
      { index: 0, uuid: "GPU-h-0" },
      { index: 1, uuid: "GPU-h-1" },
    ]);
    assert.equal(welcome.message.case, "welcome");
    const { sessionId, settings } = welcome.message.value;
    assert.match(sessionId, /^[0-9a-f-]{36}$/);
    const intervalMs = Number(settings!.heartbeatInterval!.seconds) * 1000 + settings!.heartbeatInterval!.nanos / 1e6;
    assert.ok(intervalMs >= 9000 && intervalMs <= 11000, `interval ${intervalMs} ms is 10 s with jitter`);
    assert.equal(settings!.leaseTtl!.seconds, 40n);

    const got = (await hosts.getHost({ id: host.id })).host!;
    assert.equal(got.status, HostStatus.ONLINE);
    assert.equal(got.agentVersion, "0.1.0-test");
    assert.equal(got.capacity?.cpuMillicores, 32000n);
    const list = await gpusOf(host.id);
    assert.deepEqual(
      list.map((g) => [g.index, g.uuid, g.status, g.driverVersion]),
      [
        [0, "GPU-h-0", GpuStatus.AVAILABLE, "550.90.07"],
        [1, "GPU-h-1", GpuStatus.AVAILABLE, "550.90.07"],
      ],
    );
  });

  it("acks heartbeats by sequence and serves the latest sample from memory", async () => {
    const { host, agent } = await newHost("agent-beat");
    await agent.hello(host.id, [{ index: 0, uuid: "GPU-b-0" }]);
    await agent.beat([{ uuid: "GPU-b-0", index: 0, util: 42 }]);
    await agent.beat([{ uuid: "GPU-b-0", index: 0, util: 77 }]);
    const [gpu] = await gpusOf(host.id);
    assert.equal(gpu!.latestSample?.metrics?.gpuUtilizationPercent, 77);
    assert.equal((await hosts.getHost({ id: host.id })).host?.latestSample?.cpuUtilizationPercent, 3);
  });

  it("refuses a token speaking for another host, and a stream that does not start with a hello", async () => {
    const a = await newHost("agent-a");
    const b = await newHost("agent-b");
    await expectCode(a.agent.hello(b.host.id, []), Code.PermissionDenied, b.host.id);
    const c = new FakeAgent(server, b.token);
    agents.push(c);
    c.requests.push({ message: { case: "heartbeat", value: { sequence: 1n } } });
    await expectCode(c.next(), Code.InvalidArgument, "hello");
  });

  it("fences the older stream when the same host connects again; only the newest counts", async () => {
    const { host, agent: first, token } = await newHost("agent-fence");
    await first.hello(host.id, [{ index: 0, uuid: "GPU-f-0" }]);
    const second = new FakeAgent(server, token);
    agents.push(second);
    const welcome = await second.hello(host.id, [{ index: 0, uuid: "GPU-f-0" }]);
    assert.equal(welcome.message.case, "welcome");

    const err = await expectCode(first.next(), Code.Aborted, "newer agent session");
    assert.ok(err.rawMessage.includes(welcome.message.value.sessionId));
    // The agent tells a fence from other ABORTEDs (a lost race, a reset connection) by this.
    assert.equal(err.metadata.get("remotegpu-fenced-by"), welcome.message.value.sessionId);
    await second.beat([{ uuid: "GPU-f-0", index: 0, util: 5 }]);
  });

  it("answers hellos that arrive together (a reconnecting fleet) each on its own: welcome, not found, fenced", async () => {
    const made = await Promise.all(Array.from({ length: 12 }, (_, i) => newHost(`agent-together-${i}`)));
    const again = new FakeAgent(server, made[0]!.token);
    const stranger = new FakeAgent(server, ADMIN_TOKEN); // an admin may speak for any host, even one that is not there
    agents.push(again, stranger);
    const missing = "00000000-0000-4000-8000-00000000beef";
    const [welcomes, refused, second] = await Promise.all([
      Promise.all(made.map(({ host, agent }, i) => agent.hello(host.id, [{ index: 0, uuid: `GPU-together-${i}` }]))),
      expectCode(stranger.hello(missing, []), Code.NotFound, missing),
      again.hello(made[0]!.host.id, [{ index: 0, uuid: "GPU-together-0" }]),
    ]);
    assert.ok(welcomes.every((w) => w.message.case === "welcome"));
    assert.ok(refused);
    // Both streams of host 0 were welcomed; the one that committed first is fenced by the other.
    const first = welcomes[0]!.message.value as { sessionId: string };
    const fenced = await Promise.race([
      made[0]!.agent.next().then(
        () => "first alive",
        () => "first fenced",
      ),
      again.next().then(
        () => "second alive",
        () => "second fenced",
      ),
    ]);
    assert.ok(fenced.endsWith("fenced"), fenced);
    assert.notEqual(first.sessionId, (second.message.value as { sessionId: string }).sessionId);
    for (const [i, { host }] of made.entries()) {
      assert.equal((await hosts.getHost({ id: host.id })).host!.status, HostStatus.ONLINE);
      assert.deepEqual(
        (await gpusOf(host.id)).map((g) => g.uuid),
        [`GPU-together-${i}`],
      );
    }
  });

  it("marks GPUs missing from a later hello OFFLINE (never deleting them) and adds new ones", async () => {
    const { host, agent, token } = await newHost("agent-inventory");
    await agent.hello(host.id, [
      { index: 0, uuid: "GPU-i-0" },
      { index: 1, uuid: "GPU-i-1" },
    ]);
    agent.close();
    const again = new FakeAgent(server, token);
    agents.push(again);
    // GPU-i-1 is gone; a new GPU took index 1; GPU-i-0 is still there.
    await again.hello(host.id, [
      { index: 0, uuid: "GPU-i-0" },
      { index: 1, uuid: "GPU-i-new" },
    ]);
    const byUuid = new Map((await gpusOf(host.id)).map((g) => [g.uuid, g]));
    assert.equal(byUuid.size, 3);
    assert.equal(byUuid.get("GPU-i-0")?.status, GpuStatus.AVAILABLE);
    assert.equal(byUuid.get("GPU-i-1")?.status, GpuStatus.OFFLINE);
    assert.equal(byUuid.get("GPU-i-new")?.status, GpuStatus.AVAILABLE);
    assert.equal(byUuid.get("GPU-i-new")?.index, 1);
  });

  it("takes a silent host OFFLINE after the grace period without releasing its GPUs, and back ONLINE on its next heartbeat", async () => {
    const { host, agent } = await newHost("agent-lease");
    await agent.hello(host.id, [{ index: 0, uuid: "GPU-l-0" }]);
    const [gpu] = await gpusOf(host.id);
    await gpus.allocateGpu({ gpuId: gpu!.id, holder: "env-x" });

    clock.advance(39_000);
    await server.app.maintain();
    assert.equal((await hosts.getHost({ id: host.id })).host?.status, HostStatus.ONLINE, "within the grace");

    clock.advance(2_000);
    await server.app.maintain();
    const offline = (await hosts.getHost({ id: host.id })).host!;
    assert.equal(offline.status, HostStatus.OFFLINE);
    assert.match(offline.statusMessage, /no heartbeat/);
    const held = (await gpus.getGpu({ id: gpu!.id })).gpu!;
    assert.equal(held.status, GpuStatus.OFFLINE);
    assert.equal(held.holder, "env-x", "a partition does not take GPUs away");

    await agent.beat();
    await server.app.maintain();
    assert.equal((await hosts.getHost({ id: host.id })).host?.status, HostStatus.ONLINE);
    assert.equal((await gpus.getGpu({ id: gpu!.id })).gpu?.status, GpuStatus.ALLOCATED);
  });

  it("marks a GPU UNHEALTHY on a critical XID, never schedules it, and keeps it so until re-admitted", async () => {
    const { host, agent } = await newHost("agent-xid");
    await agent.hello(host.id, [
      { index: 0, uuid: "GPU-x-0", model: "NVIDIA A100-SXM4-80GB" },
      { index: 1, uuid: "GPU-x-1", model: "NVIDIA A100-SXM4-80GB" },
    ]);
    await agent.beat([
      { uuid: "GPU-x-0", index: 0, xid: 79 },
      { uuid: "GPU-x-1", index: 1, xid: 13, temp: 95 },
    ]);
    await server.app.maintain();
    const byUuid = new Map((await gpusOf(host.id)).map((g) => [g.uuid, g]));
    assert.equal(byUuid.get("GPU-x-0")?.status, GpuStatus.UNHEALTHY);
    assert.deepEqual(byUuid.get("GPU-x-0")?.healthReasons, ["xid 79: GPU has fallen off the bus"]);
    // XID 13 is an application error, not a hardware fault; the heat is.
    assert.equal(byUuid.get("GPU-x-1")?.status, GpuStatus.UNHEALTHY);
    assert.deepEqual(byUuid.get("GPU-x-1")?.healthReasons, ["temperature 95°C above 90°C"]);
    await expectCode(gpus.allocateGpu({ model: "NVIDIA A100-SXM4-80GB", holder: "x" }), Code.ResourceExhausted);

    // The same XID still reported is no new fault: the operator's re-admission holds.
    await gpus.updateGpu({ gpu: { id: byUuid.get("GPU-x-0")!.id, status: GpuStatus.AVAILABLE }, updateMask: { paths: ["status"] } });
    await agent.beat([{ uuid: "GPU-x-0", index: 0, xid: 79 }]);
    await server.app.maintain();
    assert.equal((await gpus.getGpu({ id: byUuid.get("GPU-x-0")!.id })).gpu?.status, GpuStatus.AVAILABLE);
    // A GPU re-admitted while still too hot is caught again.
    await gpus.updateGpu({ gpu: { id: byUuid.get("GPU-x-1")!.id, status: GpuStatus.AVAILABLE }, updateMask: { paths: ["status"] } });
    await agent.beat([{ uuid: "GPU-x-1", index: 1, temp: 96 }]);
    await server.app.maintain();
    assert.equal((await gpus.getGpu({ id: byUuid.get("GPU-x-1")!.id })).gpu?.status, GpuStatus.UNHEALTHY);
  });

  it("sends a drain command down the stream of a drained host, and hears the result", async () => {
    const { host, agent } = await newHost("agent-drain");
    await agent.hello(host.id, [{ index: 0, uuid: "GPU-d-0" }]);
    await hosts.drainHost({ id: host.id });
    const res = await agent.next();
    assert.equal(res.message.case, "command");
    assert.equal(res.message.value.command.case, "drain");
    agent.requests.push({ message: { case: "commandResult", value: { commandId: res.message.value.commandId, ok: true } } });
    await agent.beat(); // the stream goes on after the command
  });

  it("refuses impossible values in a hello, and survives an impossible sample time", async () => {
    const { host, agent, token } = await newHost("agent-bounds");
    agent.requests.push({ message: { case: "hello", value: { hostId: host.id, capacity: { memoryBytes: (1n << 63n) - 1n } } } });
    await expectCode(agent.next(), Code.InvalidArgument, "hello.capacity.memory_bytes");
    const again = new FakeAgent(server, token);
    agents.push(again);
    await again.hello(host.id, [{ index: 0, uuid: "GPU-bounds-0" }]);
    await again.beat([{ uuid: "GPU-bounds-0", index: 0, util: 9 }], {
      $typeName: "google.protobuf.Timestamp",
      seconds: 10n ** 15n,
      nanos: 0,
    });
    // A GPU nobody declared in the hello is ignored rather than remembered.
    await again.beat([{ uuid: "GPU-not-in-hello", index: 5, util: 1 }]);
    const list = await gpus.listGpus({ hostId: host.id });
    assert.deepEqual(
      list.gpus.map((g) => [g.uuid, g.latestSample?.metrics?.gpuUtilizationPercent]),
      [["GPU-bounds-0", 9]],
    );
    assert.ok((await gpus.listGpus({})).gpus.length > 0, "every caller can still list GPUs");
  });

  it("keeps what a hello says about not running environments, tidied, until a hello says nothing", async () => {
    const { host, agent, token } = await newHost("agent-no-runtime");
    // Line breaks and a long tail (an engine's error output, say) do not keep the agent from connecting.
    const said = `no container engine answers:\n  docker: not found\n  podman: ${"x".repeat(2000)}`;
    assert.equal((await agent.hello(host.id, [], { runtimeUnavailableReason: said })).message.case, "welcome");
    const kept = (await hosts.getHost({ id: host.id })).host!;
    assert.equal(kept.runtimeUnavailableReason.length, 1024);
    assert.match(kept.runtimeUnavailableReason, /^no container engine answers: docker: not found podman: x+$/);
    assert.equal(kept.statusMessage, `cannot run environments: ${kept.runtimeUnavailableReason}`);

    const next = new FakeAgent(server, token);
    agents.push(next);
    await next.hello(host.id, []);
    const cleared = (await hosts.getHost({ id: host.id })).host!;
    assert.deepEqual([cleared.runtimeUnavailableReason, cleared.statusMessage], ["", ""]);
  });

  it("refuses a negative volume size in a heartbeat", async () => {
    const { host, agent } = await newHost("agent-volumes");
    await agent.hello(host.id, []);
    agent.requests.push({
      message: {
        case: "heartbeat",
        value: { sequence: 1n, volumes: [{ environmentId: "11111111-2222-4333-8444-555555555555", usedBytes: -1n }] },
      },
    });
    await expectCode(agent.next(), Code.InvalidArgument, "heartbeat.volumes[0].used_bytes: must be 0 or more");
  });

  it("leaves the GPUs of a host whose agent said hello to the agent: CreateGpu is refused there, not on hosts without one", async () => {
    const { host, agent } = await newHost("agent-owned");
    const { host: manual } = await newHost("manual-owned");
    const gpu = { index: 1, uuid: "GPU-by-hand", model: "NVIDIA L4", memoryBytes: 24n << 30n };
    await agent.hello(host.id, [{ index: 0, uuid: "GPU-inv-0" }]);
    await expectCode(
      gpus.createGpu({ hostId: host.id, ...gpu }),
      Code.FailedPrecondition,
      'the agent of host "agent-owned" reports its GPUs',
    );
    // Still refused once the agent is gone: its next hello would replace the inventory again.
    agent.close();
    await expectCode(gpus.createGpu({ hostId: host.id, ...gpu }), Code.FailedPrecondition, "reports its GPUs");
    assert.deepEqual(
      (await gpusOf(host.id)).map((g) => g.uuid),
      ["GPU-inv-0"],
    );
    assert.equal((await gpus.createGpu({ hostId: manual.id, ...gpu })).gpu?.uuid, "GPU-by-hand");
  });

  it("ends the stream of a host that is deleted while its agent is connected", async () => {
    const { host, agent } = await newHost("agent-deleted");
    await agent.hello(host.id, []);
    await hosts.deleteHost({ id: host.id });
    await expectCode(agent.next(), Code.NotFound, host.id);
  });

  it("keeps nothing per heartbeat: a long-lived stream does not grow the server's memory", async () => {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    const heapAfterGc = () => {
      gc();
      return process.memoryUsage().heapUsed;
    };
    const { host, agent } = await newHost("agent-long-lived");
    const samples = Array.from({ length: 8 }, (_, i) => ({ uuid: `GPU-long-${i}`, index: i, util: 50, memUsed: 1n << 30n }));
    await agent.hello(host.id, samples);
    for (let i = 0; i < 500; i++) await agent.beat(samples);
    const before = heapAfterGc();
    for (let i = 0; i < 5000; i++) await agent.beat(samples);
    const grown = heapAfterGc() - before;
    // Each heartbeat used to stay reachable for the stream's lifetime: 15 MiB here, against 0.2 MiB now.
    assert.ok(grown < 8 * 1024 * 1024, `the heap grew by ${(grown / 1048576).toFixed(1)} MiB over 5,000 heartbeats`);
  });

  it("counts connected agents in /metrics", async () => {
    const body = await (await fetch(`${server.baseUrl}/metrics`)).text();
    const m = /remotegpu_agents_connected (\d+)/.exec(body);
    assert.ok(m && Number(m[1]) >= 1, body.slice(0, 200));
  });
});

describe("HostService.StreamHeartbeats over a connection that dies without a close", () => {
  let server: TestServer;
  let proxy: TcpProxy;
  const agents: FakeAgent[] = [];
  before(async () => {
    server = await startTestServer({ env: { KEEPALIVE_SECONDS: "1" } });
    proxy = await TcpProxy.start(server.port);
  });
  after(async () => {
    for (const a of agents) a.close();
    await proxy.close();
    await server.close();
  });

  const connected = async () => {
    const body = await (await fetch(`${server.baseUrl}/metrics`)).text();
    return Number(/remotegpu_agents_connected (\d+)/.exec(body)![1]);
  };

  it("ends the session when its connection stops answering PINGs, and keeps an idle one that answers", async () => {
    const hosts = server.client(HostService);
    const connect = async (name: string, via: Pick<TestServer, "client">) => {
      const { host, agentToken } = await hosts.createHost({ name, address: "10.9.0.3" });
      const agent = new FakeAgent(via, agentToken);
      agents.push(agent);
      await agent.hello(host!.id, [{ index: 0, uuid: `GPU-${name}` }]);
      return agent;
    };
    await connect("stranded", clients(proxy.url));
    const idle = await connect("idle-but-alive", server);
    assert.equal(await connected(), 2);

    proxy.strand(); // the stranded agent's bytes go nowhere from now on, and nobody says so
    await eventually("the stranded session ended", async () => (await connected()) === 1, 15_000, 200);
    // Another one stranded after that: by the time it is dropped too, the idle connection has been
    // PINGed for at least as long as it takes to drop one that does not answer, and it stays.
    await connect("stranded-later", clients(proxy.url));
    assert.equal(await connected(), 2);
    proxy.strand();
    await eventually("the later stranded session ended", async () => (await connected()) <= 1, 15_000, 200);
    assert.equal(await connected(), 1, "the idle, answering session is still there");
    await idle.beat();
  });
});
