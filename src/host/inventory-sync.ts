import { randomUUID } from "node:crypto";
import type { Knex } from "@mikro-orm/knex";
import { statusWhenOnline, type GpuStatus, type MigPlacement } from "../gpu/gpu.js";
import { sliceModel } from "../gpu/mig.js";
import { pgArray } from "../platform/bulk-sql.js";

/** One GPU as an agent reports it. */
export interface ReportedGpu {
  index: number;
  uuid: string;
  /** The product name; for a MIG slice, its parent's (the stored model adds " MIG <profile>"). */
  model: string;
  memoryBytes: number;
  driverVersion: string;
  cudaVersion: string;
  /** In MIG mode: scheduled only through its slices. */
  migEnabled?: boolean;
  /** Set on a MIG slice: what it is a slice of. */
  mig?: ReportedMig;
}

/** What makes a reported GPU a MIG slice. */
export interface ReportedMig {
  /** The UUID of the physical GPU, reported in the same inventory with migEnabled. */
  parentUuid: string;
  /** e.g. "1g.10gb". */
  profile: string;
  deviceIndex: number;
  gpuInstanceId: number;
  computeInstanceId: number;
}

/** A GPU row as inventory sync needs it. */
export interface StoredGpu extends ReportedGpu {
  id: string;
  status: GpuStatus;
  holder: string | null;
  environmentId?: string | null;
  healthReasons: string[];
}

/** A new GPU row: AVAILABLE, or as its parent is (a slice of a GPU held whole or UNHEALTHY). */
export interface NewGpu extends ReportedGpu {
  id: string;
  status: GpuStatus;
  holder: string | null;
  environmentId: string | null;
  healthReasons: string[];
}

export interface InventoryPlan {
  /** GPUs that must give up their index first ((host, index) is unique): parked below every index in use. */
  park: string[];
  insert: NewGpu[];
  update: (ReportedGpu & { id: string; status: GpuStatus })[];
  /** GPUs the agent no longer reports. */
  offline: string[];
  /** MIG slices the agent no longer reports that nobody holds: deleted (a re-partition makes new UUIDs). */
  remove: string[];
  /** Server-side id of each reported GPU, by UUID. */
  ids: Map<string, string>;
}

/**
 * What makes the host's GPU rows match what its agent sees, keyed by UUID: new GPUs are added,
 * known ones updated and brought back from OFFLINE, missing ones marked OFFLINE (never deleted: they
 * may hold an environment, or come back after a reboot), except free MIG slices, which are deleted.
 * A reconnect with nothing new plans nothing.
 */
export function planInventory(stored: StoredGpu[], reportedGpus: ReportedGpu[]): InventoryPlan {
  const reported = reportedGpus.map(asRow);
  const byUuid = new Map(stored.map((g) => [g.uuid, g]));
  const reportedByUuid = new Map(reported.map((r) => [r.uuid, r]));
  const claimed = new Set(reported.map((r) => r.index));
  const plan: InventoryPlan = { park: [], insert: [], update: [], offline: [], remove: [], ids: new Map() };
  for (const g of stored) {
    const next = reportedByUuid.get(g.uuid);
    if (!next && g.mig && g.holder === null) {
      plan.remove.push(g.id);
      continue;
    }
    // Rows parked before already hold a negative index, which no reported GPU can claim.
    if (g.index >= 0 && ((!next && claimed.has(g.index)) || (next && next.index !== g.index))) plan.park.push(g.id);
    if (!next && g.status !== "OFFLINE") plan.offline.push(g.id);
  }
  for (const r of reported) {
    const g = byUuid.get(r.uuid);
    if (!g) {
      const id = randomUUID();
      plan.insert.push({ ...r, id, ...fromParent(r.mig && byUuid.get(r.mig.parentUuid)) });
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
      g.cudaVersion === r.cudaVersion &&
      (g.migEnabled ?? false) === (r.migEnabled ?? false) &&
      JSON.stringify(g.mig ?? null) === JSON.stringify(r.mig ?? null);
    if (!same || status !== g.status) plan.update.push({ ...r, id: g.id, status });
  }
  return plan;
}

/**
 * How a new slice starts, from its parent as stored: held by whoever holds the parent whole (a GPU
 * put in MIG mode under its holder: the reconciler fails such an environment, which frees both),
 * UNHEALTHY with the parent's reasons, or AVAILABLE.
 */
function fromParent(parent: StoredGpu | undefined): Omit<NewGpu, keyof ReportedGpu | "id"> {
  const healthReasons = parent?.status === "UNHEALTHY" ? parent.healthReasons.map((r) => `its GPU ${parent.uuid}: ${r}`) : [];
  const holder = parent?.holder ?? null;
  const status = healthReasons.length > 0 ? "UNHEALTHY" : holder ? "ALLOCATED" : "AVAILABLE";
  return { status, holder, environmentId: holder ? (parent?.environmentId ?? null) : null, healthReasons };
}

/** A reported GPU in the form its row takes: a slice's model names its profile. */
function asRow(r: ReportedGpu): ReportedGpu {
  if (!r.mig) return { ...r, migEnabled: r.migEnabled ?? false };
  return { ...r, model: sliceModel(r.model, r.mig.profile), migEnabled: false };
}

/** Whether applying the plan changed any GPU row. */
export function inventoryChanged(plan: InventoryPlan): boolean {
  return plan.park.length + plan.insert.length + plan.update.length + plan.offline.length + plan.remove.length > 0;
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
    environment_id: string | null;
    health_reasons: string[];
    mig_enabled: boolean;
    parent_uuid: string | null;
    mig_profile: string;
    mig_placement: MigPlacement | null;
  }[] = (
    await trx.raw(
      `select g.id, g.host_id, g.uuid, g.index, g.model, g.memory_bytes, g.driver_version, g.cuda_version, g.status, g.holder,
         g.environment_id, g.health_reasons, g.mig_enabled, p.uuid as parent_uuid, g.mig_profile, g.mig_placement
       from gpus g left join gpus p on p.id = g.parent_id where g.host_id = any(?::uuid[])`,
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
      environmentId: r.environment_id,
      healthReasons: r.health_reasons,
      migEnabled: r.mig_enabled,
      mig: r.parent_uuid && r.mig_placement ? { parentUuid: r.parent_uuid, profile: r.mig_profile, ...r.mig_placement } : undefined,
    });
  }
  const plans = new Map(reports.map((r) => [r.hostId, planInventory(stored.get(r.hostId)!, r.gpus)]));
  const all = [...plans.entries()];
  const park = all.flatMap(([, p]) => p.park);
  const offline = all.flatMap(([, p]) => p.offline);
  // A slice's columns, its parent's id among them (the parent is in the same report).
  const migColumns = (plan: InventoryPlan, g: ReportedGpu) => ({
    migEnabled: g.migEnabled ?? false,
    parentId: g.mig ? (plan.ids.get(g.mig.parentUuid) ?? null) : null,
    migProfile: g.mig?.profile ?? "",
    migPlacement: g.mig
      ? { deviceIndex: g.mig.deviceIndex, gpuInstanceId: g.mig.gpuInstanceId, computeInstanceId: g.mig.computeInstanceId }
      : null,
  });
  const update = all.flatMap(([, p]) => p.update.map((g) => ({ ...g, ...migColumns(p, g) })));
  const insert = all.flatMap(([hostId, p]) => p.insert.map((g) => ({ ...g, ...migColumns(p, g), hostId })));
  const remove = all.flatMap(([, p]) => p.remove);
  if (remove.length > 0) await trx.raw("delete from gpus where id = any(?::uuid[])", [pgArray(remove)]);
  // Parked below the lowest index of their host, so that rows parked before never collide with them.
  if (park.length > 0)
    await trx.raw(
      `update gpus g set index = p.parked
         from (select x.id, m.lowest - row_number() over (partition by x.host_id order by x.id) as parked
                 from gpus x cross join lateral (select least(min(y.index), 0) as lowest from gpus y where y.host_id = x.host_id) m
                where x.id = any(?::uuid[])) p
        where g.id = p.id`,
      [pgArray(park)],
    );
  if (offline.length > 0) {
    await trx.raw("update gpus set status = 'OFFLINE', updated_at = ?, version = version + 1 where id = any(?::uuid[])", [
      now,
      pgArray(offline),
    ]);
  }
  const migRecord = `"migEnabled" boolean, "parentId" uuid, "migProfile" text, "migPlacement" jsonb`;
  // Inserts first: a known slice may move to a parent that is new.
  if (insert.length > 0) {
    await trx.raw(
      `insert into gpus (id, host_id, index, uuid, model, memory_bytes, driver_version, cuda_version, status, health_reasons,
         created_at, updated_at, version, mig_enabled, mig_profile, mig_placement)
       select v.id, v."hostId", v.index, v.uuid, v.model, v."memoryBytes", v."driverVersion", v."cudaVersion", v.status, v."healthReasons",
         ?, ?, 1, v."migEnabled", v."migProfile", v."migPlacement"
       from jsonb_to_recordset(?::jsonb) as v(id uuid, "hostId" uuid, index int, uuid text, model text, "memoryBytes" bigint,
         "driverVersion" text, "cudaVersion" text, status text, "healthReasons" jsonb, ${migRecord})`,
      [now, now, JSON.stringify(insert)],
    );
    // Parents are set once every row exists (a parent may be inserted in the same statement), with
    // the holders slices take from a parent held whole.
    const children = insert.filter((g) => g.parentId);
    if (children.length > 0)
      await trx.raw(
        `update gpus g set parent_id = v."parentId", holder = v.holder, environment_id = v."environmentId",
           allocated_at = case when v.holder is null then null else ?::timestamptz end
         from jsonb_to_recordset(?::jsonb) as v(id uuid, "parentId" uuid, holder text, "environmentId" uuid) where g.id = v.id`,
        [now, JSON.stringify(children.map((g) => ({ id: g.id, parentId: g.parentId, holder: g.holder, environmentId: g.environmentId })))],
      );
  }
  if (update.length > 0) {
    await trx.raw(
      `update gpus g set index = v.index, model = v.model, memory_bytes = v."memoryBytes", driver_version = v."driverVersion",
         cuda_version = v."cudaVersion", status = v.status, mig_enabled = v."migEnabled", parent_id = v."parentId",
         mig_profile = v."migProfile", mig_placement = v."migPlacement", updated_at = ?, version = g.version + 1
       from jsonb_to_recordset(?::jsonb) as v(id uuid, index int, model text, "memoryBytes" bigint, "driverVersion" text, "cudaVersion" text,
         status text, ${migRecord})
       where g.id = v.id`,
      [now, JSON.stringify(update)],
    );
  }
  return plans;
}
