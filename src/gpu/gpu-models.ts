import type { MikroORM } from "@mikro-orm/postgresql";
import { modelAllowed, type QuotaLedger } from "../workspace/quota-ledger.js";
import { QUOTA_UNITS_PER_GPU } from "./gpu.js";
import { parseSliceModel, quotaUnits } from "./mig.js";

/** A host that takes new environments, as placement picks them. */
const OPEN_HOST = "h.status = 'ONLINE' and h.schedulable and h.runtime_unavailable_reason = ''";

/** What one GPU model offers now to a new environment. */
export interface GpuModelOffer {
  model: string;
  /** Set for a MIG slice's model: its profile. */
  migProfile: string;
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
    // The counts per host are kept (free_gpu_counts, in the transaction of every GPU write): about one
    // row per host and model is read, not every free GPU. Each model's memory is its largest free GPU
    // on such a host, the first match in an index of the free GPUs by model and memory, read backwards.
    // GPUs without a model name (a Kubernetes node without the product label) are counted under ""
    // with every model and are not offered: CreateEnvironment cannot ask for them by name. The memory
    // is null only if the counts ever disagreed with the GPU rows; such a model is left out.
    const rows = await this.orm.em.getConnection().execute<{ model: string; memory: string | null; free: number; best: number }[]>(
      `select m.model, m.free, m.best,
              (select g.memory_bytes::text from gpus g join hosts h on h.id = g.host_id
                where g.model = m.model and g.status = 'AVAILABLE' and g.holder is null and not g.mig_enabled and ${OPEN_HOST}
                order by g.memory_bytes desc limit 1) as memory
         from (select f.model, sum(f.free)::int as free, max(f.free)::int as best
                 from free_gpu_counts f join hosts h on h.id = f.host_id
                where f.model <> '' and f.free > 0 and ${OPEN_HOST}
                group by f.model) m
        order by m.model`,
    );
    // What the quota leaves, over all models and for each one.
    const left = (limit: number | null | undefined, used: number) =>
      limit === null || limit === undefined ? Number.POSITIVE_INFINITY : Math.max(0, limit - used);
    // max_gpus in units: a slice takes its share of a GPU.
    const units = left(quota.maxGpus === null ? null : quota.maxGpus * QUOTA_UNITS_PER_GPU, usage.gpuUnits);
    return rows
      .filter((r) => r.memory !== null && modelAllowed(allowedGpuModels, r.model))
      .map((r) => {
        const profile = parseSliceModel(r.model)?.profile ?? "";
        const cap = Math.min(
          Math.floor(units / quotaUnits(r.model)),
          left(quota.maxGpusPerModel[r.model], usage.gpusPerModel[r.model] ?? 0),
          profile ? left(quota.maxMigSlicesPerProfile[profile], usage.migSlicesPerProfile[profile] ?? 0) : Number.POSITIVE_INFINITY,
        );
        const offer = { model: r.model, migProfile: profile, memoryBytes: BigInt(r.memory!) };
        return { ...offer, freeGpus: Math.min(r.free, cap), maxPerHost: Math.min(r.best, cap) };
      })
      .filter((m) => m.freeGpus > 0);
  }
}
