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
 * environments. A count may be stale by the time it is used; CreateEnvironment still decides.
 */
export class GpuModels {
  constructor(
    private readonly orm: MikroORM,
    private readonly quotas: QuotaLedger,
  ) {}

  async available(workspaceId: string): Promise<GpuModelOffer[]> {
    const { allowedGpuModels } = await this.quotas.get(workspaceId);
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
    return rows.map((r) => ({ model: r.model, memoryBytes: BigInt(r.memory), freeGpus: r.free, maxPerHost: r.best }));
  }
}
