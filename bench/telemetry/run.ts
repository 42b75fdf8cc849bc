// npm run bench:telemetry [-- --gpus 800 --hours 2]
// What telemetry history costs to keep, and what the rollup saves: `hours` of 10 s buckets for
// `gpus` GPUs (11 metrics each, as nvidia-smi reports them) written straight into PostgreSQL, then
// TelemetryHistory.compact() merging them into 5-minute buckets as the leader does once they are a
// day old. Prints rows and bytes per GPU before and after, what a week of history takes per GPU with
// and without the rollup, and how long the compaction took. Fails if any 5-minute bucket's count,
// sums or maxima differ after the compaction.
import { parseArgs } from "node:util";
import pg from "pg";
import { entities } from "../../src/entities.js";
import { ManualClock } from "../../src/platform/clock.js";
import { openDatabase } from "../../src/platform/database.js";
import { TelemetryHistory } from "../../src/telemetry/telemetry-history.js";
import { createTestDatabase } from "../../test/support/database.js";
import { freePort, serverEnv, spawnServer } from "../../test/support/child.js";

const { values } = parseArgs({
  options: {
    gpus: { type: "string", default: "800" },
    hours: { type: "string", default: "2" },
  },
});
const gpuCount = Number(values.gpus);
const hours = Number(values.hours);
const RESOLUTION_S = 10;
const ROLLUP_S = 300;
const DAY_MS = 86_400_000;

// Each metric with a plausible value for a busy 80 GB GPU; `s` varies it per bucket.
const METRICS: [string, string][] = [
  ["gpuUtilizationPercent", "(s % 100)"],
  ["memoryUtilizationPercent", "(s * 7 % 100)"],
  ["memoryUsedBytes", "(40000000000 + s * 1048576)"],
  ["memoryTotalBytes", "85899345920"],
  ["temperatureCelsius", "(55 + s % 30)"],
  ["powerDrawWatts", "(250.37 + s % 150)"],
  ["powerLimitWatts", "400"],
  ["smClockMhz", "(1410 - s % 200)"],
  ["fanSpeedPercent", "(30 + s % 40)"],
  ["eccCorrectedErrors", "0"],
  ["eccUncorrectedErrors", "0"],
];

/** Every 5-minute bucket's count, and each metric's count, sum and maximum, rounded: one digest. */
async function digest(db: pg.Client): Promise<string> {
  const { rows } = await db.query<{ d: string }>(
    `select md5(string_agg(line, ',' order by line)) as d from (
       select b.gpu_id || '@' || b.bin || ':' || b.n || ':' || coalesce(m.metrics, '') as line
         from (select gpu_id, floor(extract(epoch from bucket_start) / ${ROLLUP_S}) as bin, sum(sample_count) as n
                 from gpu_telemetry group by 1, 2) b
         left join (
           select gpu_id, bin, string_agg(key || '=' || n || '/' || round(s::numeric, 3) || '/' || m, ';' order by key) as metrics
             from (select t.gpu_id, floor(extract(epoch from t.bucket_start) / ${ROLLUP_S}) as bin, e.key,
                          sum((e.value->>0)::float8) as n, sum((e.value->>1)::float8) as s, max((e.value->>2)::float8) as m
                     from gpu_telemetry t cross join lateral jsonb_each(t.stats) e group by 1, 2, 3) per_metric
            group by 1, 2) m on m.gpu_id = b.gpu_id and m.bin = b.bin) lines`,
  );
  return rows[0]!.d;
}

async function size(db: pg.Client): Promise<{ rows: number; bytes: number }> {
  const { rows } = await db.query<{ rows: number; bytes: string }>(
    "select (select count(*)::int from gpu_telemetry) as rows, pg_total_relation_size('gpu_telemetry') as bytes",
  );
  return { rows: rows[0]!.rows, bytes: Number(rows[0]!.bytes) };
}

const db = await createTestDatabase();
const admin = new pg.Client({ connectionString: db.url });
try {
  // The server migrates the empty database; the history goes in afterwards.
  const server = spawnServer(
    serverEnv({
      DATABASE_URL: db.url,
      PORT: String(await freePort()),
      BIND_ADDRESS: "127.0.0.1",
      REMOTEGPU_ADMIN_TOKEN: "bench-admin-token-0123456789",
    }),
  );
  await server.listening(60_000);
  await server.kill();
  await admin.connect();
  await admin.query(
    `insert into hosts (id, name, address, labels, cpu_millicores, memory_bytes, disk_bytes, agent_version, status, status_message, schedulable, last_heartbeat_at, runtime, kubernetes_node_name, created_at, updated_at, version)
     select gen_random_uuid(), 'bench-' || i, '10.0.0.1', '{}', 64000, 1099511627776, 0, 'bench', 'ONLINE', '', true, now(), 'AGENT', '', now(), now(), 1
       from generate_series(0, $1::int - 1) i`,
    [Math.ceil(gpuCount / 8)],
  );
  await admin.query(
    `insert into gpus (id, host_id, index, uuid, model, memory_bytes, status, health_reasons, driver_version, cuda_version, created_at, updated_at, version)
     select gen_random_uuid(), h.id, g, 'GPU-' || h.id || '-' || g, 'NVIDIA H100 80GB HBM3', 85899345920, 'AVAILABLE', '[]', '550', '12.4', now(), now(), 1
       from hosts h cross join generate_series(0, 7) g limit $1`,
    [gpuCount],
  );
  // The history ends two days ago, so all of it is past the rollup age.
  const end = Math.floor((Date.now() - 2 * DAY_MS) / (ROLLUP_S * 1000)) * ROLLUP_S * 1000;
  const start = end - hours * 3_600_000;
  const stats = METRICS.map(([name, v]) => `'${name}', jsonb_build_array(1, ${v}, ${v})`).join(", ");
  const buckets = (hours * 3600) / RESOLUTION_S;
  for (let from = 0; from < buckets; from += 360) {
    await admin.query(
      `insert into gpu_telemetry (gpu_id, bucket_start, sample_count, stats)
       select g.id, to_timestamp($1::float8 / 1000) + s * interval '${RESOLUTION_S} s', 1, jsonb_build_object(${stats})
         from gpus g cross join generate_series($2::int, $3::int - 1) s`,
      [start, from, Math.min(buckets, from + 360)],
    );
  }
  await admin.query("vacuum full analyze gpu_telemetry");
  const before = await size(admin);
  const digestBefore = await digest(admin);

  const orm = await openDatabase(db.url, entities, 4);
  const clock = new ManualClock(new Date(end + DAY_MS + ROLLUP_S * 1000));
  const history = new TelemetryHistory(orm, clock, RESOLUTION_S * 1000, 7 * DAY_MS, { afterMs: DAY_MS, widthMs: ROLLUP_S * 1000 });
  const t = performance.now();
  const { merged, written } = await history.compact();
  const seconds = (performance.now() - t) / 1000;
  // A new leader's first compaction goes over the same day again: buckets of one row are left alone.
  const again = await new TelemetryHistory(orm, clock, RESOLUTION_S * 1000, 7 * DAY_MS, {
    afterMs: DAY_MS,
    widthMs: ROLLUP_S * 1000,
  }).compact();
  await orm.close();
  await admin.query("vacuum full analyze gpu_telemetry");
  const after = await size(admin);
  if ((await digest(admin)) !== digestBefore || merged !== before.rows || again.merged !== 0) {
    throw new Error(
      `correctness check failed: the 5-minute buckets changed, or rows were left unmerged (${merged} of ${before.rows} merged, ${again.merged} on a second run)`,
    );
  }

  const perGpuHour = (n: number) => n / gpuCount / hours;
  const rawDay = (before.bytes / gpuCount / hours) * 24;
  const rolledDay = (after.bytes / gpuCount / hours) * 24;
  const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
  console.log(
    [
      `### Telemetry history, ${gpuCount} GPUs × ${hours} h, 11 metrics per bucket\n`,
      "| history | rows per GPU-hour | bytes per row (table and indexes) | per GPU per day |",
      "| --- | --- | --- | --- |",
      `| ${RESOLUTION_S} s buckets, as written | ${perGpuHour(before.rows).toFixed(0)} | ${(before.bytes / before.rows).toFixed(0)} | ${mib(rawDay)} |`,
      `| ${ROLLUP_S / 60}-minute buckets, rolled up | ${perGpuHour(after.rows).toFixed(0)} | ${(after.bytes / after.rows).toFixed(0)} | ${mib(rolledDay)} |`,
      "",
      `A week of history per GPU (the default retention): ${mib(7 * rawDay)} at ${RESOLUTION_S} s; ${mib(rawDay + 6 * rolledDay)} with the last day at ${RESOLUTION_S} s and the rest rolled up (${((7 * rawDay) / (rawDay + 6 * rolledDay)).toFixed(1)}× less).`,
      `Compaction: ${merged} rows into ${written} in ${seconds.toFixed(1)} s (${(merged / seconds / 1000).toFixed(0)}k rows/s; ${((seconds / gpuCount / hours) * 1000).toFixed(2)} ms per GPU-hour of history). A new leader's first run over the same day merged ${again.merged}.`,
      "Every 5-minute bucket's count, sums and maxima: unchanged.",
    ].join("\n"),
  );
} finally {
  await admin.end().catch(() => undefined);
  await db.drop();
}
process.exit(0);
