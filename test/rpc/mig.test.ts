import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { AgentSession } from "../../sdk/src/agent-session.js";
import { ManualClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { expectCode } from "../support/expect.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

const H100 = "NVIDIA H100 80GB HBM3";
const MiB = 1n << 20n;

/** A GPU in MIG mode at `index`, and its slices: [profile, MiB] each, in MIG device order. */
function sliced(host: string, index: number, slices: [string, number][], tag = "") {
  const parent = `GPU-${host}-${index}`;
  return [
    { index, uuid: parent, migEnabled: true },
    ...slices.map(([profile, mib], d) => ({
      index: 1000 * (index + 1) + d,
      uuid: `MIG-${host}${tag}-${index}-${d}`,
      memoryBytes: BigInt(mib) * MiB,
      parentUuid: parent,
      migProfile: profile,
      migDeviceIndex: d,
      gpuInstanceId: 7 + d,
      computeInstanceId: 0,
    })),
  ];
}

describe("MIG slices as GPUs of their own", () => {
  let server: TestServer;
  let clock: ManualClock;
  let envs: ReturnType<typeof server.client<typeof EnvironmentService>>;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;
  let workspaces: ReturnType<typeof server.client<typeof WorkspaceService>>;
  const agents: { close(): Promise<void> }[] = [];
  const rounds = { ms: 10_000, everyMs: 20, between: () => server.app.maintain() };

  /** Hosts of the running test: cordoned after it, so that each test places on its own hosts only. */
  let hosts: string[] = [];
  async function newHost(name: string) {
    const res = await server.client(HostService).createHost({ name, address: "10.1.0.9" });
    hosts.push(res.host!.id);
    return { id: res.host!.id, token: res.agentToken };
  }

  /** A host with GPU 0 in MIG mode (four 1g.10gb and one 3g.40gb) and GPU 1 whole. */
  async function migHost(name: string) {
    const host = await newHost(name);
    const inventory = [
      ...sliced(name, 0, [
        ["3g.40gb", 40448],
        ["1g.10gb", 9984],
        ["1g.10gb", 9984],
        ["1g.10gb", 9984],
        ["1g.10gb", 9984],
      ]),
      { index: 1, uuid: `GPU-${name}-1` },
    ];
    const agent = new WorkloadAgent(server, host.token, host.id, inventory);
    agents.push(agent);
    await agent.welcome;
    return { ...host, agent };
  }

  const workspace = async (name: string) => (await workspaces.createWorkspace({ name })).workspace!.id;
  const create = (workspaceId: string, name: string, more: { gpuCount: number; migProfile?: string; gpuModel?: string }) =>
    envs.createEnvironment({ workspaceId, name, image: "img", ...more });
  const status = (id: string, wanted: EnvironmentStatus) =>
    eventually(
      `environment ${id} to be ${EnvironmentStatus[wanted]}`,
      async () => {
        const e = (await envs.getEnvironment({ id })).environment!;
        return e.status === wanted && e;
      },
      rounds,
    );

  before(async () => {
    clock = new ManualClock(new Date("2026-12-06T12:00:00Z"));
    server = await startTestServer({ clock, env: { HOST_PORT_RANGE: "32000-32099" } });
    envs = server.client(EnvironmentService);
    gpus = server.client(GpuService);
    workspaces = server.client(WorkspaceService);
  });
  afterEach(async () => {
    for (const id of hosts) await server.client(HostService).cordonHost({ id });
    hosts = [];
  });
  after(async () => {
    for (const a of agents) await a.close();
    await server.close();
  });

  it("lists slices with their parent, profile, placement and weight; the parent in MIG mode is never free", async () => {
    const host = await migHost("mig-list");
    const all = (await gpus.listGpus({ hostId: host.id, pageSize: 100 })).gpus;
    assert.deepEqual(
      all.map((g) => [g.index, g.model, g.migEnabled, g.mig?.profile ?? ""]),
      [
        [0, H100, true, ""],
        [1, H100, false, ""],
        [1000, `${H100} MIG 3g.40gb`, false, "3g.40gb"],
        [1001, `${H100} MIG 1g.10gb`, false, "1g.10gb"],
        [1002, `${H100} MIG 1g.10gb`, false, "1g.10gb"],
        [1003, `${H100} MIG 1g.10gb`, false, "1g.10gb"],
        [1004, `${H100} MIG 1g.10gb`, false, "1g.10gb"],
      ],
    );
    const parent = all[0]!;
    const slice = all[3]!;
    assert.equal(slice.uuid, "MIG-mig-list-0-1");
    assert.equal(slice.memoryBytes, 9984n * MiB);
    assert.equal(slice.mig?.parentId, parent.id);
    assert.deepEqual([slice.mig?.deviceIndex, slice.mig?.gpuInstanceId, slice.mig?.computeInstanceId], [1, 8, 0]);
    assert.equal(slice.mig?.weight, 1 / 7);
    assert.equal(all[2]!.mig?.weight, 3 / 7);
    assert.deepEqual((await gpus.getGpu({ id: slice.id })).gpu?.mig, slice.mig);

    const profile = (await gpus.listGpus({ hostId: host.id, migProfile: "1g.10gb" })).gpus;
    assert.deepEqual(
      profile.map((g) => g.index),
      [1001, 1002, 1003, 1004],
    );
    const free = (await gpus.listGpus({ hostId: host.id, freeOnly: true, pageSize: 100 })).gpus;
    assert.ok(!free.some((g) => g.id === parent.id), "the parent in MIG mode is not free");
    assert.equal(free.length, 6);
    await expectCode(gpus.allocateGpu({ gpuId: parent.id, holder: "job" }), Code.FailedPrecondition, "MIG mode");
    // Any GPU means a whole one; a slice model gets a slice.
    assert.equal((await gpus.allocateGpu({ hostId: host.id, holder: "job-1" })).gpu?.index, 1);
    const picked = (await gpus.allocateGpu({ hostId: host.id, model: `${H100} MIG 3g.40gb`, holder: "job-2" })).gpu!;
    assert.equal(picked.index, 1000);
    await expectCode(gpus.allocateGpu({ hostId: host.id, holder: "job-3" }), Code.ResourceExhausted);
    for (const g of [all[1]!, picked]) await gpus.releaseGpu({ gpuId: g.id });
  });

  it("places environments on slices of the profile asked for, never mixing them with whole GPUs", async () => {
    const host = await migHost("mig-place");
    const ws = await workspace("mig-place-team");
    const a = (await create(ws, "a", { gpuCount: 2, migProfile: "1g.10gb" })).environment!;
    const b = (await create(ws, "b", { gpuCount: 1, migProfile: "1g.10gb", gpuModel: H100 })).environment!;
    const c = (await create(ws, "c", { gpuCount: 1, gpuModel: `${H100} MIG 3g.40gb` })).environment!;
    const whole = (await create(ws, "whole", { gpuCount: 1 })).environment!;
    const held = async (id: string) =>
      (await gpus.listGpus({ hostId: host.id, pageSize: 100 })).gpus.filter((g) => g.environmentId === id).map((g) => g.uuid);
    assert.deepEqual(await held(a.id), ["MIG-mig-place-0-1", "MIG-mig-place-0-2"]);
    assert.deepEqual(await held(b.id), ["MIG-mig-place-0-3"]);
    assert.deepEqual(await held(c.id), ["MIG-mig-place-0-0"]);
    assert.deepEqual(await held(whole.id), ["GPU-mig-place-1"]);
    assert.equal(a.migProfile, "1g.10gb");
    // The agent is told to run them on their slices' UUIDs.
    await status(a.id, EnvironmentStatus.RUNNING);
    const run = host.agent.commands.find((x) => x.command.case === "runEnvironment" && x.command.value.environmentId === a.id);
    assert.deepEqual(run?.command.case === "runEnvironment" && run.command.value.gpuUuids, ["MIG-mig-place-0-1", "MIG-mig-place-0-2"]);
    // One 1g.10gb left, no whole GPU: two slices or a whole GPU do not fit, on this host or any.
    await expectCode(create(ws, "two", { gpuCount: 2, migProfile: "1g.10gb" }), Code.ResourceExhausted, 'MIG slices of profile "1g.10gb"');
    await expectCode(create(ws, "whole-2", { gpuCount: 1 }), Code.ResourceExhausted);
    const models = (await envs.listGpuModels({ workspaceId: ws })).models;
    assert.ok(models.some((m) => m.model === `${H100} MIG 1g.10gb` && m.migProfile === "1g.10gb" && m.freeGpus >= 1));
    assert.ok(!models.some((m) => m.model === H100 && m.freeGpus > 0 && m.maxPerHost > 0 && m.migProfile !== ""));
    for (const e of [a, b, c, whole]) await envs.deleteEnvironment({ id: e.id });
  });

  it("refuses unknown profiles naming the fleet's, and a slice of one profile with another", async () => {
    await migHost("mig-refuse");
    const ws = await workspace("mig-refuse-team");
    const unknown = await expectCode(create(ws, "x", { gpuCount: 1, migProfile: "2g.20gb" }), Code.InvalidArgument);
    assert.match(unknown.rawMessage, /"2g\.20gb".*the fleet has: 1g\.10gb, 3g\.40gb/);
    await expectCode(create(ws, "x", { gpuCount: 1, migProfile: "seven" }), Code.InvalidArgument, "mig_profile");
    await expectCode(create(ws, "x", { gpuCount: 0, migProfile: "1g.10gb" }), Code.InvalidArgument, "gpu_count above 0");
    await expectCode(
      create(ws, "x", { gpuCount: 1, migProfile: "1g.10gb", gpuModel: `${H100} MIG 3g.40gb` }),
      Code.InvalidArgument,
      "slices of one profile or whole GPUs",
    );
    await expectCode(
      create(ws, "x", { gpuCount: 1, migProfile: "1g.10gb", gpuModel: "NVIDIA A100-SXM4-80GB" }),
      Code.InvalidArgument,
      "has them on: ",
    );
    assert.equal((await envs.listEnvironments({ workspaceId: ws })).environments.length, 0, "nothing was created");
  });

  it("counts slices against max_gpus by their weight, and per profile", async () => {
    await migHost("mig-quota");
    const ws = await workspace("mig-quota-team");
    await workspaces.setResourceQuota({ quota: { workspaceId: ws, maxGpus: 1, maxMigSlicesPerProfile: { "1g.10gb": 3 } } });
    const made = [
      await create(ws, "a", { gpuCount: 2, migProfile: "1g.10gb" }),
      await create(ws, "b", { gpuCount: 1, migProfile: "3g.40gb" }),
    ];
    const usage = (await workspaces.getUsage({ workspaceId: ws })).usage!;
    assert.equal(usage.gpus, 3);
    assert.equal(usage.gpuWeight, 5 / 7);
    assert.deepEqual(usage.migSlicesPerProfile, { "1g.10gb": 2, "3g.40gb": 1 });
    // A whole GPU would make 12/7; two more 1g slices would pass max_gpus (7/7) but not 3 per profile.
    await expectCode(create(ws, "whole", { gpuCount: 1 }), Code.ResourceExhausted, "max_gpus");
    await expectCode(
      create(ws, "c", { gpuCount: 2, migProfile: "1g.10gb" }),
      Code.ResourceExhausted,
      'max_mig_slices_per_profile["1g.10gb"]',
    );
    made.push(await create(ws, "c", { gpuCount: 1, migProfile: "1g.10gb" }));
    assert.equal((await workspaces.getUsage({ workspaceId: ws })).usage!.gpuWeight, 6 / 7);
    await expectCode(
      workspaces.setResourceQuota({ quota: { workspaceId: ws, maxMigSlicesPerProfile: { "one slice": 1 } } }),
      Code.InvalidArgument,
      "max_mig_slices_per_profile",
    );
    for (const m of made) await envs.deleteEnvironment({ id: m.environment!.id });
  });

  it("marks the slices of a GPU with a critical XID, and fails environments whose GPU left MIG mode", async () => {
    const host = await newHost("mig-faults");
    const layout = sliced("mig-faults", 0, [
      ["1g.10gb", 9984],
      ["1g.10gb", 9984],
    ]);
    const first = new WorkloadAgent(server, host.token, host.id, layout);
    await first.welcome;
    const ws = await workspace("mig-faults-team");
    const env = (await create(ws, "on-slice", { gpuCount: 1, migProfile: "1g.10gb" })).environment!;
    await status(env.id, EnvironmentStatus.RUNNING);
    await first.close();

    // XID 79 on the parent: it and both slices are UNHEALTHY, the slices saying whose fault it is.
    // A slice's sample has its memory and no utilisation, as nvidia-smi reports a MIG device.
    const faulty = new FakeAgent(server, host.token);
    await faulty.hello(host.id, layout);
    await faulty.beat([
      { uuid: "GPU-mig-faults-0", index: 0, xid: 79 },
      { uuid: "MIG-mig-faults-0-1", index: 1001, memUsed: 512n * MiB },
    ]);
    const list = async () => (await gpus.listGpus({ hostId: host.id })).gpus;
    const sick = await eventually(
      "the parent and its slices to be UNHEALTHY",
      async () => {
        const l = await list();
        return l.every((g) => g.status === GpuStatus.UNHEALTHY) && l;
      },
      rounds,
    );
    assert.deepEqual(sick[1]!.healthReasons, ["its GPU GPU-mig-faults-0: xid 79: GPU has fallen off the bus"]);
    const sample = sick[2]!.latestSample?.metrics;
    assert.equal(sample?.memoryUsedBytes, 512n * MiB);
    assert.equal(sample?.gpuUtilizationPercent, undefined);
    // Re-admitting the parent re-admits its slices.
    await gpus.updateGpu({ gpu: { id: sick[0]!.id, status: GpuStatus.AVAILABLE }, updateMask: { paths: ["status"] } });
    assert.deepEqual(
      (await list()).map((g) => GpuStatus[g.status]),
      ["AVAILABLE", "ALLOCATED", "AVAILABLE"],
    );
    faulty.close();

    // The operator turns MIG mode off: the agent reports GPU 0 whole, and the slice held is gone.
    const whole = new WorkloadAgent(server, host.token, host.id, [{ index: 0, uuid: "GPU-mig-faults-0" }], new Map([[env.id, 1n]]));
    agents.push(whole);
    await whole.welcome;
    const failed = await status(env.id, EnvironmentStatus.FAILED);
    assert.match(failed.statusMessage, /GPU 0 \(GPU-mig-faults-0\) left MIG mode: its MIG slice MIG-mig-faults-0-0 \(1g\.10gb\) is gone/);
    const after = await list();
    // The free slice's row went with the layout; the held one stays OFFLINE, freed by the failure.
    assert.deepEqual(
      after.map((g) => [g.index, GpuStatus[g.status], g.environmentId]),
      [
        [0, "AVAILABLE", ""],
        [1000, "OFFLINE", ""],
      ],
    );
    assert.equal(after[0]!.migEnabled, false);
    // The whole GPU is schedulable again.
    const next = (await create(ws, "whole-again", { gpuCount: 1 })).environment!;
    assert.equal(next.gpuIds[0], after[0]!.id);
  });

  it("survives re-partitions: new UUIDs at the same indexes, a GPU put in MIG mode while held whole, under a fault", async () => {
    const host = await newHost("mig-layouts");
    const ws = await workspace("mig-layouts-team");
    const layout = (tag: string, profiles: string[]) =>
      sliced(
        "mig-layouts",
        0,
        profiles.map((p) => [p, 9984] as [string, number]),
        tag,
      );
    const list = async () => (await gpus.listGpus({ hostId: host.id, pageSize: 100 })).gpus;
    // GPU 0 whole, held by an environment; then the operator puts it in MIG mode under it.
    const whole = new WorkloadAgent(server, host.token, host.id, [{ index: 0, uuid: "GPU-mig-layouts-0" }]);
    await whole.welcome;
    const onWhole = (await create(ws, "on-whole", { gpuCount: 1 })).environment!;
    await status(onWhole.id, EnvironmentStatus.RUNNING);
    await whole.close();
    const a = new WorkloadAgent(server, host.token, host.id, layout("-a", ["1g.10gb", "1g.10gb"]), new Map([[onWhole.id, 1n]]));
    await a.welcome;
    // Its new slices are held with it until it fails, so nobody else gets them meanwhile.
    await expectCode(create(ws, "too-soon", { gpuCount: 1, migProfile: "1g.10gb" }), Code.ResourceExhausted);
    const failed = await status(onWhole.id, EnvironmentStatus.FAILED);
    assert.match(failed.statusMessage, /GPU 0 \(GPU-mig-layouts-0\) was put in MIG mode: it can no longer be used whole/);
    const held = (await create(ws, "held", { gpuCount: 1, migProfile: "1g.10gb" })).environment!;
    await status(held.id, EnvironmentStatus.RUNNING);
    await a.close();

    // Two re-partitions in a row, each with new UUIDs at the same device indexes, one slice still held.
    for (const tag of ["-b", "-c"]) {
      const next = new WorkloadAgent(server, host.token, host.id, layout(tag, ["1g.10gb", "1g.10gb", "1g.10gb"]), new Map([[held.id, 1n]]));
      agents.push(next);
      await next.welcome;
      const rows = await list();
      assert.deepEqual(
        rows.filter((g) => g.status !== GpuStatus.OFFLINE).map((g) => g.uuid),
        ["GPU-mig-layouts-0", ...[0, 1, 2].map((d) => `MIG-mig-layouts${tag}-0-${d}`)],
        `layout ${tag}`,
      );
      // Gone slices nobody held are deleted; the held one stays, OFFLINE, parked below index 0.
      assert.deepEqual(
        rows.filter((g) => g.status === GpuStatus.OFFLINE).map((g) => [g.uuid, g.environmentId, g.index < 0]),
        [["MIG-mig-layouts-a-0-0", held.id, true]],
      );
      await next.close();
    }

    // A critical XID on the GPU: its slices are UNHEALTHY, the gone one not revived; a new layout's
    // slices are born UNHEALTHY, and no slice is re-admitted before its GPU.
    const faulty = new FakeAgent(server, host.token);
    await faulty.hello(host.id, layout("-c", ["1g.10gb", "1g.10gb", "1g.10gb"]));
    await faulty.beat([{ uuid: "GPU-mig-layouts-0", index: 0, xid: 79 }]);
    await eventually(
      "the GPU's slices to be UNHEALTHY",
      async () => (await list()).filter((g) => g.status === GpuStatus.UNHEALTHY).length === 4,
      rounds,
    );
    faulty.close();
    const d = new WorkloadAgent(server, host.token, host.id, layout("-d", ["3g.40gb"]));
    agents.push(d);
    await d.welcome;
    const rows = await list();
    const fresh = rows.find((g) => g.uuid === "MIG-mig-layouts-d-0-0")!;
    assert.equal(GpuStatus[fresh.status], "UNHEALTHY");
    assert.deepEqual(fresh.healthReasons, ["its GPU GPU-mig-layouts-0: xid 79: GPU has fallen off the bus"]);
    assert.equal(GpuStatus[rows.find((g) => g.uuid === "MIG-mig-layouts-a-0-0")!.status], "OFFLINE");
    await expectCode(
      gpus.updateGpu({ gpu: { id: fresh.id, status: GpuStatus.AVAILABLE }, updateMask: { paths: ["status"] } }),
      Code.FailedPrecondition,
      "re-admit that GPU",
    );
  });

  it("takes a re-partition into the inventory at the agent's next reading (the SDK says hello again)", async () => {
    const host = await newHost("mig-repartition");
    const layouts = [
      sliced("mig-repartition", 0, [["7g.80gb", 81152]]),
      sliced(
        "mig-repartition",
        0,
        [
          ["3g.40gb", 40448],
          ["2g.20gb", 20096],
          ["1g.10gb", 9984],
        ],
        "-b",
      ),
    ];
    let current = 0;
    const session = new AgentSession({
      servers: [server.baseUrl],
      hostId: host.id,
      token: host.token,
      agentVersion: "0.1.0-test",
      capacity: { cpuMillicores: 1000n, memoryBytes: 1n << 30n, diskBytes: 1n << 30n },
      read: async () => ({
        gpus: layouts[current]!.map((g) => ({ model: H100, memoryBytes: 80n << 30n, ...g })),
        heartbeat: { host: { cpuUtilizationPercent: 1 } },
      }),
      intervalMs: 50,
    });
    const stop = new AbortController();
    const running = session.run(stop.signal);
    const profiles = async () =>
      (await gpus.listGpus({ hostId: host.id, pageSize: 100 })).gpus
        .filter((g) => g.status !== GpuStatus.OFFLINE)
        .map((g) => g.mig?.profile ?? "");
    await eventually("the first layout", async () => (await profiles()).join() === ",7g.80gb");
    current = 1;
    await eventually("the second layout", async () => (await profiles()).join() === ",3g.40gb,2g.20gb,1g.10gb");
    stop.abort();
    await running;
  });
});
