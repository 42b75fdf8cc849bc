import type { MikroORM } from "@mikro-orm/postgresql";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { GpuSampleRecord, LatestSamples } from "./latest-samples.js";

// The fleet in Prometheus' text format, written straight from memory at scrape time:
// - per GPU, from the latest samples of the hosts whose agent streams this replica holds (so that
//   several replicas never export one GPU twice), labelled from a snapshot of the GPU rows;
// - per host, per environment state and per workspace, from the same snapshot, on the leader alone.
// The snapshot is read in the background every refresh period, never by a scrape. Written by hand
// rather than through prom-client objects: 80,000 GPUs × a dozen series would be a million objects.

export type GpuSeriesMode = "inline" | "separate" | "off";

export interface FleetSources {
  orm: MikroORM;
  clock: Clock;
  samples: LatestSamples;
  /** Host ids whose agent streams are open on this replica. */
  heldHosts: () => Iterable<string>;
  /** Whether this replica leads (it alone exports fleet-wide series). */
  leads: () => boolean;
  /** GPUs by status, as ListGpus counts them (a GPU of an OFFLINE host is OFFLINE). */
  gpuCounts: () => Promise<Record<string, number>>;
  /** When the leader's reconciler last finished a pass over every environment. */
  lastReconcile: () => Date | undefined;
  logger: Logger;
}

interface GpuRow {
  host_id: string;
  uuid: string;
  model: string;
  status: string;
  environment: string | null;
  workspace: string | null;
}
interface HostRow {
  id: string;
  name: string;
  status: string;
  schedulable: boolean;
  last_heartbeat_at: Date | null;
}
interface WorkspaceRow {
  name: string;
  max_gpus: number | null;
  max_environments: number | null;
  max_storage_bytes: string | null;
  gpus: number;
  environments: number;
  storage_bytes: string;
}

interface Snapshot {
  /** By host id, then GPU UUID. */
  gpus: Map<string, Map<string, GpuRow>>;
  hosts: Map<string, HostRow>;
  /** Leader only. */
  fleet?: {
    hostCounts: Record<string, number>;
    gpuCounts: Record<string, number>;
    environments: Record<string, number>;
    waiting: number;
    workspaces: WorkspaceRow[];
  };
}

const WAITING = "('PENDING', 'CREATING', 'STARTING', 'STOPPING', 'DELETING')";
const ENVIRONMENT_STATES = ["PENDING", "CREATING", "STARTING", "RUNNING", "STOPPING", "STOPPED", "FAILED", "DELETING"];

export class FleetMetrics {
  private snapshot: Snapshot = { gpus: new Map(), hosts: new Map() };
  private timer?: NodeJS.Timeout;
  private refreshing?: Promise<void>;

  constructor(
    private readonly s: FleetSources,
    readonly gpuSeries: GpuSeriesMode,
    private readonly refreshMs = 10_000,
  ) {}

  start(): void {
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.refreshMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.refreshing;
  }

  /** Reads the snapshot again (at most one read at a time); a failed read keeps the last one. */
  refresh(): Promise<void> {
    this.refreshing ??= this.read()
      .then((s) => {
        this.snapshot = s;
      })
      .catch((err: unknown) => this.s.logger.warn({ err }, "fleet metrics: snapshot read failed; serving the last one"))
      .finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async read(): Promise<Snapshot> {
    const conn = this.s.orm.em.getConnection();
    const held = [...this.s.heldHosts()];
    // One array parameter (knex would spread a JS array into a list); host ids are UUIDs.
    const heldArray = `{${held.join(",")}}`;
    const leads = this.s.leads();
    const gpuRows = held.length
      ? await conn.execute<GpuRow[]>(
          `select g.host_id, g.uuid, g.model, g.status, e.name as environment, w.name as workspace
             from gpus g left join environments e on e.id = g.environment_id left join workspaces w on w.id = e.workspace_id
            where g.host_id = any(?::uuid[])`,
          [heldArray],
        )
      : [];
    const hostRows = await conn.execute<HostRow[]>(
      `select id, name, status, schedulable, last_heartbeat_at from hosts${leads ? "" : " where id = any(?::uuid[])"}`,
      leads ? [] : [heldArray],
    );
    const gpus = new Map<string, Map<string, GpuRow>>();
    for (const g of gpuRows) {
      const ofHost = gpus.get(g.host_id) ?? new Map<string, GpuRow>();
      ofHost.set(g.uuid, g);
      gpus.set(g.host_id, ofHost);
    }
    const snapshot: Snapshot = { gpus, hosts: new Map(hostRows.map((h) => [h.id, h])) };
    if (!leads) return snapshot;
    const states = await conn.execute<{ status: string; n: number }[]>(
      `select status, count(*)::int as n from environments group by status`,
    );
    const [waiting] = await conn.execute<{ n: number }[]>(`select count(*)::int as n from environments where status in ${WAITING}`);
    const workspaces = await conn.execute<WorkspaceRow[]>(
      `select w.name, q.max_gpus, q.max_environments, q.max_storage_bytes,
              coalesce(g.n, 0)::int as gpus, coalesce(e.n, 0)::int as environments,
              (coalesce(e.storage, 0) + coalesce(f.size, 0))::text as storage_bytes
         from workspaces w
         left join resource_quotas q on q.workspace_id = w.id
         left join (select workspace_id, count(*) as n, sum(storage_bytes) as storage from environments
                     where status <> 'DELETED' group by workspace_id) e on e.workspace_id = w.id
         left join (select workspace_id, sum(size_bytes) as size from workspace_files group by workspace_id) f on f.workspace_id = w.id
         left join (select e.workspace_id, count(*) as n from gpus g join environments e on e.id = g.environment_id
                     group by e.workspace_id) g on g.workspace_id = w.id`,
    );
    snapshot.fleet = {
      // The leader read every host above.
      hostCounts: countBy(hostRows, (h) => h.status),
      gpuCounts: await this.s.gpuCounts(),
      environments: Object.fromEntries(states.map((r) => [r.status, r.n])),
      waiting: waiting?.n ?? 0,
      workspaces,
    };
    return snapshot;
  }

  /**
   * The per-GPU series of the GPUs whose agents this replica holds, a few thousand GPUs' lines at a
   * time: at 80,000 GPUs the whole takes a second or more to write, and a scrape that yields between
   * chunks does not stall the heartbeats meanwhile. Each family's lines stay together, as the text
   * format asks.
   */
  *gpuChunks(batch = 2000): Generator<string> {
    const now = this.s.clock.now().getTime();
    const gpus: { sample: GpuSampleRecord; row?: GpuRow; host: string; labels: string }[] = [];
    for (const hostId of this.s.heldHosts()) {
      const host = esc(this.snapshot.hosts.get(hostId)?.name ?? hostId);
      const rows = this.snapshot.gpus.get(hostId);
      for (const { sample } of this.s.samples.gpuSamples(hostId)) {
        const row = rows?.get(sample.gpuUuid);
        const labels = `host="${host}",uuid="${esc(sample.gpuUuid)}",index="${sample.index}",model="${esc(row?.model ?? "")}"`;
        gpus.push({ sample, row, host, labels });
      }
    }
    for (const f of GPU_FAMILIES) {
      let chunk = head(f.name, f.help, f.type);
      for (let i = 0; i < gpus.length; i++) {
        const g = gpus[i]!;
        for (const [extra, value] of f.values(g.sample, g.row, now))
          if (value !== undefined && Number.isFinite(value)) chunk += `${f.name}{${g.labels}${extra}} ${value}\n`;
        if ((i + 1) % batch === 0) {
          yield chunk;
          chunk = "";
        }
      }
      if (chunk) yield chunk;
    }
    let chunk = head("remotegpu_gpu_allocation", "GPUs held by environments (value 1): which environment and workspace", "gauge");
    for (const g of gpus) {
      if (!g.row?.environment) continue;
      chunk += `remotegpu_gpu_allocation{host="${g.host}",uuid="${esc(g.sample.gpuUuid)}",environment="${esc(g.row.environment)}",workspace="${esc(g.row.workspace ?? "")}"} 1\n`;
    }
    yield chunk;
  }

  /** Per host, environment and workspace series (the leader's), and which agents this replica holds. */
  fleetText(): string {
    const now = this.s.clock.now().getTime();
    const out = new Exposition();
    const connected = out.family("remotegpu_host_agent_connected", "1 for each host whose agent stream this replica holds", "gauge");
    for (const id of this.s.heldHosts()) connected.push(`{host="${esc(this.snapshot.hosts.get(id)?.name ?? id)}",host_id="${id}"} 1`);
    const fleet = this.snapshot.fleet;
    if (!fleet || !this.s.leads()) return out.text();
    const up = out.family("remotegpu_host_up", "1 when the host is ONLINE, else 0 (leader only)", "gauge");
    const cordoned = out.family("remotegpu_host_cordoned", "1 when the host takes no new environments (leader only)", "gauge");
    const age = out.family("remotegpu_host_heartbeat_age_seconds", "Seconds since the host's last heartbeat (leader only)", "gauge");
    for (const h of this.snapshot.hosts.values()) {
      const labels = `{host="${esc(h.name)}",host_id="${h.id}"}`;
      up.push(`${labels} ${h.status === "ONLINE" ? 1 : 0}`);
      cordoned.push(`${labels} ${h.schedulable ? 0 : 1}`);
      if (h.last_heartbeat_at) age.push(`${labels} ${Math.max(0, (now - new Date(h.last_heartbeat_at).getTime()) / 1000)}`);
    }
    const byStatus = (name: string, help: string, label: string, counts: Record<string, number>, all: string[] = []) => {
      const f = out.family(name, help, "gauge");
      for (const key of new Set([...all, ...Object.keys(counts)])) f.push(`{${label}="${esc(key)}"} ${counts[key] ?? 0}`);
    };
    byStatus("remotegpu_hosts", "Hosts by status (leader only)", "status", fleet.hostCounts);
    byStatus("remotegpu_gpus", "GPUs by status; a GPU of an OFFLINE host counts as OFFLINE (leader only)", "status", fleet.gpuCounts);
    byStatus("remotegpu_environments", "Environments by state (leader only)", "state", fleet.environments, ENVIRONMENT_STATES);
    out
      .family("remotegpu_reconciler_queue_depth", "Environments waiting to reach their desired state (leader only)", "gauge")
      .push(` ${fleet.waiting}`);
    const lastPass = this.s.lastReconcile();
    if (lastPass)
      out
        .family(
          "remotegpu_reconciler_lag_seconds",
          "Seconds since the reconciler last finished a pass over every environment (leader only)",
          "gauge",
        )
        .push(` ${Math.max(0, (now - lastPass.getTime()) / 1000)}`);
    const limit = out.family("remotegpu_workspace_quota_limit", "Workspace quota limits; absent when unlimited (leader only)", "gauge");
    const usage = out.family("remotegpu_workspace_usage", "Workspace usage of what its quota bounds (leader only)", "gauge");
    for (const w of fleet.workspaces) {
      const resources: [string, number | string | null, number | string][] = [
        ["gpus", w.max_gpus, w.gpus],
        ["environments", w.max_environments, w.environments],
        ["storage_bytes", w.max_storage_bytes, w.storage_bytes],
      ];
      for (const [resource, max, used] of resources) {
        const labels = `{workspace="${esc(w.name)}",resource="${resource}"}`;
        if (max !== null) limit.push(`${labels} ${Number(max)}`);
        usage.push(`${labels} ${Number(used)}`);
      }
    }
    return out.text();
  }
}

type Values = (s: GpuSampleRecord, row: GpuRow | undefined, now: number) => [string, number | undefined][];
const one =
  (read: (s: GpuSampleRecord, row: GpuRow | undefined, now: number) => number | undefined): Values =>
  (s, row, now) => [["", read(s, row, now)]];
const ratio = (percent?: number) => (percent === undefined ? undefined : percent / 100);

const GPU_FAMILIES: { name: string; help: string; type: "gauge" | "counter"; values: Values }[] = [
  {
    name: "remotegpu_gpu_utilization_ratio",
    help: "GPU busy, 0 to 1",
    type: "gauge",
    values: one((s) => ratio(s.metrics.gpuUtilizationPercent)),
  },
  {
    name: "remotegpu_gpu_memory_utilization_ratio",
    help: "Memory controller busy, 0 to 1",
    type: "gauge",
    values: one((s) => ratio(s.metrics.memoryUtilizationPercent)),
  },
  {
    name: "remotegpu_gpu_memory_used_bytes",
    help: "Framebuffer memory used",
    type: "gauge",
    values: one((s) => s.metrics.memoryUsedBytes),
  },
  {
    name: "remotegpu_gpu_memory_total_bytes",
    help: "Framebuffer memory in all",
    type: "gauge",
    values: one((s) => s.metrics.memoryTotalBytes),
  },
  { name: "remotegpu_gpu_temperature_celsius", help: "GPU temperature", type: "gauge", values: one((s) => s.metrics.temperatureCelsius) },
  { name: "remotegpu_gpu_power_watts", help: "Power draw", type: "gauge", values: one((s) => s.metrics.powerDrawWatts) },
  { name: "remotegpu_gpu_power_limit_watts", help: "Power limit", type: "gauge", values: one((s) => s.metrics.powerLimitWatts) },
  {
    name: "remotegpu_gpu_sm_clock_hertz",
    help: "SM clock",
    type: "gauge",
    values: one((s) => (s.metrics.smClockMhz === undefined ? undefined : s.metrics.smClockMhz * 1e6)),
  },
  { name: "remotegpu_gpu_fan_speed_ratio", help: "Fan speed, 0 to 1", type: "gauge", values: one((s) => ratio(s.metrics.fanSpeedPercent)) },
  {
    name: "remotegpu_gpu_ecc_errors_total",
    help: "ECC errors since the driver loaded (volatile counts), by type",
    type: "counter",
    values: (s) => [
      [',type="corrected"', s.metrics.eccCorrectedErrors],
      [',type="uncorrected"', s.metrics.eccUncorrectedErrors],
    ],
  },
  {
    name: "remotegpu_gpu_last_xid",
    help: "The last XID error the agent saw, 0 for none",
    type: "gauge",
    values: one((s) => s.metrics.lastXid ?? 0),
  },
  {
    name: "remotegpu_gpu_unhealthy",
    help: "1 when the GPU is UNHEALTHY (never scheduled until re-admitted)",
    type: "gauge",
    values: one((_, r) => (r?.status === "UNHEALTHY" ? 1 : 0)),
  },
  {
    name: "remotegpu_gpu_allocated",
    help: "1 when an environment holds the GPU",
    type: "gauge",
    values: one((_, r) => (r?.environment ? 1 : 0)),
  },
  {
    name: "remotegpu_gpu_sample_age_seconds",
    help: "Seconds since the GPU's latest sample was taken",
    type: "gauge",
    values: one((s, _, now) => Math.max(0, (now - s.time.getTime()) / 1000)),
  },
];

function countBy<T>(items: T[], key: (item: T) => string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const item of items) counts[key(item)] = (counts[key(item)] ?? 0) + 1;
  return counts;
}

/** Label values escaped as the text format asks: backslash, double quote and newline. */
function esc(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function head(name: string, help: string, type: "gauge" | "counter"): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;
}

/** Families in the text format: HELP and TYPE once each, then the samples ("{labels} value"). */
class Exposition {
  private readonly parts: { head: string; name: string; lines: string[] }[] = [];

  family(name: string, help: string, type: "gauge" | "counter"): { push(line: string): void } {
    const part = { head: head(name, help, type), name, lines: [] as string[] };
    this.parts.push(part);
    return { push: (line) => part.lines.push(line) };
  }

  text(): string {
    const chunks: string[] = [];
    for (const p of this.parts) {
      chunks.push(p.head);
      if (p.lines.length > 0) chunks.push(`${p.name}${p.lines.join(`\n${p.name}`)}\n`);
    }
    return chunks.join("");
  }
}
