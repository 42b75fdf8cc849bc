import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import { ApiToken } from "../auth/api-token.js";
import { issueToken } from "../auth/token-secret.js";
import { MAX_GRACE_MS, retireTokens } from "../auth/workspace-tokens.js";
import { Environment } from "../environment/environment.js";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import { Gpu, type GpuView } from "../gpu/gpu.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { textFields, type ClusterEvents, type Decoders } from "../platform/cluster-events.js";
import { ReplicatedFeed, changeMessage, type Change, type ChangeTopic } from "../platform/replicated-feed.js";
import { onUniqueViolation } from "../platform/unique-violation.js";
import type { HostSampleRecord, LatestSamples } from "../telemetry/latest-samples.js";
import { Violations, checkLabels, checkString } from "../validation.js";
import { Host, hasLabels, type HostRuntime, type HostStatus } from "./host.js";
import type { AuditNote } from "../audit/audit-trail.js";

const unaudited: AuditNote = () => undefined;

export interface HostInput {
  name: string;
  address: string;
  labels: Record<string, string>;
  cpuMillicores: number;
  memoryBytes: number;
  diskBytes: number;
  runtime: HostRuntime;
  kubernetesNodeName: string;
}

/** A host with the GPU counts shown beside it. */
export interface HostView {
  host: Host;
  gpuCount: number;
  availableGpuCount: number;
  latestSample?: HostSampleRecord;
}

export interface HostFilter {
  status?: HostStatus;
  labels: Record<string, string>;
  schedulable?: boolean;
}

export type HostChange = Change<HostView>;

/** What watchers on other replicas are shown of a deleted host. */
export type DeletedHost = Pick<Host, "name" | "address">;

/** Host changes between replicas. */
export type HostTopics = ChangeTopic<"host", DeletedHost>;

export const hostTopics: Decoders<HostTopics> = { host: changeMessage(textFields("name", "address")) };

export interface DrainReport {
  view: HostView;
  allocatedGpus: GpuView[];
  environmentIds: string[];
}

/** New values for UpdateHost; only the fields the update mask names are set. */
export type HostPatch = Partial<Omit<HostInput, "name"> & { status: HostStatus }>;

export const UPDATABLE_HOST_FIELDS = ["address", "labels", "capacity", "runtime", "kubernetes_node_name", "status"] as const;

const HOST_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;
const ADDRESS = /^[A-Za-z0-9.:[\]-]+$/;
const ACTIVE_ENVIRONMENT_STATUSES = ["PENDING", "CREATING", "RUNNING", "STOPPING", "STARTING", "DELETING"] as const;

/** Hosts: registration, administration and liveness. */
export class HostRegistry {
  /** Every committed change of a host, made here or on another replica, for WatchHosts. */
  readonly changes: ReplicatedFeed<HostView, DeletedHost, "host">;
  private readonly deletionListeners: ((hostId: string) => void)[] = [];

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly samples: LatestSamples,
    private readonly graceMs: number,
    events: ClusterEvents<HostTopics>,
  ) {
    this.changes = new ReplicatedFeed(events, "host", {
      idOf: (view) => view.host.id,
      read: async (ids) => {
        const em = this.orm.em.fork();
        return this.views(em, await em.find(Host, { id: { $in: ids } }));
      },
      remains: ({ host }) => ({ name: host.name, address: host.address }),
      tombstone: (id, remains) => ({ host: Object.assign(new Host(), { id, ...remains }), gpuCount: 0, availableGpuCount: 0 }),
      // Its agent may be connected here: its stream ends, as on the replica that deleted it.
      deletedElsewhere: (id) => this.forget(id),
    });
  }

  /** `listener` is told of each host deleted, here or on another replica, after the delete committed. */
  onDeleted(listener: (hostId: string) => void): void {
    this.deletionListeners.push(listener);
  }

  /** Registers a host and mints its agent token (returned once, stored hashed). */
  async create(input: HostInput, note: AuditNote = unaudited): Promise<{ view: HostView; agentToken: string }> {
    const v = new Violations();
    checkString(v, "name", input.name, {
      required: true,
      max: 253,
      pattern: HOST_NAME,
      patternHint: "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
    });
    checkHostFields(v, input);
    v.throwIfAny();

    const em = this.orm.em.fork();
    const now = this.clock.now();
    const host = em.create(Host, { ...input, createdAt: now, updatedAt: now });
    const token = issueToken();
    em.create(ApiToken, { id: token.id, kind: "host", name: `agent of ${input.name}`, secretHash: token.secretHash, host, createdAt: now });
    note(em, { targetId: host.id });
    await onUniqueViolation(
      () => em.flush(),
      (c) => (c === "hosts_name_unique" ? new AlreadyExistsError("host", `named "${input.name}"`) : undefined),
    );
    const view = { host, gpuCount: 0, availableGpuCount: 0 };
    this.changes.publish("ADDED", view);
    return { view, agentToken: token.token };
  }

  /**
   * Mints a new agent token for a host; its earlier ones keep working `graceMs` more (0: revoked at
   * once), so the new one can be put in place without an outage. Returns it and when the old ones end.
   */
  async rotateToken(id: string, graceMs: number, note: AuditNote = unaudited): Promise<{ agentToken: string; previousUntil: Date }> {
    const hostId = checkId("host_id", id);
    const v = new Violations();
    v.check(graceMs >= 0 && graceMs <= MAX_GRACE_MS, "grace", "must be from 0 to 30 days");
    v.throwIfAny();
    const now = this.clock.now();
    return this.orm.em.fork().transactional(async (em) => {
      // The host's row lock serialises rotations: two at once would each retire the other's token.
      const host = await em.findOne(Host, hostId, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!host) throw new NotFoundError("host", hostId);
      const previousUntil = await retireTokens(em, { host, kind: "host" }, graceMs, now);
      const token = issueToken();
      em.create(ApiToken, {
        id: token.id,
        kind: "host",
        name: `agent of ${host.name}`,
        secretHash: token.secretHash,
        host,
        createdAt: now,
      });
      note(em, { targetId: host.id });
      return { agentToken: token.token, previousUntil };
    });
  }

  async get(id: string): Promise<HostView> {
    const em = this.orm.em.fork();
    const host = await this.find(em, id);
    return (await this.views(em, [host]))[0]!;
  }

  async list(filter: HostFilter, size: number, token: string): Promise<Page<HostView>> {
    const limit = pageSize(size);
    const after = decodePageToken(token, filter, ["string"]);
    const where: FilterQuery<Host> = {};
    if (filter.status) where.status = filter.status;
    if (filter.schedulable !== undefined) where.schedulable = filter.schedulable;
    if (Object.keys(filter.labels).length > 0) Object.assign(where, hasLabels(filter.labels));

    const em = this.orm.em.fork();
    const [rows, totalSize] = await Promise.all([
      em.find(Host, after ? { $and: [where, { name: { $gt: after[0] as string } }] } : where, {
        orderBy: { name: "asc" },
        limit: limit + 1,
      }),
      em.count(Host, where),
    ]);
    const items = rows.slice(0, limit);
    const nextPageToken = rows.length > limit ? encodePageToken([items[items.length - 1]!.name], filter) : "";
    return { items: await this.views(em, items), nextPageToken, totalSize };
  }

  /**
   * Changes the fields named in `fields` (update-mask paths) to their values in `patch`. The host
   * row is locked, so concurrent operator changes apply one after the other instead of failing.
   */
  async update(id: string, patch: HostPatch, fields: string[], note: AuditNote = unaudited): Promise<HostView> {
    if (fields.length === 0) throw InvalidArgumentError.field("update_mask", `name at least one of: ${UPDATABLE_HOST_FIELDS.join(", ")}`);
    const v = new Violations();
    for (const f of fields)
      v.check(
        (UPDATABLE_HOST_FIELDS as readonly string[]).includes(f),
        "update_mask",
        `"${f}" cannot be updated; allowed: ${UPDATABLE_HOST_FIELDS.join(", ")}`,
      );
    if (patch.status)
      v.check(
        ["MAINTENANCE", "ONLINE"].includes(patch.status),
        "host.status",
        "may only be set to HOST_STATUS_MAINTENANCE or HOST_STATUS_ONLINE",
      );
    v.throwIfAny();

    return this.change(
      id,
      (host) => {
        const { status, ...fieldsPatch } = patch;
        if (host.nodeState && (fields.includes("runtime") || fields.includes("kubernetes_node_name"))) {
          throw new FailedPreconditionError(
            `host "${host.name}" was registered from Kubernetes node "${host.kubernetesNodeName}" (K8S_NODE_SELECTOR); its runtime and node name follow the node`,
          );
        }
        const next = { ...host, ...fieldsPatch };
        checkHostFields(v, next);
        v.throwIfAny();
        Object.assign(host, fieldsPatch);
        if (status && status !== host.status) {
          if (status === "MAINTENANCE") {
            host.status = "MAINTENANCE";
            host.statusMessage = "in maintenance";
          } else if (host.status === "MAINTENANCE") {
            this.setLiveness(host);
          } else {
            throw new FailedPreconditionError(`host "${host.name}" is ${host.status}, not in maintenance; use UncordonHost to end a drain`);
          }
        }
      },
      note,
    );
  }

  /** Deletes a host with its GPUs and agent token; refused while any of its GPUs is held. */
  async delete(id: string, note: AuditNote = unaudited): Promise<void> {
    const last = await this.orm.em.fork().transactional(async (em) => {
      const host = await this.find(em, id, LockMode.PESSIMISTIC_WRITE);
      // Locking every GPU row of the host first means no allocation can slip in between the check and the delete.
      const gpus = await em.find(Gpu, { host }, { lockMode: LockMode.PESSIMISTIC_WRITE });
      const held = gpus.filter((g) => g.holder !== null).length;
      const running = await em.count(Environment, { host, status: { $in: [...ACTIVE_ENVIRONMENT_STATUSES] } });
      if (running > 0) {
        // Draining keeps new ones away but ends none; on an OFFLINE host a stop or delete is immediate.
        throw new FailedPreconditionError(
          `host "${host.name}" still has ${running} environment(s) holding its resources; stop or delete them first` +
            (host.status === "OFFLINE" ? " (it is OFFLINE: they are released at once)" : ""),
        );
      }
      if (held > 0) {
        throw new FailedPreconditionError(`host "${host.name}" has ${held} allocated GPU(s); drain it and release them before deleting`);
      }
      const view = (await this.views(em, [host]))[0]!;
      note(em, { targetId: host.id });
      await em.nativeDelete(Host, { id: host.id });
      return view;
    });
    this.forget(last.host.id);
    this.changes.publish("DELETED", last);
  }

  async cordon(id: string, note: AuditNote = unaudited): Promise<HostView> {
    return this.change(
      id,
      (host) => {
        host.schedulable = false;
      },
      note,
    );
  }

  /** Makes the host schedulable again; a drain ends and the status follows the heartbeats. */
  async uncordon(id: string, note: AuditNote = unaudited): Promise<HostView> {
    return this.change(
      id,
      (host) => {
        host.schedulable = true;
        if (host.status === "DRAINING") this.setLiveness(host);
      },
      note,
    );
  }

  async drain(id: string, note: AuditNote = unaudited): Promise<DrainReport> {
    const view = await this.change(
      id,
      (host) => {
        host.schedulable = false;
        host.status = "DRAINING";
        host.statusMessage = "draining: no new work is placed here";
      },
      note,
    );
    const em = this.orm.em.fork();
    const [allocatedGpus, environments] = await Promise.all([
      em.find(Gpu, { host: view.host.id, holder: { $ne: null } }, { orderBy: { index: "asc" }, populate: ["host"] }),
      em.find(Environment, { host: view.host.id, status: { $in: [...ACTIVE_ENVIRONMENT_STATUSES] } }, { fields: ["id"] }),
    ]);
    return {
      view,
      allocatedGpus: allocatedGpus.map((gpu) => ({ gpu, latestSample: this.samples.gpu(gpu.host.id, gpu.uuid) })),
      environmentIds: environments.map((e) => e.id),
    };
  }

  /**
   * Records a heartbeat: last-seen moves on, an OFFLINE host comes ONLINE (unless its Kubernetes Node
   * decides its status). A single UPDATE, so it never conflicts with an operator's change to the same host.
   */
  async heartbeat(hostId: string, agentVersion: string): Promise<void> {
    const id = checkId("host_id", hostId);
    const v = new Violations();
    checkString(v, "agent_version", agentVersion, { max: 64 });
    v.throwIfAny();
    const em = this.orm.em.fork();
    const now = this.clock.now();
    const updated = await em.getConnection().execute(
      `update hosts set
         last_heartbeat_at = ?,
         agent_version = case when ? = '' then agent_version else ? end,
         status_message = case when status = 'OFFLINE' and node_state is null then '' else status_message end,
         updated_at = case when status = 'OFFLINE' and node_state is null then ? else updated_at end,
         status = case when status = 'OFFLINE' and node_state is null then 'ONLINE' else status end
       where id = ?`,
      [now, agentVersion, agentVersion, now, id],
      "run",
    );
    if ((updated as { affectedRows?: number }).affectedRows === 0) throw new NotFoundError("host", id);
    this.changes.publish("MODIFIED", await this.get(id));
  }

  /** Tells watchers of every replica about hosts changed outside this registry (agent sessions, lease expiry). */
  announce(ids: string[]): void {
    this.changes.announce(ids);
  }

  /** Tells watchers of every replica about a host registered outside this registry (from its Kubernetes node). */
  async announceAdded(id: string): Promise<void> {
    this.changes.publish("ADDED", await this.get(id));
  }

  private forget(id: string): void {
    this.samples.forgetHost(id);
    for (const listener of this.deletionListeners) listener(id);
  }

  get heartbeatGraceMs(): number {
    return this.graceMs;
  }

  private setLiveness(host: Host): void {
    if (host.nodeState) {
      host.status = host.nodeState.ready ? "ONLINE" : "OFFLINE";
      host.statusMessage = host.nodeState.reason;
      return;
    }
    const fresh = host.lastHeartbeatAt !== null && this.clock.now().getTime() - host.lastHeartbeatAt.getTime() < this.graceMs;
    host.status = fresh ? "ONLINE" : "OFFLINE";
    host.statusMessage = fresh ? "" : "no recent heartbeat";
  }

  private async change(id: string, mutate: (host: Host) => void, note: AuditNote): Promise<HostView> {
    const em = this.orm.em.fork();
    const host = await em.transactional(async (tx) => {
      const locked = await this.find(tx, id, LockMode.PESSIMISTIC_WRITE);
      mutate(locked);
      locked.updatedAt = this.clock.now();
      note(tx, { targetId: locked.id });
      return locked;
    });
    return this.publish(em, host);
  }

  private async publish(em: EntityManager, host: Host): Promise<HostView> {
    const view = (await this.views(em, [host]))[0]!;
    this.changes.publish("MODIFIED", view);
    return view;
  }

  private async find(em: EntityManager, id: string, lockMode?: LockMode): Promise<Host> {
    const host = await em.findOne(Host, checkId("id", id), lockMode ? { lockMode } : {});
    if (!host) throw new NotFoundError("host", id);
    return host;
  }

  private async views(em: EntityManager, hosts: Host[]): Promise<HostView[]> {
    if (hosts.length === 0) return [];
    const knex = em.getConnection().getKnex();
    const rows: { host_id: string; total: number; available: number }[] = await knex("gpus")
      .select("host_id", knex.raw("count(*)::int as total"), knex.raw("(count(*) filter (where status = 'AVAILABLE'))::int as available"))
      .whereIn(
        "host_id",
        hosts.map((h) => h.id),
      )
      .groupBy("host_id");
    const counts = new Map(rows.map((r) => [r.host_id, r]));
    return hosts.map((host) => ({
      host,
      gpuCount: counts.get(host.id)?.total ?? 0,
      availableGpuCount: counts.get(host.id)?.available ?? 0,
      latestSample: this.samples.host(host.id),
    }));
  }
}

function checkHostFields(v: Violations, h: Pick<HostInput, "address" | "labels" | "runtime" | "kubernetesNodeName">): void {
  checkString(v, "address", h.address, {
    required: true,
    max: 255,
    pattern: ADDRESS,
    patternHint: "a hostname or IP address, optionally with :port",
  });
  checkLabels(v, "labels", h.labels);
  checkString(v, "kubernetes_node_name", h.kubernetesNodeName, { max: 253, pattern: HOST_NAME, patternHint: "a Kubernetes node name" });
  if (h.runtime === "KUBERNETES")
    v.check(h.kubernetesNodeName !== "", "kubernetes_node_name", "required when runtime is HOST_RUNTIME_KUBERNETES");
}
