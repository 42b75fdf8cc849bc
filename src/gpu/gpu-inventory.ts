import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import { Host, type HostStatus } from "../host/host.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { onUniqueViolation } from "../platform/unique-violation.js";
import type { LatestSamples } from "../telemetry/latest-samples.js";
import { Violations, checkString } from "../validation.js";
import { Gpu, type GpuStatus, type GpuView, type MigPlacement, type ShownGpu } from "./gpu.js";
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
  /** Only MIG slices of this profile. */
  migProfile?: string;
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
export const FREE_GPU: FilterQuery<Gpu> = {
  status: "AVAILABLE",
  holder: null,
  migEnabled: false,
  host: { status: "ONLINE", schedulable: true },
};

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

  /**
   * GPUs ordered by (host id, index): the unique index on those columns, or the status, model or free
   * GPUs' index in host order, serves the keyset. One SQL query for the page and one for total_size
   * (from the kept counts), side by side; rows become views without the ORM, whose hydration of a GPU
   * and its host per row cost more than both queries.
   */
  async list(filter: GpuFilter, size: number, token: string): Promise<Page<GpuView>> {
    const limit = pageSize(size);
    const v = new Violations();
    checkString(v, "model", filter.model ?? "", { max: 128 });
    checkString(v, "mig_profile", filter.migProfile ?? "", { max: 24 });
    v.throwIfAny();
    const after = decodePageToken(token, filter, ["uuid", "int"]);
    const branches = listBranches(filter);
    // A row comparison is an index condition: a deep page starts at its key instead of reading every
    // row before it. The bound on h.id, implied by the join, lets the hosts side start there too.
    const keyset: Sql[] = after
      ? [{ sql: "(g.host_id, g.index) > (?::uuid, ?::int) and h.id >= ?::uuid", params: [after[0], after[1], after[0]] }]
      : [];
    const pages = branches.map((b) => pageSql([...b, ...keyset], limit + 1));
    // Two branches (OFFLINE): each one's first rows, merged in the same order.
    const page =
      pages.length === 1
        ? pages[0]!
        : {
            sql: `select * from (${pages.map((p) => `(${p.sql})`).join(" union all ")}) u order by u.host_id, u.index limit ?`,
            params: [...pages.flatMap((p) => p.params), limit + 1],
          };
    const counts = branches.map(countSql);
    const count = { sql: counts.map((c) => c.sql).join(" + "), params: counts.flatMap((c) => c.params) };

    const conn = this.orm.em.getConnection();
    const [rows, [counted]] = await Promise.all([
      conn.execute<GpuRow[]>(page.sql, page.params, "all"),
      conn.execute<{ n: number }[]>(`select (${count.sql})::int as n`, count.params, "all"),
    ]);
    const date = (value: string) => this.orm.em.getPlatform().parseDate(value) as Date;
    const items = rows.slice(0, limit).map((r) => this.view(shownGpu(r, date)));
    const last = items[items.length - 1];
    const nextPageToken = rows.length > limit && last ? encodePageToken([last.gpu.host.id, last.gpu.index], filter) : "";
    return { items, nextPageToken, totalSize: counted?.n ?? 0 };
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
          const parent = gpu.parent && (await em.findOne(Gpu, gpu.parent.id, { fields: ["status", "uuid"] }));
          if (parent?.status === "UNHEALTHY")
            throw new FailedPreconditionError(`GPU ${gpu.id} is a MIG slice of GPU ${parent.uuid}, which is UNHEALTHY: re-admit that GPU`);
          // Re-admission: the GPU goes back to whoever still holds it, or to the free pool.
          gpu.status = gpu.holder ? "ALLOCATED" : "AVAILABLE";
          gpu.healthReasons = [];
          this.onReadmit(gpu.host.id, gpu.uuid);
          // Its MIG slices, taken out with it, come back with it.
          if (gpu.migEnabled)
            await em.getConnection().execute(
              `update gpus set status = case when holder is null then 'AVAILABLE' else 'ALLOCATED' end, health_reasons = '[]'::jsonb,
                 updated_at = ?, version = version + 1
               where parent_id = ? and status = 'UNHEALTHY'`, // OFFLINE slices (gone in a re-partition) stay so
              [this.clock.now(), gpu.id],
              "run",
              em.getTransactionContext(),
            );
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
      `select case when h.status = 'OFFLINE' then 'OFFLINE' else g.status end as status, sum(g.n)::int as n
       from gpu_list_counts g join hosts h on h.id = g.host_id group by 1 having sum(g.n) > 0`,
    );
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  view(gpu: ShownGpu): GpuView {
    return { gpu, latestSample: this.samples.gpu(gpu.host.id, gpu.uuid) };
  }
}

/** A piece of SQL with its `?` parameters, in order. */
interface Sql {
  sql: string;
  params: unknown[];
}

/**
 * One condition of a GPU list, on the GPU row (`g`) or on its host's (`h`). A host condition that is
 * `common` holds for nearly every host of a working fleet (its state); labels pick some hosts.
 */
interface ListCondition extends Sql {
  on: "gpu" | "host";
  common?: boolean;
  /** The same condition on gpu_list_counts, where it differs from `sql`. */
  counted?: string;
}

/**
 * The filters of ListGpus as SQL (the same GPUs as FREE_GPU and hasLabels pick): conditions joined
 * with `and`, in one branch, or two disjoint ones for OFFLINE, whose union is what it picks.
 */
function listBranches(filter: GpuFilter): ListCondition[][] {
  const where: ListCondition[] = [];
  if (filter.hostId) where.push({ on: "gpu", sql: "g.host_id = ?::uuid", params: [checkId("host_id", filter.hostId)] });
  if (filter.model) where.push({ on: "gpu", sql: "g.model = ?", params: [filter.model] });
  if (filter.migProfile) where.push({ on: "gpu", sql: "g.mig_profile = ?", params: [filter.migProfile] });
  if (filter.status && filter.status !== "OFFLINE") {
    where.push({ on: "gpu", sql: "g.status = ?", params: [filter.status] });
    where.push({ on: "host", common: true, sql: "h.status <> 'OFFLINE'", params: [] });
  }
  if (filter.freeOnly) {
    where.push({ on: "gpu", sql: "g.status = 'AVAILABLE' and g.holder is null and not g.mig_enabled", counted: "g.free", params: [] });
    where.push({ on: "host", common: true, sql: "h.status = 'ONLINE' and h.schedulable", params: [] });
  }
  if (Object.keys(filter.labels).length > 0)
    where.push({ on: "host", sql: "h.labels @> ?::jsonb", params: [JSON.stringify(filter.labels)] });
  if (filter.status !== "OFFLINE") return [where];
  // A GPU of an OFFLINE host reads as OFFLINE whatever its row says (effectiveGpuStatus): the GPUs
  // OFFLINE themselves, and the others on OFFLINE hosts. Apart, each branch has an index to use;
  // `g.status = 'OFFLINE' or h.status = 'OFFLINE'` would read every GPU and host.
  return [
    [...where, { on: "gpu", sql: "g.status = 'OFFLINE'", params: [] }],
    [...where, { on: "gpu", sql: "g.status <> 'OFFLINE'", params: [] }, { on: "host", sql: "h.status = 'OFFLINE'", params: [] }],
  ];
}

/** The conditions joined with `and`; `true` for none. */
function all(conditions: Sql[]): Sql {
  if (conditions.length === 0) return { sql: "true", params: [] };
  return { sql: conditions.map((c) => `(${c.sql})`).join(" and "), params: conditions.flatMap((c) => c.params) };
}

/** The first `limit` GPUs of one branch (keyset included) in (host, index) order, with their host's fields. */
function pageSql(where: Sql[], limit: number): Sql {
  const w = all(where);
  return {
    sql: `select ${GPU_COLUMNS} from gpus g join hosts h on h.id = g.host_id where ${w.sql} order by g.host_id, g.index limit ?`,
    params: [...w.params, limit],
  };
}

/**
 * The exact number of GPUs of one branch, as a scalar expression: the kept counts (gpu_list_counts,
 * `g` here too) of the hosts and values that match, about one row per host where counting the GPU rows
 * read one per GPU. Every GPU has its host (a foreign key), so hosts are joined only for host
 * conditions. When those are all about the host's state, which nearly every host of a working fleet
 * passes, it counts what matches the GPU conditions less what is on hosts that fail: joining every
 * count to its host would cost more than both. Host columns are never null, so `not` is the exact
 * complement.
 */
function countSql(where: ListCondition[]): Sql {
  const gpu = all(where.filter((c) => c.on === "gpu").map((c) => ({ sql: c.counted ?? c.sql, params: c.params })));
  const host = where.filter((c) => c.on === "host");
  const sum = "select coalesce(sum(g.n), 0) from gpu_list_counts g";
  if (host.length === 0) return { sql: `(${sum} where ${gpu.sql})`, params: gpu.params };
  const joined = `${sum} join hosts h on h.id = g.host_id`;
  if (host.every((c) => c.common)) {
    const state = all(host);
    return {
      sql: `((${sum} where ${gpu.sql}) - (${joined} where ${gpu.sql} and not (${state.sql})))`,
      params: [...gpu.params, ...gpu.params, ...state.params],
    };
  }
  const both = all([gpu, ...host]);
  return { sql: `(${joined} where ${both.sql})`, params: both.params };
}

/** What a list page reads of a GPU and its host. */
const GPU_COLUMNS = `g.id, g.index, g.uuid, g.model, g.memory_bytes, g.status, g.holder, g.environment_id, g.health_reasons,
  g.driver_version, g.cuda_version, g.allocated_at, g.created_at, g.updated_at, g.mig_enabled, g.parent_id, g.mig_profile, g.mig_placement,
  h.id as host_id, h.name as host_name, h.status as host_status`;

interface GpuRow {
  id: string;
  index: number;
  uuid: string;
  model: string;
  /** bigint: the driver gives it as a string. */
  memory_bytes: string;
  status: GpuStatus;
  holder: string | null;
  environment_id: string | null;
  health_reasons: string[];
  driver_version: string;
  cuda_version: string;
  /** timestamptz: the driver gives them as strings, parsed as the ORM parses them. */
  allocated_at: string | null;
  created_at: string;
  updated_at: string;
  mig_enabled: boolean;
  parent_id: string | null;
  mig_profile: string;
  mig_placement: MigPlacement | null;
  host_id: string;
  host_name: string;
  host_status: HostStatus;
}

function shownGpu(r: GpuRow, date: (value: string) => Date): ShownGpu {
  return {
    id: r.id,
    index: r.index,
    uuid: r.uuid,
    model: r.model,
    memoryBytes: Number(r.memory_bytes),
    status: r.status,
    holder: r.holder,
    healthReasons: r.health_reasons,
    driverVersion: r.driver_version,
    cudaVersion: r.cuda_version,
    allocatedAt: r.allocated_at === null ? null : date(r.allocated_at),
    createdAt: date(r.created_at),
    updatedAt: date(r.updated_at),
    host: { id: r.host_id, name: r.host_name, status: r.host_status },
    environment: r.environment_id === null ? null : { id: r.environment_id },
    migEnabled: r.mig_enabled,
    parent: r.parent_id === null ? null : { id: r.parent_id },
    migProfile: r.mig_profile,
    migPlacement: r.mig_placement,
  };
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
