import type { MikroORM } from "@mikro-orm/postgresql";
import { bulkSql } from "../platform/bulk-sql.js";
import { InvalidArgumentError } from "../errors.js";
import type { Clock } from "../platform/clock.js";
import type { GpuMetrics, GpuSampleRecord } from "./latest-samples.js";
import type { MetricStat } from "./telemetry-bucket.js";

export interface HistoryBucket {
  start: Date;
  sampleCount: number;
  average: GpuMetrics;
  maximum: GpuMetrics;
}

interface OpenBucket {
  hostId: string;
  uuid: string;
  start: number;
  count: number;
  stats: Record<string, MetricStat>;
}

/** At most this many buckets in one GetGpuTelemetry answer. */
export const MAX_BUCKETS = 10_000;

/** History older than `afterMs` is merged into buckets `widthMs` wide (see TelemetryHistory.compact). */
export interface TelemetryRollup {
  afterMs: number;
  widthMs: number;
}

/** How much bucket time one compaction statement takes on (whole rollup buckets). */
const COMPACT_CHUNK_MS = 15 * 60_000;
/** Where a process's first compaction starts: this far before the rollup age. */
const COMPACT_FIRST_LOOKBACK_MS = 24 * 3_600_000;

/**
 * GPU telemetry history, downsampled as it arrives: samples of one GPU within one resolution
 * interval fold into a single row (count, sum and max per metric). Closed intervals are written in
 * one INSERT per flush, however many GPUs reported.
 */
export class TelemetryHistory {
  private open = new Map<string, OpenBucket>();
  /** Where the last compaction of this process stopped (epoch ms). */
  private compactedTo: number | undefined;

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    readonly resolutionMs: number,
    private readonly retentionMs: number,
    private readonly rollup?: TelemetryRollup,
  ) {}

  record(hostId: string, sample: GpuSampleRecord): void {
    const key = `${hostId}/${sample.gpuUuid}`;
    const start = Math.floor(sample.time.getTime() / this.resolutionMs) * this.resolutionMs;
    if (!Number.isFinite(start)) return; // callers pass valid times; a bad one must not poison a batch
    let bucket = this.open.get(key);
    if (bucket && bucket.start !== start) {
      // The interval moved on (or a late sample belongs to another): park this bucket under a key
      // of its own until the flush, merging with one parked there before.
      this.park(bucket);
      bucket = this.open.get(`${key}@${start}`);
      if (bucket) this.open.delete(`${key}@${start}`);
      else bucket = { hostId, uuid: sample.gpuUuid, start, count: 0, stats: {} };
      this.open.set(key, bucket);
    }
    if (!bucket) {
      bucket = { hostId, uuid: sample.gpuUuid, start, count: 0, stats: {} };
      this.open.set(key, bucket);
    }
    bucket.count++;
    // The hot path: thousands of samples a second, so no intermediate objects.
    const metrics = sample.metrics as Record<string, number | undefined>;
    for (const metric in metrics) {
      const value = metrics[metric];
      if (value === undefined || !Number.isFinite(value)) continue;
      const stat = bucket.stats[metric];
      if (stat) {
        stat[0]++;
        stat[1] += value;
        if (value > stat[2]) stat[2] = value;
      } else bucket.stats[metric] = [1, value, value];
    }
  }

  /** Keeps a finished bucket under a key of its own until a flush writes it. */
  private park(bucket: OpenBucket): void {
    const key = `${bucket.hostId}/${bucket.uuid}@${bucket.start}`;
    const parked = this.open.get(key);
    if (parked) {
      parked.count += bucket.count;
      merge(parked.stats, bucket.stats);
    } else this.open.set(key, bucket);
  }

  /** Writes every bucket whose interval has ended (all of them with `everything`, at shutdown). */
  async flush(everything = false): Promise<number> {
    const current = Math.floor(this.clock.now().getTime() / this.resolutionMs) * this.resolutionMs;
    const done: OpenBucket[] = [];
    for (const [key, bucket] of this.open) {
      if (everything || bucket.start < current) {
        done.push(bucket);
        this.open.delete(key);
      }
    }
    if (done.length === 0) return 0;
    // Rows for GPUs deleted meanwhile fall out of the join.
    try {
      await bulkSql(
        this.orm,
        `insert into gpu_telemetry (gpu_id, bucket_start, sample_count, stats)
       select g.id, to_timestamp(v.start / 1000.0), v.n, v.stats
       from jsonb_to_recordset(?::jsonb) as v(host_id uuid, uuid text, start bigint, n int, stats jsonb)
       join gpus g on g.host_id = v.host_id and g.uuid = v.uuid`,
        [JSON.stringify(done.map((b) => ({ host_id: b.hostId, uuid: b.uuid, start: b.start, n: b.count, stats: b.stats })))],
      );
    } catch (err) {
      // Kept for the next flush rather than lost (merged with anything that arrived meanwhile).
      for (const b of done) this.park(b);
      throw err;
    }
    return done.length;
  }

  /** Buckets of `step` within [from, to), each the exact average and maximum of the samples in it. */
  async query(gpuId: string, from: Date, to: Date, stepMs: number): Promise<HistoryBucket[]> {
    if (stepMs < 1000) throw InvalidArgumentError.field("step", "must be at least 1 second");
    if (to <= from) throw InvalidArgumentError.field("end_time", "must be after start_time");
    if ((to.getTime() - from.getTime()) / stepMs > MAX_BUCKETS) {
      throw InvalidArgumentError.field("step", `too small for the range: at most ${MAX_BUCKETS} buckets per call`);
    }
    const rows: { bucket_start: Date; sample_count: number; stats: Record<string, MetricStat> }[] = await this.orm.em
      .getConnection()
      .execute(
        `select bucket_start, sample_count, stats from gpu_telemetry
         where gpu_id = ? and bucket_start >= ? and bucket_start < ? order by bucket_start`,
        [gpuId, from, to],
      );
    const merged = new Map<number, { count: number; stats: Record<string, MetricStat> }>();
    for (const row of rows) {
      const slot = Math.floor((new Date(row.bucket_start).getTime() - from.getTime()) / stepMs);
      let m = merged.get(slot);
      if (!m) {
        m = { count: 0, stats: {} };
        merged.set(slot, m);
      }
      m.count += row.sample_count;
      merge(m.stats, row.stats);
    }
    return [...merged.entries()]
      .sort(([a], [b]) => a - b)
      .map(([slot, m]) => ({
        start: new Date(from.getTime() + slot * stepMs),
        sampleCount: m.count,
        average: Object.fromEntries(Object.entries(m.stats).map(([k, [n, sum]]) => [k, sum / n])),
        maximum: Object.fromEntries(Object.entries(m.stats).map(([k, [, , max]]) => [k, max])),
      }));
  }

  /**
   * Merges the rows of each GPU older than the rollup age into one row per rollup bucket (count,
   * sum and maximum add up as they do at any coarser step), so that a week of history at 10 s does
   * not keep 60,480 rows per GPU. Bucket time is taken 15 minutes at a time, from where the last
   * compaction of this process stopped (its first: a day before the rollup age) up to the rollup
   * age; a bucket that already holds one row is not touched, so running it again changes nothing.
   * Returns the rows merged away and those written in their place.
   */
  async compact(): Promise<{ merged: number; written: number }> {
    const done = { merged: 0, written: 0 };
    if (!this.rollup) return done;
    const { afterMs, widthMs } = this.rollup;
    const align = (ms: number) => Math.floor(ms / widthMs) * widthMs;
    const cutoff = align(this.clock.now().getTime() - afterMs);
    const chunk = Math.max(widthMs, align(COMPACT_CHUNK_MS));
    let from = this.compactedTo ?? align(cutoff - COMPACT_FIRST_LOOKBACK_MS);
    while (from < cutoff) {
      const to = Math.min(cutoff, from + chunk);
      const range = [new Date(from), new Date(to)];
      const width = widthMs / 1000;
      // The statement's CTEs share one snapshot: the rows deleted are exactly those merged.
      const [row] = await bulkSql<{ merged: number; written: number }>(
        this.orm,
        `with bins as (
           select gpu_id, to_timestamp(floor(extract(epoch from bucket_start) / ?) * ?) as bin
             from gpu_telemetry where bucket_start >= ? and bucket_start < ?
            group by 1, 2 having count(*) > 1),
         gone as (
           delete from gpu_telemetry t using bins b
            where t.bucket_start >= ? and t.bucket_start < ? and t.gpu_id = b.gpu_id
              and to_timestamp(floor(extract(epoch from t.bucket_start) / ?) * ?) = b.bin
           returning t.gpu_id, b.bin, t.sample_count, t.stats),
         per_metric as (
           select g.gpu_id, g.bin, e.key, sum((e.value->>0)::float8) as n, sum((e.value->>1)::float8) as s, max((e.value->>2)::float8) as m
             from gone g cross join lateral jsonb_each(g.stats) e group by 1, 2, 3),
         stats as (
           select gpu_id, bin, jsonb_object_agg(key, jsonb_build_array(n, s, m)) as stats from per_metric group by 1, 2),
         written as (
           insert into gpu_telemetry (gpu_id, bucket_start, sample_count, stats)
           select c.gpu_id, c.bin, c.n, coalesce(st.stats, '{}'::jsonb)
             from (select gpu_id, bin, sum(sample_count)::int as n from gone group by 1, 2) c
             left join stats st on st.gpu_id = c.gpu_id and st.bin = c.bin
           returning 1)
         select (select count(*) from gone)::int as merged, (select count(*) from written)::int as written`,
        [width, width, ...range, ...range, width, width],
      );
      done.merged += row!.merged;
      done.written += row!.written;
      from = to;
      this.compactedTo = to;
    }
    return done;
  }

  /** Deletes history older than the retention period; returns how many rows went. */
  async expire(): Promise<number> {
    const cutoff = new Date(this.clock.now().getTime() - this.retentionMs);
    const res = await this.orm.em.getConnection().execute("delete from gpu_telemetry where bucket_start < ?", [cutoff], "run");
    return (res as { affectedRows?: number }).affectedRows ?? 0;
  }
}

/** Adds the stats of `from` into `into` (counts and sums add up, maxima take the larger). */
function merge(into: Record<string, MetricStat>, from: Record<string, MetricStat>): void {
  for (const [metric, [n, sum, max]] of Object.entries(from)) {
    const s = into[metric];
    if (s) {
      s[0] += n;
      s[1] += sum;
      s[2] = Math.max(s[2], max);
    } else into[metric] = [n, sum, max];
  }
}
