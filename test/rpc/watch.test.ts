import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { WatchEventType } from "../../gen/remotegpu/v1/common_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus, type WatchHostsResponse } from "../../gen/remotegpu/v1/host_pb.js";
import type { WatchGpuTelemetryResponse } from "../../gen/remotegpu/v1/gpu_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

/** Reads a server stream one message at a time, with a deadline per read; a read that timed out is kept for the next call. */
function reader<T>(stream: AsyncIterable<T>) {
  const it = stream[Symbol.asyncIterator]();
  let pending: Promise<IteratorResult<T>> | undefined;
  return {
    next: async (ms = 3000): Promise<T> => {
      pending ??= it.next();
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        pending,
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("no message in time")), ms))),
      ]).finally(() => clearTimeout(timer));
      pending = undefined;
      if (r.done) throw new Error("stream ended");
      return r.value;
    },
  };
}

/**
 * Sends heartbeats until every watcher has seen one (its subscription has reached the server), then
 * reads whatever those heartbeats produced, so the test starts from empty watches.
 */
async function synced<T>(watches: ReturnType<typeof reader<T>>[], beat: () => Promise<void>): Promise<void> {
  const waiting = new Set(watches);
  for (let attempt = 0; waiting.size > 0; attempt++) {
    if (attempt === 50) throw new Error("watch never started");
    await beat();
    for (const w of [...waiting])
      await w.next(200).then(
        () => waiting.delete(w),
        () => undefined,
      );
  }
  for (const w of watches) {
    for (;;) {
      try {
        await w.next(200);
      } catch {
        break;
      }
    }
  }
}

describe("watches", () => {
  let server: TestServer;
  let clock: ManualClock;
  let hosts: ReturnType<typeof server.client<typeof HostService>>;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;
  const cancel = new AbortController();
  const agents: FakeAgent[] = [];

  before(async () => {
    clock = new ManualClock(new Date("2026-11-30T12:00:00Z"));
    server = await startTestServer({ clock });
    hosts = server.client(HostService);
    gpus = server.client(GpuService);
  });
  after(async () => {
    cancel.abort();
    for (const a of agents) a.close();
    await server.close();
  });

  it("WatchHosts sends the current hosts first, then every change as it commits", async () => {
    const existing = (await hosts.createHost({ name: "watch-existing", address: "h" })).host!;
    const watch = reader<WatchHostsResponse>(hosts.watchHosts({}, { signal: cancel.signal }));
    const initial = await watch.next();
    assert.equal(initial.type, WatchEventType.INITIAL);
    assert.equal(initial.host?.id, existing.id);

    const { host, agentToken } = await hosts.createHost({ name: "watch-new", address: "h" });
    assert.deepEqual([(await watch.next()).type, host!.name], [WatchEventType.ADDED, "watch-new"]);

    await hosts.cordonHost({ id: host!.id });
    const cordoned = await watch.next();
    assert.deepEqual([cordoned.type, cordoned.host?.schedulable], [WatchEventType.MODIFIED, false]);

    const agent = new FakeAgent(server, agentToken);
    agents.push(agent);
    await agent.hello(host!.id, [{ index: 0, uuid: "GPU-w-0" }]);
    const online = await watch.next();
    assert.deepEqual([online.type, online.host?.status, online.host?.gpuCount], [WatchEventType.MODIFIED, HostStatus.ONLINE, 1]);

    clock.advance(41_000);
    await server.app.maintain();
    const offline = await watch.next();
    assert.deepEqual([offline.host?.id, offline.host?.status], [host!.id, HostStatus.OFFLINE]);

    await agent.beat();
    await server.app.maintain();
    const back = await watch.next();
    assert.deepEqual([back.host?.id, back.host?.status], [host!.id, HostStatus.ONLINE]);

    await hosts.deleteHost({ id: existing.id });
    const deleted = await watch.next();
    assert.deepEqual([deleted.type, deleted.host?.name], [WatchEventType.DELETED, "watch-existing"]);
  });

  it("WatchHosts for one host sees only that host", async () => {
    const a = (await hosts.createHost({ name: "watch-only-a", address: "h" })).host!;
    const b = (await hosts.createHost({ name: "watch-only-b", address: "h" })).host!;
    const watch = reader<WatchHostsResponse>(hosts.watchHosts({ hostId: b.id }, { signal: cancel.signal }));
    assert.equal((await watch.next()).host?.id, b.id);
    await hosts.cordonHost({ id: a.id });
    await hosts.cordonHost({ id: b.id });
    const next = await watch.next();
    assert.deepEqual([next.type, next.host?.id], [WatchEventType.MODIFIED, b.id]);
    await expectCode(reader(hosts.watchHosts({ hostId: "00000000-0000-4000-8000-000000000000" })).next(), Code.NotFound);
  });

  it("WatchHosts shows what each hello says about running environments", async () => {
    const { host, agentToken } = await hosts.createHost({ name: "watch-runtime", address: "h" });
    const watch = reader<WatchHostsResponse>(hosts.watchHosts({ hostId: host!.id }, { signal: cancel.signal }));
    assert.equal((await watch.next()).type, WatchEventType.INITIAL);
    const reason = "no container engine answers and process mode was not asked for";
    const first = new FakeAgent(server, agentToken);
    agents.push(first);
    await first.hello(host!.id, [], { runtimeUnavailableReason: reason });
    const unable = (await watch.next()).host!;
    assert.deepEqual([unable.status, unable.runtimeUnavailableReason], [HostStatus.ONLINE, reason]);
    const second = new FakeAgent(server, agentToken);
    agents.push(second);
    await second.hello(host!.id, []);
    assert.equal((await watch.next()).host?.runtimeUnavailableReason, "");
  });

  it("WatchGpuTelemetry streams live samples of a GPU or a host, with the GPU's id", async () => {
    const { host, agentToken } = await hosts.createHost({ name: "watch-telemetry", address: "h" });
    const agent = new FakeAgent(server, agentToken);
    agents.push(agent);
    await agent.hello(host!.id, [
      { index: 0, uuid: "GPU-wt-0" },
      { index: 1, uuid: "GPU-wt-1" },
    ]);
    const gpu1 = (await gpus.listGpus({ hostId: host!.id })).gpus.find((g) => g.uuid === "GPU-wt-1")!;
    const byGpu = reader<WatchGpuTelemetryResponse>(gpus.watchGpuTelemetry({ gpuId: gpu1.id }, { signal: cancel.signal }));
    const byHost = reader<WatchGpuTelemetryResponse>(gpus.watchGpuTelemetry({ hostId: host!.id }, { signal: cancel.signal }));
    const syncBeat = () => agent.beat([{ uuid: "GPU-wt-1", index: 1, util: 0 }]);
    await synced([byGpu, byHost], syncBeat);

    await agent.beat([
      { uuid: "GPU-wt-0", index: 0, util: 11 },
      { uuid: "GPU-wt-1", index: 1, util: 22 },
    ]);
    const one = await byGpu.next();
    assert.deepEqual(
      [one.sample?.gpuId, one.sample?.gpuUuid, one.sample?.metrics?.gpuUtilizationPercent, one.dropped],
      [gpu1.id, "GPU-wt-1", 22, 0n],
    );
    const seen = [(await byHost.next()).sample?.gpuUuid, (await byHost.next()).sample?.gpuUuid];
    assert.deepEqual(seen.sort(), ["GPU-wt-0", "GPU-wt-1"]);
    await expectCode(reader(gpus.watchGpuTelemetry({ gpuId: "00000000-0000-4000-8000-000000000000" })).next(), Code.NotFound);
    await expectCode(reader(gpus.watchGpuTelemetry({ hostId: "00000000-0000-4000-8000-000000000000" })).next(), Code.NotFound);
  });

  it("a watcher that does not read loses old samples (counted), while heartbeats keep being acked", async () => {
    const { host, agentToken } = await hosts.createHost({ name: "watch-slow", address: "h" });
    const agent = new FakeAgent(server, agentToken);
    agents.push(agent);
    const uuids = Array.from({ length: 8 }, (_, i) => ({ index: i, uuid: `GPU-slow-${i}` }));
    await agent.hello(host!.id, uuids);
    const slow = reader<WatchGpuTelemetryResponse>(gpus.watchGpuTelemetry({ hostId: host!.id }, { signal: cancel.signal }));
    await synced([slow], () => agent.beat([{ ...uuids[0]!, util: 0 }]));

    // Every heartbeat is acked although nobody reads the watch: publishing never waits for a reader.
    for (let i = 0; i < 500; i++) await agent.beat(uuids.map((g) => ({ ...g, util: i % 100 })));

    let received = 0;
    let dropped = 0n;
    for (;;) {
      try {
        const m = await slow.next(300);
        received++;
        dropped += m.dropped;
      } catch {
        break;
      }
    }
    assert.equal(BigInt(received) + dropped, 4000n, "every sample was either delivered or counted as dropped");
    assert.ok(dropped > 0n, `some samples dropped (received ${received})`);
  });
});
