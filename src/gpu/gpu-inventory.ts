import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import { Host, hasLabels } from "../host/host.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { onUniqueViolation } from "../platform/unique-violation.js";
import type { LatestSamples } from "../telemetry/latest-samples.js";
import { Violations, checkString } from "../validation.js";
import { Gpu, type GpuStatus, type GpuView } from "./gpu.js";
import type { AuditNote } from "../audit/audit-trail.js";

// Where the RPC layer has always found it.
export type { GpuView } from "./gpu.js";

const unaudited: AuditNote = () => undefined;

export interface GpuInput {
  hostId: string;
  index: number;
  uuid: string;
  model: string;
  memoryBytes: number;
}

export interface GpuFilter {
  hostId?: string;
  model?: string;
  status?: GpuStatus;
  freeOnly: boolean;
  labels: Record<string, string>;
}

export interface GpuPatch {
  model: string;
  memoryBytes: number;
  /** Set when the update mask names "status". */
  status?: GpuStatus;
  healthReasons: string[];
}

export const UPDATABLE_GPU_FIELDS = ["model", "memory_bytes", "status", "health_reasons"] as const;

/** The filter that makes a GPU usable by a scheduler right now. */
export const FREE_GPU: FilterQuery<Gpu> = { status: "AVAILABLE", holder: null, host: { status: "ONLINE", schedulable: true } };

/** GPU inventory: what exists, where, and in what state. Allocation lives in GpuAllocator. */
export class GpuInventory {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly samples: LatestSamples,
    /** Told when an operator re-admits an UNHEALTHY GPU. */
    private readonly onReadmit: (hostId: string, uuid: string) => void = () => undefined,
  ) {}

  async create(input: GpuInput, note: AuditNote = unaudited): Promise<GpuView> {
    const v = new Violations();
    if (input.hostId === "") v.add("host_id", "required");
    v.check(Number.isInteger(input.index) && input.index >= 0 && input.index < 1024, "index", "must be 0 to 1023");
    checkString(v, "uuid", input.uuid, {
      required: true,
      max: 128,
      pattern: /^[\x21-\x7e]+$/,
      patternHint: "printable characters without spaces",
    });
    checkString(v, "model", input.model, { required: true, max: 128 });
    v.check(input.memoryBytes > 0, "memory_bytes", "must be more than 0");
    v.throwIfAny();

    const gpu = await onUniqueViolation(
      () =>
        this.orm.em.fork().transactional(async (em) => {
          // FOR SHARE: a concurrent DeleteHost waits for this insert, or this sees the host gone.
          const host = await em.findOne(Host, checkId("host_id", input.hostId), { lockMode: LockMode.PESSIMISTIC_READ });
          if (!host) throw new NotFoundError("host", input.hostId);
          // Its agent's hello replaces the inventory: a GPU made by hand would be schedulable until then.
          if (host.agentConnectedAt)
            throw new FailedPreconditionError(`the agent of host "${host.name}" reports its GPUs; they cannot be created by hand`);
          const now = this.clock.now();
          const gpu = em.create(Gpu, {
            host,
            index: input.index,
            uuid: input.uuid,
            model: input.model,
            memoryBytes: input.memoryBytes,
            createdAt: now,
            updatedAt: now,
          });
          note(em, { targetId: gpu.id });
          return gpu;
        }),
      (c) =>
        c === "gpus_host_index_unique"
          ? new AlreadyExistsError("GPU", `with index ${input.index} on host ${input.hostId}`)
          : c === "gpus_host_uuid_unique"
            ? new AlreadyExistsError("GPU", `with uuid "${input.uuid}" on host ${input.hostId}`)
            : undefined,
    );
    return this.view(gpu);
  }

  async get(id: string): Promise<GpuView> {
    const em = this.orm.em.fork();
    return this.view(await findGpu(em, id));
  }

  /** GPUs ordered by (host id, index): the unique index on those columns serves the keyset. */
  async list(filter: GpuFilter, size: number, token: string): Promise<Page<GpuView>> {
    const limit = pageSize(size);
    const v = new Violations();
    checkString(v, "model", filter.model ?? "", { max: 128 });
    v.throwIfAny();
    const after = decodePageToken(token, filter, ["uuid", "int"]);
    const where: FilterQuery<Gpu>[] = [];
    if (filter.hostId) where.push({ host: checkId("host_id", filter.hostId) });
    if (filter.model) where.push({ model: filter.model });
    if (filter.status === "OFFLINE") where.push({ $or: [{ status: "OFFLINE" }, { host: { status: "OFFLINE" } }] });
    else if (filter.status) where.push({ status: filter.status, host: { status: { $ne: "OFFLINE" } } });
    if (filter.freeOnly) where.push(FREE_GPU);
    if (Object.keys(filter.labels).length > 0) where.push({ host: hasLabels(filter.labels) });

    const em = this.orm.em.fork();
    const keyset: FilterQuery<Gpu> = after
      ? { $or: [{ host: { $gt: after[0] as string } }, { host: after[0] as string, index: { $gt: after[1] as number } }] }
      : {};
    const [rows, totalSize] = await Promise.all([
      em.find(Gpu, { $and: [...where, keyset] }, { orderBy: [{ host: "asc" }, { index: "asc" }], limit: limit + 1, populate: ["host"] }),
      em.count(Gpu, { $and: where }),
    ]);
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    const nextPageToken = rows.length > limit && last ? encodePageToken([last.host.id, last.index], filter) : "";
    return { items: items.map((g) => this.view(g)), nextPageToken, totalSize };
  }

  async update(id: string, patch: GpuPatch, fields: string[], note: AuditNote = unaudited): Promise<GpuView> {
    const allowed = UPDATABLE_GPU_FIELDS as readonly string[];
    if (fields.length === 0) throw InvalidArgumentError.field("update_mask", `name at least one of: ${allowed.join(", ")}`);
    const v = new Violations();
    for (const f of fields) v.check(allowed.includes(f), "update_mask", `"${f}" cannot be updated; allowed: ${allowed.join(", ")}`);
    if (fields.includes("model")) checkString(v, "gpu.model", patch.model, { required: true, max: 128 });
    if (fields.includes("memory_bytes")) v.check(patch.memoryBytes > 0, "gpu.memory_bytes", "must be more than 0");
    if (fields.includes("status")) {
      v.check(
        patch.status === "AVAILABLE" || patch.status === "UNHEALTHY",
        "gpu.status",
        "may only be set to GPU_STATUS_UNHEALTHY or GPU_STATUS_AVAILABLE",
      );
    }
    if (fields.includes("health_reasons")) {
      v.check(patch.healthReasons.length <= 16, "gpu.health_reasons", "at most 16 reasons");
      for (const [i, r] of patch.healthReasons.entries()) checkString(v, `gpu.health_reasons[${i}]`, r, { required: true, max: 256 });
    }
    v.throwIfAny();

    return this.orm.em.fork().transactional(async (em) => {
      const gpu = await findGpu(em, id, LockMode.PESSIMISTIC_WRITE);
      if (fields.includes("model")) gpu.model = patch.model;
      if (fields.includes("memory_bytes")) gpu.memoryBytes = patch.memoryBytes;
      if (fields.includes("health_reasons")) gpu.healthReasons = patch.healthReasons;
      if (fields.includes("status") && patch.status !== gpu.status) {
        if (patch.status === "UNHEALTHY") {
          gpu.status = "UNHEALTHY";
          if (gpu.healthReasons.length === 0) gpu.healthReasons = ["marked unhealthy by an operator"];
        } else if (gpu.status === "UNHEALTHY") {
          // Re-admission: the GPU goes back to whoever still holds it, or to the free pool.
          gpu.status = gpu.holder ? "ALLOCATED" : "AVAILABLE";
          gpu.healthReasons = [];
          this.onReadmit(gpu.host.id, gpu.uuid);
        } else {
          throw new FailedPreconditionError(`GPU ${gpu.id} is ${gpu.status}; only an UNHEALTHY GPU can be re-admitted`);
        }
      }
      gpu.updatedAt = this.clock.now();
      note(em, { targetId: gpu.id });
      return this.view(gpu);
    });
  }

  async delete(id: string, note: AuditNote = unaudited): Promise<void> {
    await this.orm.em.fork().transactional(async (em) => {
      const gpu = await findGpu(em, id, LockMode.PESSIMISTIC_WRITE);
      if (gpu.holder !== null) throw new FailedPreconditionError(`GPU ${gpu.id} is allocated to "${gpu.holder}"; release it first`);
      note(em, { targetId: gpu.id });
      await em.nativeDelete(Gpu, { id: gpu.id });
    });
  }

  /** The id of an existing host, or NOT_FOUND. */
  async requireHost(id: string): Promise<string> {
    const host = await this.orm.em.fork().findOne(Host, checkId("host_id", id), { fields: ["id"] });
    if (!host) throw new NotFoundError("host", id);
    return host.id;
  }

  /** GPUs per status as the API reports it (OFFLINE with their host), for the metrics endpoint. */
  async countByStatus(): Promise<Record<string, number>> {
    const rows: { status: string; n: number }[] = await this.orm.em.getConnection().execute(
      `select case when h.status = 'OFFLINE' then 'OFFLINE' else g.status end as status, count(*)::int as n
       from gpus g join hosts h on h.id = g.host_id group by 1`,
    );
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  view(gpu: Gpu): GpuView {
    return { gpu, latestSample: this.samples.gpu(gpu.host.id, gpu.uuid) };
  }
}

/** MikroORM's alias for the root table of a Gpu query: row locks name it so they cover GPU rows, not hosts. */
export const GPU_ALIAS = "g0";

/** Loads a GPU with its host; the lock, when asked for, covers the GPU row only. */
export async function findGpu(em: EntityManager, id: string, lockMode?: LockMode): Promise<Gpu> {
  const gpu = await em.findOne(
    Gpu,
    checkId("id", id),
    lockMode ? { lockMode, lockTableAliases: [GPU_ALIAS], populate: ["host"] } : { populate: ["host"] },
  );
  if (!gpu) throw new NotFoundError("GPU", id);
  return gpu;
}
