import type { MikroORM } from "@mikro-orm/postgresql";
import { pgArray } from "../platform/bulk-sql.js";
import type { QuotaLedger } from "../workspace/quota-ledger.js";

/** What one GPU model offers now to a new environment. */
export interface GpuModelOffer {
  model: string;
  memoryBytes: bigint;
  freeGpus: number;
  /** The most free on one host: an environment's GPUs share one host. */
  maxPerHost: number;
}

/**
 * The GPU models a workspace could be given now, for forms that offer only what can be had. It
 * counts as placement does: free, healthy GPUs on online, schedulable hosts whose agent can run
 * environments; then caps each count by what the workspace's quota leaves (max_gpus and the
 * model's own limit). A count may be stale by the time it is used; CreateEnvironment still decides.
 */
export class GpuModels {
  constructor(
    private readonly orm: MikroORM,
    private readonly quotas: QuotaLedger,
  ) {}

  async available(workspaceId: string): Promise<GpuModelOffer[]> {
    const { quota, usage } = await this.quotas.usage(workspaceId);
    const { allowedGpuModels } = quota;
    const rows = await this.orm.em.getConnection().execute<{ model: string; memory: string; free: number; best: number }[]>(
      `select model, max(memory)::text as memory, sum(free)::int as free, max(free)::int as best
         from (select g.model, max(g.memory_bytes) as memory, count(*) as free
                 from gpus g join hosts h on h.id = g.host_id
                where g.status = 'AVAILABLE' and g.holder is null
                  and h.status = 'ONLINE' and h.schedulable and h.runtime_unavailable_reason = ''
                  and (cardinality(?::text[]) = 0 or g.model = any(?::text[]))
                group by g.model, g.host_id) per_host
        group by model order by model`,
      [pgArray(allowedGpuModels), pgArray(allowedGpuModels)],
    );
    // What the quota leaves, over all models and for each one.
    const left = (limit: number | null | undefined, used: number) =>
      limit === null || limit === undefined ? Number.POSITIVE_INFINITY : Math.max(0, limit - used);
    const overall = left(quota.maxGpus, usage.gpus);
    return rows
      .map((r) => {
        const cap = Math.min(overall, left(quota.maxGpusPerModel[r.model], usage.gpusPerModel[r.model] ?? 0));
        return { model: r.model, memoryBytes: BigInt(r.memory), freeGpus: Math.min(r.free, cap), maxPerHost: Math.min(r.best, cap) };
      })
      .filter((m) => m.freeGpus > 0);
  }
}
