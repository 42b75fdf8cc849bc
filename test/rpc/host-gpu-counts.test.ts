// A host's available GPU count agrees with its GPUs' statuses: an OFFLINE host's GPUs read OFFLINE,
// so it has none available (the CLI showed "FREE 8/8" beside "AVAILABLE 0").
import { strict as assert } from "node:assert";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

describe("hosts: available GPUs as their GPUs say", () => {
  let server: TestServer;
  let clock: ManualClock;

  before(async () => {
    clock = new ManualClock(new Date("2026-12-01T00:00:00Z"));
    server = await startTestServer({ clock, env: { HOST_GRACE_SECONDS: "40" } });
  });
  after(() => server.close());

  const available = async (id: string) => {
    const [{ host }, { gpus }] = await Promise.all([
      server.client(HostService).getHost({ id }),
      server.client(GpuService).listGpus({ hostId: id }),
    ]);
    const listed = await server.client(HostService).listHosts({});
    return {
      status: HostStatus[host!.status],
      count: host!.availableGpuCount,
      listedCount: listed.hosts.find((h) => h.id === id)!.availableGpuCount,
      gpusAvailable: gpus.filter((g) => g.status === GpuStatus.AVAILABLE).length,
      total: host!.gpuCount,
    };
  };

  it("counts none of an OFFLINE host's GPUs as available", async () => {
    // Never heard from: OFFLINE, with GPUs an admin created by hand.
    const { host } = await server.client(HostService).createHost({ name: "silent", address: "10.2.0.1" });
    for (let i = 0; i < 8; i++)
      await server.client(GpuService).createGpu({ hostId: host!.id, index: i, uuid: `GPU-silent-${i}`, model: "m", memoryBytes: 1n });
    assert.deepEqual(await available(host!.id), { status: "OFFLINE", count: 0, listedCount: 0, gpusAvailable: 0, total: 8 });
  });

  it("counts them while the host is ONLINE, and not once it went OFFLINE", async () => {
    const { host, agentToken } = await server.client(HostService).createHost({ name: "talker", address: "10.2.0.2" });
    const agent = new WorkloadAgent(
      server,
      agentToken,
      host!.id,
      [0, 1].map((i) => ({ index: i, uuid: `GPU-talker-${i}` })),
    );
    try {
      await agent.welcome;
      await agent.beat();
      await server.app.maintain();
      assert.deepEqual(await available(host!.id), { status: "ONLINE", count: 2, listedCount: 2, gpusAvailable: 2, total: 2 });
      await agent.close();
      clock.advance(60_000);
      await server.app.maintain();
      assert.deepEqual(await available(host!.id), { status: "OFFLINE", count: 0, listedCount: 0, gpusAvailable: 0, total: 2 });
    } finally {
      await agent.close();
    }
  });
});
