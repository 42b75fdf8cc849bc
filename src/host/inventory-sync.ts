import { randomUUID } from "node:crypto";
import type { Knex } from "@mikro-orm/knex";
import { statusWhenOnline, type GpuStatus } from "../gpu/gpu.js";
import { pgArray } from "../platform/bulk-sql.js";

/** One GPU as an agent reports it. */
export interface ReportedGpu {
  index: number;
  uuid: string;
  model: string;
  memoryBytes: number;
  driverVersion: string;
  cudaVersion: string;
}

/** A GPU row as inventory sync needs it. */
export interface StoredGpu extends ReportedGpu {
  id: string;
  status: GpuStatus;
  holder: string | null;
  healthReasons: string[];
}

export interface InventoryPlan {
  /** GPUs that must give up their index first ((host, index) is unique): index becomes -1 - index. */
  park: string[];
  insert: (ReportedGpu & { id: string })[];
  update: (ReportedGpu & { id: string; status: GpuStatus })[];
  /** GPUs the agent no longer reports. */
  offline: string[];
  /** Server-side id of each reported GPU, by UUID. */
  ids: Map<string, string>;
}

/**
 * What makes the host's GPU rows match what its agent sees, keyed by UUID: new GPUs are added,
 * known ones updated and brought back from OFFLINE, missing ones marked OFFLINE (never deleted: they
 * may hold an environment, or come back after a reboot). A reconnect with nothing new plans nothing.
 */
export function planInventory(stored: StoredGpu[], reported: ReportedGpu[]): InventoryPlan {
  const byUuid = new Map(stored.map((g) => [g.uuid, g]));
  const reportedByUuid = new Map(reported.map((r) => [r.uuid, r]));
  const claimed = new Set(reported.map((r) => r.index));
  const plan: InventoryPlan = { park: [], insert: [], update: [], offline: [], ids: new Map() };
  for (const g of stored) {
    const next = reportedByUuid.get(g.uuid);
    // Rows parked before already hold a negative index, which no reported GPU can claim.
    if (g.index >= 0 && ((!next && claimed.has(g.index)) || (next && next.index !== g.index))) plan.park.push(g.id);
    if (!next && g.status !== "OFFLINE") plan.offline.push(g.id);
  }
  for (const r of reported) {
    const g = byUuid.get(r.uuid);
    if (!g) {
      const id = randomUUID();
      plan.insert.push({ ...r, id });
      plan.ids.set(r.uuid, id);
      continue;
    }
    plan.ids.set(r.uuid, g.id);
    const status = g.status === "OFFLINE" ? statusWhenOnline(g) : g.status;
    const same =
      g.index === r.index &&
      g.model === r.model &&
      g.memoryBytes === r.memoryBytes &&
      g.driverVersion === r.driverVersion &&
      g.cudaVersion === r.cudaVersion;
    if (!same || status !== g.status) plan.update.push({ ...r, id: g.id, status });
  }
  return plan;
}

/** Whether applying the plan changed any GPU row. */
export function inventoryChanged(plan: InventoryPlan): boolean {
  return plan.park.length + plan.insert.length + plan.update.length + plan.offline.length > 0;
}

/** applyInventories for one host. */
export async function applyInventory(trx: Knex.Transaction, hostId: string, reported: ReportedGpu[], now: Date): Promise<InventoryPlan> {
  return (await applyInventories(trx, [{ hostId, gpus: reported }], now)).get(hostId)!;
}

/**
 * Makes the GPU rows of each host match what its agent reports, inside the caller's transaction:
 * one read, and writes only for what changed, a few statements whatever the number of hosts and
 * GPUs (a fleet reconnecting at once is synced in batches). Returns what it did per host.
 */
export async function applyInventories(
  trx: Knex.Transaction,
  reports: { hostId: string; gpus: ReportedGpu[] }[],
  now: Date,
): Promise<Map<string, InventoryPlan>> {
  const rows: {
    id: string;
    host_id: string;
    uuid: string;
    index: number;
    model: string;
    memory_bytes: string;
    driver_version: string;
    cuda_version: string;
    status: GpuStatus;
    holder: string | null;
    health_reasons: string[];
  }[] = (
    await trx.raw(
      `select id, host_id, uuid, index, model, memory_bytes, driver_version, cuda_version, status, holder, health_reasons
       from gpus where host_id = any(?::uuid[])`,
      [pgArray(reports.map((r) => r.hostId))],
    )
  ).rows;
  const stored = new Map<string, StoredGpu[]>(reports.map((r) => [r.hostId, []]));
  for (const r of rows) {
    stored.get(r.host_id)?.push({
      id: r.id,
      uuid: r.uuid,
      index: r.index,
      model: r.model,
      memoryBytes: Number(r.memory_bytes),
      driverVersion: r.driver_version,
      cudaVersion: r.cuda_version,
      status: r.status,
      holder: r.holder,
      healthReasons: r.health_reasons,
    });
  }
  const plans = new Map(reports.map((r) => [r.hostId, planInventory(stored.get(r.hostId)!, r.gpus)]));
  const all = [...plans.entries()];
  const park = all.flatMap(([, p]) => p.park);
  const offline = all.flatMap(([, p]) => p.offline);
  const update = all.flatMap(([, p]) => p.update);
  const insert = all.flatMap(([hostId, p]) => p.insert.map((g) => ({ ...g, hostId })));
  if (park.length > 0) await trx.raw("update gpus set index = -1 - index where id = any(?::uuid[])", [pgArray(park)]);
  if (offline.length > 0) {
    await trx.raw("update gpus set status = 'OFFLINE', updated_at = ?, version = version + 1 where id = any(?::uuid[])", [
      now,
      pgArray(offline),
    ]);
  }
  if (update.length > 0) {
    await trx.raw(
      `update gpus g set index = v.index, model = v.model, memory_bytes = v."memoryBytes", driver_version = v."driverVersion",
         cuda_version = v."cudaVersion", status = v.status, updated_at = ?, version = g.version + 1
       from jsonb_to_recordset(?::jsonb) as v(id uuid, index int, model text, "memoryBytes" bigint, "driverVersion" text, "cudaVersion" text, status text)
       where g.id = v.id`,
      [now, JSON.stringify(update)],
    );
  }
  if (insert.length > 0) {
    await trx.raw(
      `insert into gpus (id, host_id, index, uuid, model, memory_bytes, driver_version, cuda_version, status, health_reasons, created_at, updated_at, version)
       select v.id, v."hostId", v.index, v.uuid, v.model, v."memoryBytes", v."driverVersion", v."cudaVersion", 'AVAILABLE', '[]'::jsonb, ?, ?, 1
       from jsonb_to_recordset(?::jsonb) as v(id uuid, "hostId" uuid, index int, uuid text, model text, "memoryBytes" bigint, "driverVersion" text, "cudaVersion" text)`,
      [now, now, JSON.stringify(insert)],
    );
  }
  return plans;
}
