import type { EntityManager } from "@mikro-orm/postgresql";
import { Gpu, statusWhenOnline } from "../gpu/gpu.js";
import type { Host } from "./host.js";

/** One GPU as an agent reports it. */
export interface ReportedGpu {
  index: number;
  uuid: string;
  model: string;
  memoryBytes: number;
  driverVersion: string;
  cudaVersion: string;
}

/**
 * Makes the host's GPU rows match what its agent sees, keyed by (host, UUID): new GPUs are added,
 * known ones updated and brought back from OFFLINE, missing ones marked OFFLINE (never deleted: they
 * may hold an environment, or come back after a reboot). Runs inside the caller's transaction.
 * Returns the server-side id of each reported GPU, by UUID.
 */
export async function syncInventory(em: EntityManager, host: Host, reported: ReportedGpu[], now: Date): Promise<Map<string, string>> {
  const rows = await em.find(Gpu, { host });
  const byUuid = new Map(rows.map((g) => [g.uuid, g]));
  const reportedByUuid = new Map(reported.map((r) => [r.uuid, r]));
  const claimedIndexes = new Set(reported.map((r) => r.index));

  // A GPU that is gone, or moved, must give up its index first: (host, index) is unique.
  const parked: Gpu[] = [];
  for (const g of rows) {
    const next = reportedByUuid.get(g.uuid);
    if ((!next && claimedIndexes.has(g.index)) || (next && next.index !== g.index)) {
      g.index = -1 - g.index;
      parked.push(g);
    }
  }
  if (parked.length > 0) await em.flush();

  const ids = new Map<string, string>();
  for (const r of reported) {
    const g = byUuid.get(r.uuid);
    if (!g) {
      ids.set(r.uuid, em.create(Gpu, { host, ...r, createdAt: now, updatedAt: now }).id);
      continue;
    }
    ids.set(r.uuid, g.id);
    const changed = g.index !== r.index || g.model !== r.model || g.memoryBytes !== r.memoryBytes || g.driverVersion !== r.driverVersion || g.cudaVersion !== r.cudaVersion || g.status === "OFFLINE";
    Object.assign(g, r);
    if (g.status === "OFFLINE") g.status = statusWhenOnline(g);
    if (changed) g.updatedAt = now;
  }
  for (const g of rows) {
    if (reportedByUuid.has(g.uuid) || g.status === "OFFLINE") continue;
    g.status = "OFFLINE";
    g.updatedAt = now;
  }
  return ids;
}
