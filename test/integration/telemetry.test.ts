import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { timestampFromDate, durationFromMs } from "@bufbuild/protobuf/wkt";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

/** A test server on `clock` with one host, whose agent said hello with one GPU. */
async function serverWithOneGpu(clock: ManualClock, name: string, uuid: string) {
  const server = await startTestServer({ clock });
  const gpus = server.client(GpuService);
  const { host, agentToken } = await server.client(HostService).createHost({ name, address: "h" });
  const agent = new FakeAgent(server, agentToken);
  await agent.hello(host!.id, [{ index: 0, uuid }]);
  return { server, gpus, agent, gpuId: (await gpus.listGpus({ hostId: host!.id })).gpus[0]!.id };
}

describe("GPU telemetry history", () => {
  const t0 = new Date("2026-11-30T12:00:00Z");
  let server: TestServer;
  let clock: ManualClock;
  let agent: FakeAgent;
  let gpuId: string;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;

  before(async () => {
    clock = new ManualClock(t0);
    ({ server, gpus, agent, gpuId } = await serverWithOneGpu(clock, "telemetry-host", "GPU-t-0"));
  });
  after(async () => {
    agent.close();
    await server.close();
  });

  const query = (startMs: number, endMs: number, stepMs: number) =>
    gpus.getGpuTelemetry({
      gpuId,
      startTime: timestampFromDate(new Date(t0.getTime() + startMs)),
      endTime: timestampFromDate(new Date(t0.getTime() + endMs)),
      step: durationFromMs(stepMs),
    });

  it("stores one row per GPU per interval and answers any coarser step with exact averages and maxima", async () => {
    await agent.beat([{ uuid: "GPU-t-0", index: 0, util: 10, temp: 50, memUsed: 1000n }]);
    clock.advance(5_000);
    await agent.beat([{ uuid: "GPU-t-0", index: 0, util: 30, temp: 60 }]);
    clock.advance(7_000); // 12 s: the next 10 s bucket
    await agent.beat([{ uuid: "GPU-t-0", index: 0, util: 50, temp: 40 }]);
    clock.advance(10_000);
    await server.app.maintain();

    const rows = await server.app.orm.em.fork().getConnection().execute("select count(*)::int as n from gpu_telemetry");
    assert.equal(rows[0].n, 2, "three samples, two stored rows");

    const fine = await query(0, 60_000, 10_000);
    assert.deepEqual(
      fine.buckets.map((b) => [b.startTime?.seconds, b.sampleCount, b.average?.gpuUtilizationPercent, b.maximum?.gpuUtilizationPercent]),
      [
        [BigInt(t0.getTime() / 1000), 2n, 20, 30],
        [BigInt(t0.getTime() / 1000 + 10), 1n, 50, 50],
      ],
    );
    // memory_used was reported once: its average is over that one sample, not all three.
    assert.equal(fine.buckets[0]!.average?.memoryUsedBytes, 1000n);
    assert.equal(fine.buckets[1]!.average?.memoryUsedBytes, undefined);

    const coarse = await query(0, 60_000, 60_000);
    assert.equal(coarse.buckets.length, 1);
    assert.equal(coarse.buckets[0]!.sampleCount, 3n);
    assert.equal(coarse.buckets[0]!.average?.gpuUtilizationPercent, 30);
    assert.equal(coarse.buckets[0]!.maximum?.temperatureCelsius, 60);
    assert.equal((await query(60_000, 120_000, 10_000)).buckets.length, 0);
  });

  it("counts a reading the agent resends (its ack was lost) once", async () => {
    const sent = timestampFromDate(clock.now());
    await agent.beat([{ uuid: "GPU-t-0", index: 0, util: 70 }], sent);
    await agent.beat([{ uuid: "GPU-t-0", index: 0, util: 70 }], sent);
    clock.advance(10_000);
    await server.app.maintain();
    const from = new Date(Math.floor(Number(sent.seconds) / 10) * 10_000); // the 10 s bucket holding it
    const res = await gpus.getGpuTelemetry({
      gpuId,
      startTime: timestampFromDate(from),
      endTime: timestampFromDate(new Date(from.getTime() + 10_000)),
      step: durationFromMs(10_000),
    });
    assert.deepEqual(
      res.buckets.map((b) => b.sampleCount),
      [1n],
    );
  });

  it("refuses bad ranges and steps, and unknown GPUs", async () => {
    await expectCode(gpus.getGpuTelemetry({ gpuId, startTime: { seconds: 10n ** 15n, nanos: 0 } }), Code.InvalidArgument, "start_time");
    await expectCode(gpus.getGpuTelemetry({ gpuId, endTime: { seconds: 1n, nanos: -5 } }), Code.InvalidArgument, "end_time");
    await expectCode(query(0, 60_000, 500), Code.InvalidArgument, "step");
    await expectCode(query(60_000, 0, 10_000), Code.InvalidArgument, "end_time");
    await expectCode(query(0, 86_400_000 * 30, 1_000), Code.InvalidArgument, "at most 10000 buckets");
    await expectCode(gpus.getGpuTelemetry({ gpuId: "00000000-0000-4000-8000-000000000000" }), Code.NotFound);
  });

  it("drops history older than the retention period", async () => {
    clock.advance(8 * 24 * 3_600_000);
    await server.app.maintain();
    assert.equal((await query(0, 60_000, 60_000)).buckets.length, 0);
  });
});

describe("GPU telemetry history rollup", () => {
  const t0 = new Date("2026-11-30T12:00:00Z"); // on a 5-minute boundary
  let server: TestServer;
  let clock: ManualClock;
  let agent: FakeAgent;
  let gpuId: string;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;

  before(async () => {
    clock = new ManualClock(t0);
    // The defaults: 10 s buckets, rolled up into 5-minute ones after 24 h.
    ({ server, gpus, agent, gpuId } = await serverWithOneGpu(clock, "rollup-host", "GPU-r-0"));
  });
  after(async () => {
    agent.close();
    await server.close();
  });

  const rows = async () =>
    (
      await server.app.orm.em
        .fork()
        .getConnection()
        .execute<{ at: number; n: number }[]>(
          "select extract(epoch from bucket_start)::int - ? as at, sample_count as n from gpu_telemetry order by 1",
          [t0.getTime() / 1000],
        )
    ).map((r) => [r.at, r.n]);
  const query = (stepMs: number) =>
    gpus.getGpuTelemetry({
      gpuId,
      startTime: timestampFromDate(t0),
      endTime: timestampFromDate(new Date(t0.getTime() + 600_000)),
      step: durationFromMs(stepMs),
    });
  const beatAt = async (offsetMs: number, sample: { util: number; temp: number; memUsed?: bigint }) => {
    clock.advance(t0.getTime() + offsetMs - clock.now().getTime());
    await agent.beat([{ uuid: "GPU-r-0", index: 0, ...sample }]);
  };

  it("merges day-old rows into 5-minute buckets that answer every 5-minute step as before", async () => {
    await beatAt(0, { util: 10, temp: 50, memUsed: 1000n });
    await beatAt(5_000, { util: 30, temp: 60 });
    await beatAt(12_000, { util: 50, temp: 40 });
    await beatAt(125_000, { util: 90, temp: 70 });
    await beatAt(301_000, { util: 20, temp: 45 });
    clock.advance(t0.getTime() + 320_000 - clock.now().getTime());
    await server.app.maintain(); // writes the buckets; the rollup finds nothing a day old
    assert.deepEqual(await rows(), [
      [0, 2],
      [10, 1],
      [120, 1],
      [300, 1],
    ]);
    const before = await query(300_000);
    assert.deepEqual(
      before.buckets.map((b) => [b.sampleCount, b.average?.gpuUtilizationPercent, b.maximum?.temperatureCelsius]),
      [
        [4n, 45, 70],
        [1n, 20, 45],
      ],
    );

    clock.advance(25 * 3_600_000);
    await server.app.maintain();
    // The first 5 minutes' three rows are one now; the next bucket held one row and stays as it was.
    assert.deepEqual(await rows(), [
      [0, 4],
      [300, 1],
    ]);
    const after = await query(300_000);
    assert.deepEqual(after.buckets, before.buckets);
    // memory_used was reported once of four samples: its average is still over that one.
    assert.equal(after.buckets[0]!.average?.memoryUsedBytes, 1000n);
    // A finer step now sees the rolled-up buckets at their starts.
    assert.deepEqual(
      (await query(10_000)).buckets.map((b) => [Number(b.startTime!.seconds) - t0.getTime() / 1000, b.sampleCount]),
      [
        [0, 4n],
        [300, 1n],
      ],
    );

    clock.advance(2 * 3_600_000);
    await server.app.maintain();
    assert.deepEqual(await rows(), [
      [0, 4],
      [300, 1],
    ]);
  });
});
