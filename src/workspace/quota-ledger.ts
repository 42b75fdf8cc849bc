import { LockMode } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import type { AuditNote } from "../audit/audit-trail.js";
import { NotFoundError, QuotaExceededError } from "../errors.js";
import { checkId } from "../ids.js";
import type { Clock } from "../platform/clock.js";
import { Violations, checkString } from "../validation.js";
import { ResourceQuota } from "./workspace.js";
import { QUOTA_UNITS_PER_GPU } from "../gpu/gpu.js";
import { MIG_PROFILE, parseSliceModel, quotaUnits } from "../gpu/mig.js";

export type QuotaLimits = Omit<ResourceQuota, "workspace" | "updatedAt" | "version">;

export interface Usage {
  /** GPUs held, a MIG slice counting as one. */
  gpus: number;
  gpusPerModel: Record<string, number>;
  /** What max_gpus is checked against, in QUOTA_UNITS_PER_GPU-ths: a slice counts its share of a GPU. */
  gpuUnits: number;
  migSlicesPerProfile: Record<string, number>;
  environments: number;
  cpuMillicores: number;
  memoryBytes: number;
  /** Volume sizes of its environments plus its files: what max_storage_bytes limits. */
  storageBytes: number;
  /** What its environments' volumes actually use, as their hosts last measured it (not limited). */
  volumeUsedBytes: number;
}

/** What one request would add to a workspace's usage. GPUs are counted per model actually picked. */
export interface Demand {
  gpusPerModel?: Record<string, number>;
  environments?: number;
  cpuMillicores?: number;
  memoryBytes?: number;
  storageBytes?: number;
}

const MAX_MODELS = 64;

// Environments that are STOPPED, FAILED or DELETED hold no CPU or memory (nor GPUs: stopping releases them).
const HOLDS_COMPUTE = "status not in ('STOPPED', 'FAILED', 'DELETED')";

/**
 * Refuses `demand` if it would take any dimension of `quota` past its limit (a limit may already be
 * below usage after an operator lowered it). Throws a QuotaExceededError naming the dimension.
 */
export function admit(quota: QuotaLimits, usage: Usage, demand: Demand): void {
  const check = (dimension: string, limit: number | null | undefined, inUse: number, requested = 0) => {
    if (requested > 0 && limit !== null && limit !== undefined && inUse + requested > limit) {
      throw new QuotaExceededError(dimension, limit, inUse, requested);
    }
  };
  const perModel = Object.entries(demand.gpusPerModel ?? {}).filter(([, n]) => n > 0);
  const demanded = tally(Object.fromEntries(perModel));
  for (const [model, n] of perModel) {
    if (!modelAllowed(quota.allowedGpuModels, model)) {
      throw new QuotaExceededError(
        "allowed_gpu_models",
        0,
        0,
        n,
        `quota exceeded: allowed_gpu_models does not include "${model}" (allowed: ${quota.allowedGpuModels.join(", ")})`,
      );
    }
    check(`max_gpus_per_model["${model}"]`, quota.maxGpusPerModel[model], usage.gpusPerModel[model] ?? 0, n);
  }
  for (const [profile, n] of Object.entries(demanded.migSlicesPerProfile))
    check(`max_mig_slices_per_profile["${profile}"]`, quota.maxMigSlicesPerProfile[profile], usage.migSlicesPerProfile[profile] ?? 0, n);
  // Whole units, exactly; said in GPUs, a slice as its fraction.
  const units = quota.maxGpus === null || quota.maxGpus === undefined ? null : quota.maxGpus * QUOTA_UNITS_PER_GPU;
  if (demanded.gpuUnits > 0 && units !== null && usage.gpuUnits + demanded.gpuUnits > units)
    throw new QuotaExceededError("max_gpus", quota.maxGpus!, inGpus(usage.gpuUnits), inGpus(demanded.gpuUnits));
  check("max_environments", quota.maxEnvironments, usage.environments, demand.environments);
  check("max_cpu_millicores", quota.maxCpuMillicores, usage.cpuMillicores, demand.cpuMillicores);
  check("max_memory_bytes", quota.maxMemoryBytes, usage.memoryBytes, demand.memoryBytes);
  check("max_storage_bytes", quota.maxStorageBytes, usage.storageBytes, demand.storageBytes);
}

/**
 * Whether a quota's allowed_gpu_models lets a workspace have GPUs of `model`: any when the list is
 * empty; a model listed; a MIG slice whose parent's model is listed (slices of a listed product).
 */
export function modelAllowed(allowed: string[], model: string): boolean {
  if (allowed.length === 0 || allowed.includes(model)) return true;
  const slice = parseSliceModel(model);
  return slice !== undefined && allowed.includes(slice.parentModel);
}

/** GPU units and MIG slices per profile of GPUs counted per model. */
function tally(perModel: Record<string, number>): { gpuUnits: number; migSlicesPerProfile: Record<string, number> } {
  let gpuUnits = 0;
  const migSlicesPerProfile: Record<string, number> = {};
  for (const [model, n] of Object.entries(perModel)) {
    gpuUnits += n * quotaUnits(model);
    const profile = parseSliceModel(model)?.profile;
    if (profile) migSlicesPerProfile[profile] = (migSlicesPerProfile[profile] ?? 0) + n;
  }
  return { gpuUnits, migSlicesPerProfile };
}

/** Units as GPUs, to three decimals (seven 1g slices of an H100: 1). */
function inGpus(units: number): number {
  return Math.round((units / QUOTA_UNITS_PER_GPU) * 1000) / 1000;
}

/**
 * Quotas and the live usage they bound. Usage is not a counter that could drift: it is read from
 * what the workspace holds (environments, allocated GPUs, files), under the quota row's lock.
 */
export class QuotaLedger {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
  ) {}

  async get(workspaceId: string): Promise<ResourceQuota> {
    return this.find(this.orm.em.fork(), workspaceId);
  }

  /** Replaces the quota. It may be set below current usage: new requests are refused, nothing is stopped. */
  async set(workspaceId: string, limits: QuotaLimits, note: AuditNote): Promise<ResourceQuota> {
    const v = new Violations();
    const nonNegative = (field: string, value: number | null) =>
      v.check(value === null || (Number.isSafeInteger(value) && value >= 0), `quota.${field}`, "must be 0 or more");
    nonNegative("max_gpus", limits.maxGpus);
    nonNegative("max_environments", limits.maxEnvironments);
    nonNegative("max_cpu_millicores", limits.maxCpuMillicores);
    nonNegative("max_memory_bytes", limits.maxMemoryBytes);
    nonNegative("max_storage_bytes", limits.maxStorageBytes);
    const perModel = Object.entries(limits.maxGpusPerModel);
    v.check(perModel.length <= MAX_MODELS, "quota.max_gpus_per_model", `at most ${MAX_MODELS} models`);
    for (const [model, n] of perModel) {
      checkString(v, "quota.max_gpus_per_model", model, { required: true, max: 128 });
      nonNegative(`max_gpus_per_model["${model}"]`, n);
    }
    const perProfile = Object.entries(limits.maxMigSlicesPerProfile);
    v.check(perProfile.length <= MAX_MODELS, "quota.max_mig_slices_per_profile", `at most ${MAX_MODELS} profiles`);
    for (const [profile, n] of perProfile) {
      checkString(v, "quota.max_mig_slices_per_profile", profile, {
        required: true,
        max: 24,
        pattern: MIG_PROFILE,
        patternHint: 'keys are MIG profiles such as "1g.10gb"',
      });
      nonNegative(`max_mig_slices_per_profile["${profile}"]`, n);
    }
    v.check(limits.allowedGpuModels.length <= MAX_MODELS, "quota.allowed_gpu_models", `at most ${MAX_MODELS} models`);
    for (const [i, model] of limits.allowedGpuModels.entries()) {
      checkString(v, `quota.allowed_gpu_models[${i}]`, model, { required: true, max: 128 });
    }
    v.throwIfAny();

    return this.orm.em.fork().transactional(async (em) => {
      const quota = await this.find(em, workspaceId, true);
      Object.assign(quota, limits, { allowedGpuModels: [...new Set(limits.allowedGpuModels)], updatedAt: this.clock.now() });
      note(em, { workspaceId: quota.workspace.id, targetId: quota.workspace.id });
      return quota;
    });
  }

  /** The workspace's quota and what it holds now. */
  async usage(workspaceId: string): Promise<{ quota: ResourceQuota; usage: Usage }> {
    const em = this.orm.em.fork();
    const quota = await this.find(em, workspaceId);
    return { quota, usage: await this.measure(em, quota.workspace.id) };
  }

  /**
   * Checks `demand` against the quota inside the caller's transaction, with the quota row locked
   * until it commits: the caller records what it takes (an environment, its GPUs) in the same
   * transaction, so concurrent reservations see each other and can never overrun the quota together.
   * The usage returned stays true until then for what only reservations add (GPUs, environments): a
   * caller may admit more against it later in the transaction (the GPUs a placement picked).
   */
  async reserve(em: EntityManager, workspaceId: string, demand: Demand): Promise<{ quota: QuotaLimits; usage: Usage }> {
    const id = checkId("workspace_id", workspaceId);
    // Plain SQL: this runs on every creation, and the caller needs the limits, not an entity.
    const [row] = await em.getConnection().execute<QuotaRow[]>(
      `select max_gpus, max_gpus_per_model, max_mig_slices_per_profile, allowed_gpu_models, max_environments, max_cpu_millicores,
         max_memory_bytes, max_storage_bytes
         from resource_quotas where workspace_id = ? for update`,
      [id],
      "all",
      em.getTransactionContext(),
    );
    if (!row) throw new NotFoundError("workspace", id);
    const quota: QuotaLimits = {
      maxGpus: row.max_gpus,
      maxGpusPerModel: row.max_gpus_per_model,
      maxMigSlicesPerProfile: row.max_mig_slices_per_profile,
      allowedGpuModels: row.allowed_gpu_models,
      maxEnvironments: row.max_environments,
      maxCpuMillicores: nullableNumber(row.max_cpu_millicores),
      maxMemoryBytes: nullableNumber(row.max_memory_bytes),
      maxStorageBytes: nullableNumber(row.max_storage_bytes),
    };
    // Measured after the lock, in a statement of its own: its snapshot then has every reservation
    // committed before this one (one statement that locked and measured would measure as of its start).
    const usage = await this.measure(em, id);
    admit(quota, usage, demand);
    return { quota, usage };
  }

  private async find(em: EntityManager, workspaceId: string, lock = false): Promise<ResourceQuota> {
    const id = checkId("workspace_id", workspaceId);
    const quota = await em.findOne(ResourceQuota, { workspace: id }, lock ? { lockMode: LockMode.PESSIMISTIC_WRITE } : {});
    if (!quota) throw new NotFoundError("workspace", id);
    return quota;
  }

  private async measure(em: EntityManager, workspaceId: string): Promise<Usage> {
    const [totals] = await em.getConnection().execute<UsageRow[]>(
      `select count(*)::int as environments,
              coalesce(sum(cpu_millicores) filter (where ${HOLDS_COMPUTE}), 0) as cpu,
              coalesce(sum(memory_bytes) filter (where ${HOLDS_COMPUTE}), 0) as memory,
              coalesce(sum(storage_bytes), 0)
                + (select coalesce(sum(size_bytes), 0) from workspace_files where workspace_id = ?) as storage,
              coalesce(sum(storage_used_bytes), 0) as volume_used,
              (select coalesce(jsonb_object_agg(model, n), '{}') from (
                 select g.model, count(*)::int as n from gpus g join environments e on e.id = g.environment_id
                  where e.workspace_id = ? group by g.model) per_model) as models
         from environments where workspace_id = ? and status <> 'DELETED'`,
      [workspaceId, workspaceId, workspaceId],
      "all",
      em.getTransactionContext(),
    );
    const gpusPerModel = totals!.models;
    return {
      gpus: Object.values(gpusPerModel).reduce((sum, n) => sum + n, 0),
      gpusPerModel,
      ...tally(gpusPerModel),
      environments: totals!.environments,
      cpuMillicores: Number(totals!.cpu),
      memoryBytes: Number(totals!.memory),
      storageBytes: Number(totals!.storage),
      volumeUsedBytes: Number(totals!.volume_used),
    };
  }
}

interface QuotaRow {
  max_gpus: number | null;
  max_gpus_per_model: Record<string, number>;
  max_mig_slices_per_profile: Record<string, number>;
  allowed_gpu_models: string[];
  max_environments: number | null;
  max_cpu_millicores: string | number | null;
  max_memory_bytes: string | number | null;
  max_storage_bytes: string | number | null;
}

interface UsageRow {
  environments: number;
  cpu: string;
  memory: string;
  storage: string;
  volume_used: string;
  models: Record<string, number>;
}

/** A bigint column as a number (pg hands bigints over as strings), null kept. */
function nullableNumber(value: string | number | null): number | null {
  return value === null ? null : Number(value);
}
