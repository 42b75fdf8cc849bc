import type { MikroORM } from "@mikro-orm/postgresql";
import { judgeSample, type HealthMemory, type HealthThresholds } from "../gpu/gpu-health.js";
import type { Clock } from "../platform/clock.js";
import type { GpuSampleRecord, HostSampleRecord, LatestSamples } from "./latest-samples.js";
import { bulkSql, pgArray } from "../platform/bulk-sql.js";
import type { Feed } from "../platform/feed.js";
import type { TelemetryHistory } from "./telemetry-history.js";

/** A sample on its way to live watchers. */
export interface LiveSample {
  hostId: string;
  sample: GpuSampleRecord;
}

/** Bytes an environment's volume uses, as its host's agent measured them. */
export interface VolumeUsageRecord {
  environmentId: string;
  usedBytes: number;
}

/** Shares the latest samples with other replicas. */
export interface SampleRelay {
  record(hostId: string, host: HostSampleRecord | undefined, gpus: GpuSampleRecord[]): void;
  /** Sends what was recorded since the last flush; never throws. */
  flush(): Promise<void>;
  forgetHost(hostId: string): void;
}

/**
 * The hot path of the agent stream. A heartbeat only touches memory: the latest samples, the
 * host's last-seen time, and a GPU's health verdict when it changes. flush() writes what gathered
 * in a few statements, whatever the number of hosts.
 */
export class HeartbeatIngest {
  private lastSeen = new Map<string, Date>();
  private verdicts = new Map<string, { hostId: string; uuid: string; reasons: string[] }>();
  /** The newest volume figure per environment since the last flush, with the host that reported it. */
  private volumes = new Map<string, { hostId: string; usedBytes: number }>();
  /** Per GPU, what earlier samples said (see judgeSample). */
  private readonly health = new Map<string, HealthMemory>();

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly samples: LatestSamples,
    private readonly history: TelemetryHistory,
    private readonly thresholds: HealthThresholds,
    /** Live samples for watchers. */
    readonly live: Feed<LiveSample>,
    /** Told which hosts came back ONLINE through a heartbeat. */
    private readonly onRevived: (hostIds: string[]) => void = () => undefined,
    /** Shares latest samples with other replicas, when Redis is configured. */
    private readonly relay?: SampleRelay,
    /** Told how long each batch took to write: "last_seen" (times, verdicts, volumes), "telemetry". */
    private readonly timed: (batch: "last_seen" | "telemetry", seconds: number) => void = () => undefined,
  ) {}

  record(hostId: string, host: HostSampleRecord | undefined, gpus: GpuSampleRecord[]): void {
    this.lastSeen.set(hostId, this.clock.now());
    if (host) this.samples.recordHost(hostId, host);
    this.relay?.record(hostId, host, gpus);
    for (const sample of gpus) {
      this.samples.recordGpu(hostId, sample);
      this.history.record(hostId, sample);
      this.live.publish({ hostId, sample });
      const key = `${hostId}/${sample.gpuUuid}`;
      const { reasons, memory } = judgeSample(this.health.get(key), sample.metrics, this.thresholds);
      this.health.set(key, memory);
      if (reasons.length > 0) {
        const pending = this.verdicts.get(key);
        this.verdicts.set(key, { hostId, uuid: sample.gpuUuid, reasons: [...(pending?.reasons ?? []), ...reasons] });
      }
    }
  }

  /** Volume figures, sent now and then: kept until the next flush writes them all in one statement. */
  recordVolumes(hostId: string, volumes: VolumeUsageRecord[]): void {
    for (const v of volumes) this.volumes.set(v.environmentId, { hostId, usedBytes: v.usedBytes });
  }

  /** After an operator re-admits a GPU, a condition that still holds (heat) is reported again. */
  readmitted(hostId: string, uuid: string): void {
    const memory = this.health.get(`${hostId}/${uuid}`);
    if (memory) memory.overheated = false;
  }

  /**
   * Writes last-seen times (bringing OFFLINE hosts back ONLINE), new health verdicts, volume figures
   * and finished telemetry buckets (all of them with `everything`, at shutdown).
   */
  async flush(everything = false): Promise<void> {
    const seen = this.lastSeen;
    const verdicts = this.verdicts;
    const volumes = this.volumes;
    this.lastSeen = new Map();
    this.verdicts = new Map();
    this.volumes = new Map();
    let started = performance.now();
    try {
      await this.write(seen, verdicts);
      await this.writeVolumes(volumes);
      this.timed("last_seen", (performance.now() - started) / 1000);
    } catch (err) {
      // Nothing is dropped: what failed goes back, behind anything newer that arrived meanwhile.
      for (const [id, t] of seen) if (!this.lastSeen.has(id)) this.lastSeen.set(id, t);
      for (const [key, v] of verdicts) {
        const newer = this.verdicts.get(key);
        this.verdicts.set(key, newer ? { ...v, reasons: [...v.reasons, ...newer.reasons] } : v);
      }
      for (const [id, v] of volumes) if (!this.volumes.has(id)) this.volumes.set(id, v);
      throw err;
    }
    started = performance.now();
    await this.history.flush(everything);
    this.timed("telemetry", (performance.now() - started) / 1000);
    await this.relay?.flush();
  }

  /** Forgets a deleted host: its health memory here, its shared samples in Redis. */
  forgetHost(hostId: string): void {
    for (const key of this.health.keys()) if (key.startsWith(`${hostId}/`)) this.health.delete(key);
    this.relay?.forgetHost(hostId);
  }

  /**
   * One statement for every figure gathered: only environments on the host that reported them (an
   * agent speaks for its own host), unknown ids match nothing, and an unchanged figure writes no row.
   */
  private async writeVolumes(volumes: Map<string, { hostId: string; usedBytes: number }>): Promise<void> {
    if (volumes.size === 0) return;
    const ids = [...volumes.keys()].sort();
    await bulkSql(
      this.orm,
      `update environments e set storage_used_bytes = v.used
         from unnest(?::uuid[], ?::uuid[], ?::bigint[]) as v(id, host_id, used)
        where e.id = v.id and e.host_id = v.host_id and e.storage_used_bytes <> v.used`,
      [pgArray(ids), pgArray(ids.map((id) => volumes.get(id)!.hostId)), pgArray(ids.map((id) => String(volumes.get(id)!.usedBytes)))],
    );
  }

  private async write(seen: Map<string, Date>, verdicts: Map<string, { hostId: string; uuid: string; reasons: string[] }>): Promise<void> {
    // Hosts in a fixed order, so this UPDATE and lease expiry on another replica take row locks alike.
    const ids = [...seen.keys()].sort();
    if (ids.length > 0) {
      // The CTE reads the rows as they were before the update: those that were OFFLINE revived.
      const revived = await bulkSql<{ id: string }>(
        this.orm,
        `with seen as (select * from unnest(?::uuid[], ?::timestamptz[]) as v(id, seen)),
         before as (select h.id, h.status, h.node_state from hosts h join seen on seen.id = h.id),
         -- A host that follows a Kubernetes node is ONLINE by its node, never by a heartbeat.
         updated as (
           update hosts h set
             last_heartbeat_at = seen.seen,
             status = case when h.status = 'OFFLINE' and h.node_state is null then 'ONLINE' else h.status end,
             status_message = case when h.status = 'OFFLINE' and h.node_state is null then '' else h.status_message end,
             updated_at = case when h.status = 'OFFLINE' and h.node_state is null then seen.seen else h.updated_at end
           from seen where h.id = seen.id
           returning h.id)
         select id from before where status = 'OFFLINE' and node_state is null`,
        [pgArray(ids), pgArray(ids.map((id) => seen.get(id)!.toISOString()))],
      );
      if (revived.length > 0) this.onRevived(revived.map((r) => r.id));
    }
    for (const v of verdicts.values()) {
      // Reasons already recorded (by an operator or an earlier verdict) are kept. A GPU in MIG mode
      // takes its slices with it: they share its memory and its faults (XID, ECC, heat). Slices gone
      // in a re-partition (OFFLINE) stay as they are: they never come back.
      await bulkSql(
        this.orm,
        `update gpus g set status = 'UNHEALTHY', updated_at = ?,
           health_reasons = (select coalesce(jsonb_agg(distinct r), '[]'::jsonb)
                               from jsonb_array_elements(g.health_reasons || case when g.uuid = ? then ?::jsonb else ?::jsonb end) r)
         where g.host_id = ?
           and (g.uuid = ? or (g.parent_id = (select p.id from gpus p where p.host_id = ? and p.uuid = ?) and g.status <> 'OFFLINE'))`,
        [
          this.clock.now(),
          v.uuid,
          JSON.stringify(v.reasons),
          JSON.stringify(v.reasons.map((r) => `its GPU ${v.uuid}: ${r}`)),
          v.hostId,
          v.uuid,
          v.hostId,
          v.uuid,
        ],
      );
    }
  }
}
