// WatchGpuTelemetry starts with the latest known sample of each GPU it covers, at once, instead of
// leaving the watcher with nothing until the next heartbeat (up to 10 s).
import { strict as assert } from "node:assert";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

describe("WatchGpuTelemetry: the latest samples first", () => {
  let server: TestServer;
  let agent: WorkloadAgent;
  let other: WorkloadAgent;
  let hostId: string;

  const GPUS = [0, 1].map((i) => ({ index: i, uuid: `GPU-watch-${i}` }));

  before(async () => {
    server = await startTestServer({ clock: new ManualClock(new Date("2026-12-01T00:00:00Z")) });
    const hosts = server.client(HostService);
    const a = await hosts.createHost({ name: "watch-host", address: "10.1.0.10" });
    hostId = a.host!.id;
    agent = new WorkloadAgent(server, a.agentToken, hostId, GPUS);
    const b = await hosts.createHost({ name: "watch-other", address: "10.1.0.11" });
    other = new WorkloadAgent(server, b.agentToken, b.host!.id, [{ index: 0, uuid: "GPU-other-0" }]);
    await Promise.all([agent.welcome, other.welcome]);
    await agent.beat(GPUS.map((g) => ({ ...g, util: 40 + g.index })));
    await other.beat([{ index: 0, uuid: "GPU-other-0", util: 7 }]);
  });
  after(async () => {
    await agent?.close();
    await other?.close();
    await server?.close();
  });

  /** The first `n` messages of a watch, or a failure if they do not come within `ms` (no heartbeat is sent meanwhile). */
  async function first(request: { gpuId?: string; hostId?: string }, n: number, ms = 2000) {
    const stop = new AbortController();
    const timer = setTimeout(() => stop.abort(), ms);
    const got: { uuid: string; util: number | undefined; gpuId: string; hostId: string }[] = [];
    try {
      for await (const { sample } of server.client(GpuService).watchGpuTelemetry(request, { signal: stop.signal })) {
        got.push({ uuid: sample!.gpuUuid, util: sample!.metrics?.gpuUtilizationPercent, gpuId: sample!.gpuId, hostId: sample!.hostId });
        if (got.length === n) break;
      }
    } catch (err) {
      if (!stop.signal.aborted) throw err;
    } finally {
      clearTimeout(timer);
      stop.abort();
    }
    assert.equal(got.length, n, `got ${got.length} of ${n} samples within ${ms} ms: ${JSON.stringify(got)}`);
    return got.sort((x, y) => (x.uuid < y.uuid ? -1 : 1));
  }

  it("sends a host's GPUs' latest samples on subscribe", async () => {
    const got = await first({ hostId }, 2);
    assert.deepEqual(
      got.map((s) => [s.uuid, s.util, s.hostId]),
      [
        ["GPU-watch-0", 40, hostId],
        ["GPU-watch-1", 41, hostId],
      ],
    );
  });

  it("sends one GPU's latest sample, and every GPU's without a filter", async () => {
    const { gpus } = await server.client(GpuService).listGpus({ hostId });
    const gpu = gpus.find((g) => g.uuid === "GPU-watch-1")!;
    const one = await first({ gpuId: gpu.id }, 1);
    assert.deepEqual(
      one.map((s) => [s.uuid, s.util, s.gpuId]),
      [["GPU-watch-1", 41, gpu.id]],
    );
    const all = await first({}, 3);
    assert.deepEqual(
      all.map((s) => s.uuid),
      ["GPU-other-0", "GPU-watch-0", "GPU-watch-1"],
    );
  });

  it("goes on with new samples, each once", async () => {
    const stop = new AbortController();
    const utils: (number | undefined)[] = [];
    const watching = (async () => {
      for await (const { sample } of server.client(GpuService).watchGpuTelemetry({ hostId }, { signal: stop.signal })) {
        if (sample!.gpuUuid !== "GPU-watch-0") continue;
        utils.push(sample!.metrics?.gpuUtilizationPercent);
        if (utils.length === 1) await agent.beat([{ ...GPUS[0]!, util: 90 }]);
        if (utils.length === 2) break;
      }
    })();
    await watching;
    stop.abort();
    assert.deepEqual(utils, [40, 90]);
  });
});
