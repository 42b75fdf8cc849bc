import type { EntityManager } from "@mikro-orm/postgresql";
import { AlreadyExistsError, ConflictError, InvalidArgumentError, QuotaExceededError, ResourceExhaustedError } from "../errors.js";
import { parseSliceModel, sliceModel } from "../gpu/mig.js";
import { modelAllowed } from "../workspace/quota-ledger.js";
import { pgArray } from "../platform/bulk-sql.js";

export interface PlacementRequest {
  gpuCount: number;
  /** Exact model, or "" for any. */
  gpuModel: string;
  /** Models the workspace may use; empty for any. */
  allowedModels: string[];
  /** Only this host (a stopped environment's volume lives there). */
  onlyHost?: string;
  /** MIG slices of this profile instead of whole GPUs; gpuModel then names their parents' model. */
  migProfile?: string;
}

export interface PlacedGpu {
  id: string;
  uuid: string;
  index: number;
  model: string;
}

export interface Placement {
  hostId: string;
  gpus: PlacedGpu[];
}

/** A host port range, inclusive. */
export interface PortRange {
  first: number;
  last: number;
}

type Row = Record<string, unknown>;

async function query<T extends Row>(em: EntityManager, sql: string, params: unknown[]): Promise<T[]> {
  return em.getConnection().execute<T[]>(sql, params, "all", em.getTransactionContext());
}

/** A host that takes new environments: online, not cordoned, and its agent did not say it cannot run them. */
const OPEN_HOST = "h.status = 'ONLINE' and h.schedulable and h.runtime_unavailable_reason = ''";

/**
 * Chooses a host and GPUs for an environment inside the caller's transaction. Best fit: among online,
 * schedulable hosts with enough free healthy GPUs of the model, the one with the fewest free, so big
 * requests still find whole hosts later. Hosts whose agent said it cannot run environments (no
 * container engine, say) are skipped, and their reasons given in the refusal when nothing else fits.
 *
 * One round trip: the database function `place_gpus` (migration `free_gpu_counts`) walks the
 * candidates from per-host free GPU counts that triggers keep, best fit first. The host is
 * share-locked and re-read, so a concurrent cordon, drain or hello either waits for this placement or
 * is seen by it; then its GPUs are locked FOR UPDATE SKIP LOCKED, so concurrent placements take
 * different GPUs instead of waiting, and a host that falls short gives its locks back. Concurrent
 * placements first pass over hosts another placement is working on (they would all pick the same
 * best fit), and share them only when nothing else fits.
 */
export async function placeEnvironment(em: EntityManager, req: PlacementRequest): Promise<Placement> {
  const modelFilter = req.gpuCount > 0 ? await modelsToPlace(em, req) : [];
  const [placed] = await query<{ host_id: string | null; gpus: PlacedGpu[] | null; contended: boolean }>(
    em,
    "select host_id, gpus, contended from place_gpus(?, ?::text[], ?::uuid)",
    [req.gpuCount, pgArray(modelFilter), req.onlyHost ?? null],
  );
  if (placed?.host_id) {
    const gpus = (placed.gpus ?? []).map((g) => ({ id: g.id, uuid: g.uuid, index: g.index, model: g.model }));
    return { hostId: placed.host_id, gpus };
  }
  if (placed?.contended) throw new ConflictError("the free GPUs that fit were being allocated by concurrent requests; retry");
  const modelSql = modelFilter.length > 0 ? `and g.model in (${modelFilter.map(() => "?").join(", ")})` : "and g.mig_profile = ''";
  throw await noRoom(em, req, modelFilter, modelSql);
}

/**
 * The models a placement may take GPUs of; empty for any whole GPU. A profile is placed like a model:
 * the slice models of that profile in the fleet (of the parent model asked for, and that the quota
 * allows). Without one, only whole GPUs: a quota that allows slice models is not a way to get slices
 * without asking for them, nor to mix them with whole GPUs.
 */
async function modelsToPlace(em: EntityManager, req: PlacementRequest): Promise<string[]> {
  if (!req.migProfile) {
    if (req.gpuModel) return [req.gpuModel];
    const whole = req.allowedModels.filter((m) => !parseSliceModel(m));
    if (req.allowedModels.length > 0 && whole.length === 0)
      throw new QuotaExceededError(
        "allowed_gpu_models",
        0,
        0,
        req.gpuCount,
        `quota exceeded: allowed_gpu_models allows only MIG slices (${req.allowedModels.join(", ")}); ask for them with mig_profile`,
      );
    return whole;
  }
  const profile = req.migProfile;
  const fleet = (
    await query<{ model: string }>(
      em,
      "select distinct model from gpus where mig_profile <> '' and mig_profile = ? and status <> 'OFFLINE' order by model",
      [profile],
    )
  ).map((r) => r.model);
  if (fleet.length === 0) {
    const known = await query<{ p: string }>(
      em,
      "select distinct mig_profile as p from gpus where mig_profile <> '' and status <> 'OFFLINE' order by 1",
      [],
    );
    throw InvalidArgumentError.field(
      "mig_profile",
      `no GPU in the fleet has MIG slices of profile "${profile}"; ${known.length > 0 ? `the fleet has: ${known.map((k) => k.p).join(", ")}` : "the fleet has no MIG slices"}`,
    );
  }
  const ofModel = req.gpuModel ? fleet.filter((m) => m === req.gpuModel || m === sliceModel(req.gpuModel, profile)) : fleet;
  if (ofModel.length === 0) {
    const parents = fleet.map((m) => parseSliceModel(m)?.parentModel ?? m);
    throw InvalidArgumentError.field(
      "gpu_model",
      `no "${req.gpuModel}" GPU has MIG slices of profile "${profile}"; the fleet has them on: ${parents.join(", ")}`,
    );
  }
  const allowed = ofModel.filter((m) => modelAllowed(req.allowedModels, m));
  if (allowed.length === 0)
    throw new QuotaExceededError(
      "allowed_gpu_models",
      0,
      0,
      req.gpuCount,
      `quota exceeded: allowed_gpu_models does not include MIG slices of profile "${profile}" (${ofModel.join(", ")}; allowed: ${req.allowedModels.join(", ")})`,
    );
  return allowed;
}

/**
 * RESOURCE_EXHAUSTED with what there is, so the caller can tell how far off the request is, and why
 * hosts that would have fit were skipped: their agent said it cannot run environments.
 */
async function noRoom(em: EntityManager, req: PlacementRequest, modelFilter: string[], modelSql: string): Promise<ResourceExhaustedError> {
  const hostSql = req.onlyHost ? "and h.id = ?" : "";
  const hostParams = req.onlyHost ? [req.onlyHost] : [];
  const free = `g.status = 'AVAILABLE' and g.holder is null and not g.mig_enabled ${modelSql}`;
  const [counts] = await query<{ total: number; best: number }>(
    em,
    `select coalesce(sum(n), 0)::int as total, coalesce(max(n), 0)::int as best from (
       select count(*) as n from gpus g join hosts h on h.id = g.host_id
        where ${OPEN_HOST} and ${free} ${hostSql}
        group by h.id) per_host`,
    [...modelFilter, ...hostParams],
  );
  // Hosts that would have fit but for what their agent said, per reason, with how many there are in all.
  const unable = await query<{ reason: string; n: number; hosts: number }>(
    em,
    `select reason, count(*)::int as n, (sum(count(*)) over ())::int as hosts from (
       select h.runtime_unavailable_reason as reason from hosts h left join gpus g on g.host_id = h.id
        where h.status = 'ONLINE' and h.schedulable and h.runtime_unavailable_reason <> '' ${hostSql}
        group by h.id
       having (count(g.id) filter (where ${free})) >= ?) skipped
      group by reason order by n desc, reason limit 3`,
    [...hostParams, ...modelFilter, req.gpuCount],
  );
  if (req.onlyHost && unable[0])
    return new ResourceExhaustedError(
      `host ${req.onlyHost}, where the environment's volume is, cannot run environments: ${unable[0].reason}`,
    );
  const skipped = cannotRun(unable);
  const model = req.migProfile
    ? `(MIG slices of profile "${req.migProfile}": ${modelFilter.join(", ")})`
    : req.gpuModel
      ? `of model "${req.gpuModel}"`
      : modelFilter.length > 0
        ? `of an allowed model (${modelFilter.join(", ")})`
        : "";
  const where = req.onlyHost ? `on host ${req.onlyHost}, where the environment's volume is` : "on any online, schedulable host";
  if (req.gpuCount === 0)
    return new ResourceExhaustedError(
      `no online, schedulable host ${req.onlyHost ? `(host ${req.onlyHost} is not)` : "to place it on"}${skipped}`,
    );
  return new ResourceExhaustedError(
    `no host with ${req.gpuCount} free healthy GPU(s) ${model} ${where}: the most free on one host is ${counts?.best ?? 0}, ${counts?.total ?? 0} free in all`.replace(
      / +/g,
      " ",
    ) + skipped,
  );
}

/**
 * "; 1 host cannot run environments: <reason>" from the skipped hosts (the commonest reasons, each
 * with its count when they differ); "" for none.
 */
function cannotRun(unable: { reason: string; n: number; hosts: number }[]): string {
  const first = unable[0];
  if (!first) return "";
  const hosts = (n: number) => `${n} host${n === 1 ? "" : "s"}`;
  const shown = unable.reduce((sum, u) => sum + u.n, 0);
  const reasons = first.n === first.hosts ? first.reason : unable.map((u) => `${u.reason} (${hosts(u.n)})`).join("; ");
  const more = shown < first.hosts ? `; ${hosts(first.hosts - shown)} for other reasons` : "";
  return `; ${hosts(first.hosts)} cannot run environments: ${reasons}${more}`;
}

/**
 * Picks `count` free host ports from `range` on a host (and `wanted` ones where asked). A
 * transaction-scoped advisory lock per host serialises port choice there; the unique index on
 * (host, port) stays the last word.
 */
export async function allocateHostPorts(
  em: EntityManager,
  hostId: string,
  range: PortRange,
  count: number,
  wanted: (number | undefined)[] = [],
): Promise<number[]> {
  await query(em, "select pg_advisory_xact_lock(hashtextextended(?, 7315))", [`host-ports:${hostId}`]);
  const used = new Set(
    (await query<{ host_port: number }>(em, "select host_port from port_mappings where host_id = ?", [hostId])).map((r) => r.host_port),
  );
  const ports: number[] = [];
  for (let i = 0; i < count; i++) {
    const asked = wanted[i];
    if (asked !== undefined) {
      if (used.has(asked)) throw new AlreadyExistsError("host port", `${asked} on host ${hostId}`);
      used.add(asked);
      ports.push(asked);
      continue;
    }
    let port = range.first;
    while (port <= range.last && used.has(port)) port++;
    if (port > range.last) throw new ResourceExhaustedError(`no free host port in ${range.first}-${range.last} on host ${hostId}`);
    used.add(port);
    ports.push(port);
  }
  return ports;
}
