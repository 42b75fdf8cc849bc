// Scrape cost of the per-GPU series: how long GET /metrics/gpus takes to write, how big it is, and
// the longest stretch the event loop is held between two chunks (what heartbeats wait at most),
// for a fleet of N GPUs (8 per host) whose agents one replica holds. The rows a snapshot would read
// from PostgreSQL are given directly: what is measured is the scrape, which never queries.
//   npm run bench:metrics -- --gpus 10000,80000
import { parseArgs } from "node:util";
import type { MikroORM } from "@mikro-orm/postgresql";
import { createLogger } from "../../src/platform/logger.js";
import { FleetMetrics } from "../../src/telemetry/fleet-metrics.js";
import { LatestSamples } from "../../src/telemetry/latest-samples.js";

const { values } = parseArgs({
  options: { gpus: { type: "string", default: "1000,10000,80000" }, runs: { type: "string", default: "20" } },
});

async function measure(gpuCount: number, runs: number) {
  const hosts = Math.ceil(gpuCount / 8);
  const samples = new LatestSamples();
  const hostIds: string[] = [];
  const gpuRows: object[] = [];
  const hostRows: object[] = [];
  const now = new Date();
  for (let h = 0; h < hosts; h++) {
    const id = `00000000-0000-4000-8000-${String(h).padStart(12, "0")}`;
    hostIds.push(id);
    hostRows.push({ id, name: `gpu-node-${h}`, status: "ONLINE", schedulable: true, last_heartbeat_at: now });
    for (let i = 0; i < 8 && h * 8 + i < gpuCount; i++) {
      const uuid = `GPU-${h}-${i}-0000-0000-000000000000`;
      samples.recordGpu(id, {
        gpuUuid: uuid,
        index: i,
        time: now,
        metrics: {
          gpuUtilizationPercent: 50 + i,
          memoryUtilizationPercent: 20,
          memoryUsedBytes: 40 * 2 ** 30,
          memoryTotalBytes: 80 * 2 ** 30,
          temperatureCelsius: 60,
          powerDrawWatts: 400,
          powerLimitWatts: 700,
          smClockMhz: 1980,
          fanSpeedPercent: 0,
          eccCorrectedErrors: 0,
          eccUncorrectedErrors: 0,
          lastXid: 0,
        },
      });
      gpuRows.push({
        host_id: id,
        uuid,
        model: "NVIDIA H100 80GB HBM3",
        status: "ALLOCATED",
        environment: i % 2 ? `env-${h}` : null,
        workspace: i % 2 ? "team" : null,
      });
    }
  }
  const execute = async (sql: string) => (sql.includes("from gpus g left join") ? gpuRows : sql.includes("from hosts") ? hostRows : []);
  const orm = { em: { getConnection: () => ({ execute }) } } as unknown as MikroORM;
  const fleet = new FleetMetrics(
    {
      orm,
      clock: { now: () => new Date() },
      samples,
      heldHosts: () => hostIds,
      leads: () => false,
      lastReconcile: () => undefined,
      gpuCounts: async () => ({}),
      logger: createLogger("silent"),
    },
    "separate",
  );
  await fleet.refresh();
  let bytes = 0;
  const totals: number[] = [];
  let longest = 0;
  for (let r = 0; r < runs; r++) {
    bytes = 0;
    const started = performance.now();
    let t = started;
    for (const chunk of fleet.gpuChunks()) {
      bytes += Buffer.byteLength(chunk);
      const now = performance.now();
      longest = Math.max(longest, now - t);
      t = now;
    }
    totals.push(performance.now() - started);
  }
  totals.sort((a, b) => a - b);
  const series = [...fleet.gpuChunks()]
    .join("")
    .split("\n")
    .filter((l) => l && !l.startsWith("#")).length;
  return {
    gpuCount,
    series,
    mib: bytes / 2 ** 20,
    p50: totals[Math.floor(runs / 2)]!,
    longest,
  };
}

console.log("| GPUs | series | body MiB | whole write p50 ms | longest block ms |");
console.log("| ---: | ---: | ---: | ---: | ---: |");
for (const n of values.gpus!.split(",").map(Number)) {
  const r = await measure(n, Number(values.runs));
  console.log(`| ${r.gpuCount} | ${r.series} | ${r.mib.toFixed(1)} | ${r.p50.toFixed(0)} | ${r.longest.toFixed(0)} |`);
}
