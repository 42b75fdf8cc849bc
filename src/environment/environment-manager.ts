import { createHash } from "node:crypto";
import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import type { AuditNote } from "../audit/audit-trail.js";
import {
  AlreadyExistsError,
  ConflictError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  RequestIdReusedError,
} from "../errors.js";
import { Host, changesPortsInPlace } from "../host/host.js";
import { Gpu } from "../gpu/gpu.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { textFields, type ClusterEvents, type Decoders } from "../platform/cluster-events.js";
import { ReplicatedFeed, changeMessage, type Change, type ChangeTopic } from "../platform/replicated-feed.js";
import { onUniqueViolation } from "../platform/unique-violation.js";
import { ingressUrl, type KubernetesOptions } from "../runtime/kubernetes-manifests.js";
import { Violations, checkNoDeviceVariables, checkString } from "../validation.js";
import { admit, type QuotaLedger } from "../workspace/quota-ledger.js";
import { Workspace } from "../workspace/workspace.js";
import { DEFAULT_STORAGE_BYTES, Environment, PortMapping, portMappingId, type EnvironmentStatus, type PortSpec } from "./environment.js";
import { allocateHostPorts, placeEnvironment, type PortRange } from "./placement.js";
import { MIG_PROFILE, parseSliceModel } from "../gpu/mig.js";

export interface EnvironmentInput {
  workspaceId: string;
  name: string;
  image: string;
  command: string[];
  args: string[];
  env: Record<string, string>;
  gpuCount: number;
  gpuModel: string;
  /** MIG slices of this profile instead of whole GPUs; "" for whole GPUs. */
  migProfile: string;
  cpuMillicores: number;
  memoryBytes: number;
  storageBytes: number;
  ports: PortSpec[];
  sshPublicKeys: string[];
  idleTimeoutMinutes: number;
  requestId: string;
}

/** An environment with what it holds. */
export interface EnvironmentView {
  environment: Environment;
  gpuIds: string[];
  portMappings: PortMapping[];
}

/** The GPU rows an environment holds (in index order) and its port mappings (by name, with their host). */
export interface Holdings {
  gpus: Gpu[];
  ports: PortMapping[];
}

/** Reads what one environment holds. */
export async function holdings(em: EntityManager, environmentId: string): Promise<Holdings> {
  const [gpus, ports] = await Promise.all([
    em.find(Gpu, { environment: environmentId }, { orderBy: { index: "asc" } }),
    em.find(PortMapping, { environment: environmentId }, { orderBy: { name: "asc" }, populate: ["host"] }),
  ]);
  return { gpus, ports };
}

export interface EnvironmentFilter {
  workspaceId?: string;
  status?: EnvironmentStatus;
  hostId?: string;
}

export type EnvironmentChange = Change<EnvironmentView>;

/** What watchers on other replicas are shown of a deleted environment. */
export type DeletedEnvironment = Pick<Environment, "name"> & { workspaceId: string };

/** Environment changes between replicas. */
export type EnvironmentTopics = ChangeTopic<"environment", DeletedEnvironment>;

export const environmentTopics: Decoders<EnvironmentTopics> = { environment: changeMessage(textFields("workspaceId", "name")) };

/** Who is asking: a workspace token sees only its workspace's environments; undefined sees all. */
export type Visibility = string | undefined;

const NAME = /^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;
const PORT_NAME = /^[a-z]([a-z0-9-]{0,13}[a-z0-9])?$/;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const SSH_KEY = /^(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ [A-Za-z0-9+/=]+( .*)?$/;
const MAX_SSH_KEYS = 32;

/** Two key lines name the same key when their type and body match; comments may differ. */
function sameSshKey(a: string, b: string): boolean {
  const [typeA, bodyA] = a.trim().split(/\s+/);
  const [typeB, bodyB] = b.trim().split(/\s+/);
  return typeA === typeB && bodyA === bodyB;
}
const MAX_TRANSITIONS = 50;

/** Statuses in which an environment holds GPUs and ports. */
export const HOLDING: EnvironmentStatus[] = ["PENDING", "CREATING", "STARTING", "RUNNING", "STOPPING", "DELETING"];

/**
 * Environments: the API's side of their lifecycle. Requests change the desired state (and the
 * status it leads to) in one transaction; the EnvironmentReconciler then makes the runtime follow.
 */
export class EnvironmentManager {
  /** Every committed change, made here or on another replica, for WatchEnvironments and StreamLogs. */
  readonly changes: ReplicatedFeed<EnvironmentView, DeletedEnvironment, "environment">;

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly quotas: QuotaLedger,
    private readonly portRange: PortRange,
    events: ClusterEvents<EnvironmentTopics>,
    /** Told after a change to an environment that the reconciler should act on. */
    private readonly kick: (environmentId: string) => void = () => undefined,
    /** How hosts and GPUs are chosen (replaceable for benchmarks). */
    private readonly place: typeof placeEnvironment = placeEnvironment,
    /** The Kubernetes runtime's settings, when it is on: HTTP ports of its hosts are reached through ingress hosts. */
    private readonly kubernetes?: Pick<KubernetesOptions, "gpuMode" | "ingressBaseDomain" | "ingressTlsSecret" | "ingressCertIssuer">,
  ) {
    this.changes = new ReplicatedFeed(events, "environment", {
      idOf: (view) => view.environment.id,
      read: async (ids) => {
        const em = this.orm.em.fork();
        return this.views(em, await em.find(Environment, { id: { $in: ids } }, { populate: ["host"] }));
      },
      remains: ({ environment }) => ({ workspaceId: environment.workspace.id, name: environment.name }),
      tombstone: (id, { workspaceId, name }) => {
        const workspace = { id: workspaceId } as Workspace;
        const environment = Object.assign(new Environment(), { id, name, workspace, status: "DELETED", desiredState: "DELETED" });
        return { environment, gpuIds: [], portMappings: [] };
      },
    });
  }

  /**
   * Reserves quota, places the environment on a host with its GPUs and ports, and records it PENDING,
   * all in one transaction. A retry of the same request with the same request id returns the first
   * one; the same request id with another request is refused (RequestIdReusedError).
   */
  async create(request: EnvironmentInput, note: AuditNote): Promise<EnvironmentView> {
    checkInput(request);
    const input = { ...request, storageBytes: request.storageBytes || DEFAULT_STORAGE_BYTES };
    const hash = requestHash(input);
    if (input.requestId) {
      const earlier = await this.byRequestId(input.workspaceId, input.requestId);
      if (earlier) return sameRequest(earlier, input.requestId, hash);
    }
    try {
      const view = await this.orm.em.fork().transactional(async (em): Promise<EnvironmentView> => {
        const { quota, usage } = await this.quotas.reserve(em, input.workspaceId, {
          environments: 1,
          cpuMillicores: input.cpuMillicores,
          memoryBytes: input.memoryBytes,
          storageBytes: input.storageBytes,
        });
        const placement = await this.place(em, {
          gpuCount: input.gpuCount,
          gpuModel: input.gpuModel,
          migProfile: input.migProfile,
          allowedModels: quota.allowedGpuModels,
        });
        // The quota row is still locked: nothing has added to the usage measured under it.
        admit(quota, usage, { gpusPerModel: countModels(placement.gpus) });
        const now = this.clock.now();
        const { workspaceId, requestId, ...fields } = input;
        const environment = em.create(Environment, {
          ...fields,
          workspace: workspaceId,
          requestId: requestId || null,
          requestHash: requestId ? hash : null,
          primaryPort: input.ports[0]?.containerPort ?? 0,
          host: placement.hostId,
          generation: 1,
          createdAt: now,
          updatedAt: now,
        });
        transition(environment, "PENDING", "scheduled", now);
        const gpuIds = placement.gpus.map((g) => g.id);
        const portMappings = await this.hold(em, environment, placement.hostId, gpuIds);
        note(em, { workspaceId, targetId: environment.id });
        // What view() would read back, known already: the placed GPUs (in index order) and the new mappings.
        const countOnly = await this.countOnlyHosts(em, [environment]);
        return {
          environment,
          gpuIds: countOnly.has(placement.hostId) ? [] : gpuIds,
          portMappings: portMappings.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
        };
      });
      this.publish("ADDED", view);
      return view;
    } catch (err) {
      const mapped = await onUniqueViolation(
        () => Promise.reject(err),
        (c) =>
          c === "environments_workspace_name_unique"
            ? new AlreadyExistsError("environment", `named "${input.name}" in this workspace`)
            : undefined,
      ).catch((e: unknown) => e);
      // Two retries of one request raced: the loser returns the winner's environment.
      if (input.requestId && mapped === err) {
        const earlier = await this.byRequestId(input.workspaceId, input.requestId);
        if (earlier) return sameRequest(earlier, input.requestId, hash);
      }
      throw mapped;
    }
  }

  async get(id: string, visibility: Visibility): Promise<EnvironmentView> {
    const em = this.orm.em.fork();
    return this.view(em, await this.find(em, id, visibility));
  }

  /** Newest first. */
  async list(filter: EnvironmentFilter, size: number, token: string): Promise<Page<EnvironmentView>> {
    const limit = pageSize(size);
    const after = decodePageToken(token, filter, ["int", "uuid"]);
    const where: FilterQuery<Environment>[] = [];
    if (filter.workspaceId) where.push({ workspace: checkId("workspace_id", filter.workspaceId) });
    if (filter.status) where.push({ status: filter.status });
    if (filter.hostId) where.push({ host: checkId("host_id", filter.hostId) });
    const matching = [...where];
    if (after) {
      const createdAt = new Date(after[0] as number);
      where.push({ $or: [{ createdAt: { $lt: createdAt } }, { createdAt, id: { $lt: after[1] as string } }] });
    }
    const em = this.orm.em.fork();
    const [rows, totalSize] = await Promise.all([
      em.find(Environment, { $and: where }, { orderBy: [{ createdAt: "desc" }, { id: "desc" }], limit: limit + 1 }),
      em.count(Environment, { $and: matching }),
    ]);
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    const nextPageToken = rows.length > limit && last ? encodePageToken([last.createdAt.getTime(), last.id], filter) : "";
    return { items: await this.views(em, items), nextPageToken, totalSize };
  }

  /** Schedules a STOPPED or FAILED environment again, on the host that keeps its volume. */
  async start(id: string, visibility: Visibility, note: AuditNote): Promise<EnvironmentView> {
    return this.change(id, visibility, note, async (em, env) => {
      if (env.status !== "STOPPED" && env.status !== "FAILED")
        throw new FailedPreconditionError(`environment "${env.name}" is ${env.status}; only a STOPPED or FAILED one can be started`);
      const { quota, usage } = await this.quotas.reserve(em, env.workspace.id, {
        cpuMillicores: env.cpuMillicores,
        memoryBytes: env.memoryBytes,
      });
      // The volume lives on the host it last ran on; a host that is gone frees the environment to move.
      const placement = await this.place(em, {
        gpuCount: env.gpuCount,
        gpuModel: env.gpuModel,
        migProfile: env.migProfile,
        allowedModels: quota.allowedGpuModels,
        onlyHost: env.host?.id,
      });
      admit(quota, usage, { gpusPerModel: countModels(placement.gpus) });
      env.host = em.getReference(Host, placement.hostId);
      env.desiredState = "RUNNING";
      env.generation++;
      resetWorkload(env);
      transition(env, "STARTING", "starting", this.clock.now());
      await this.hold(
        em,
        env,
        placement.hostId,
        placement.gpus.map((g) => g.id),
      );
    });
  }

  /** Stops the workload and releases GPUs and ports; the volume stays. */
  /** `unchangedSince`: only if the environment is still at that version (the idle stopper's view of it). */
  async stop(id: string, visibility: Visibility, note: AuditNote, reason = "stopping", unchangedSince?: number): Promise<EnvironmentView> {
    return this.change(id, visibility, note, async (_em, env) => {
      if (unchangedSince !== undefined && env.version !== unchangedSince)
        throw new ConflictError(`environment "${env.name}" changed meanwhile`);
      if (!["PENDING", "CREATING", "STARTING", "RUNNING"].includes(env.status)) {
        throw new FailedPreconditionError(`environment "${env.name}" is ${env.status}; only a running or starting one can be stopped`);
      }
      env.desiredState = "STOPPED";
      resetWorkload(env);
      transition(env, "STOPPING", reason, this.clock.now());
    });
  }

  /** Runs the workload anew on the GPUs and ports it holds. */
  async restart(id: string, visibility: Visibility, note: AuditNote): Promise<EnvironmentView> {
    return this.change(id, visibility, note, async (_em, env) => {
      if (env.status !== "RUNNING")
        throw new FailedPreconditionError(`environment "${env.name}" is ${env.status}; only a RUNNING one can be restarted`);
      env.generation++;
      resetWorkload(env);
      transition(env, "STARTING", "restarting", this.clock.now());
    });
  }

  /** Removes the workload and its volume, releases everything, and frees the name once done. */
  async delete(id: string, visibility: Visibility, note: AuditNote): Promise<EnvironmentView> {
    return this.change(id, visibility, note, async (_em, env) => {
      if (env.status === "DELETING") throw new FailedPreconditionError(`environment "${env.name}" is already being deleted`);
      env.desiredState = "DELETED";
      resetWorkload(env);
      transition(env, "DELETING", "deleting", this.clock.now());
    });
  }

  /**
   * Deletes every environment of a workspace through the normal path and waits until they are gone
   * (DeleteWorkspace with force). FAILED_PRECONDITION if some are still going after `waitMs`.
   */
  async deleteAll(workspaceId: string, waitMs: number): Promise<void> {
    const em = this.orm.em.fork();
    for (const env of await em.find(Environment, { workspace: workspaceId, status: { $ne: "DELETING" } }, { fields: ["id"] })) {
      await this.delete(env.id, undefined, () => undefined).catch((err: unknown) => {
        if (!(err instanceof NotFoundError || err instanceof FailedPreconditionError)) throw err;
      });
    }
    const deadline = Date.now() + waitMs;
    for (;;) {
      const left = await em.fork().count(Environment, { workspace: workspaceId });
      if (left === 0) return;
      if (Date.now() > deadline)
        throw new FailedPreconditionError(`${left} environment(s) of the workspace are still being deleted; try again later`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  /**
   * Adds a port. On an environment that holds its resources it gets a host port at once, and the
   * workload learns of it: in place where the runtime can (an agent running host processes), else by
   * running a new generation (a restart). On a STOPPED or FAILED one only the spec changes; the host
   * port comes with the next start. `PORT` never changes (see Environment.primaryPort).
   */
  async addPort(
    environmentId: string,
    spec: PortSpec,
    hostPort: number | undefined,
    visibility: Visibility,
    note: AuditNote,
  ): Promise<PortMapping> {
    checkId("environment_id", environmentId);
    const v = new Violations();
    checkPorts(v, "port", [spec]);
    if (hostPort !== undefined)
      v.check(
        hostPort >= this.portRange.first && hostPort <= this.portRange.last,
        "host_port",
        `must be in ${this.portRange.first}-${this.portRange.last}`,
      );
    v.throwIfAny();
    let mapping: PortMapping | undefined;
    await this.change(environmentId, visibility, note, async (em, env) => {
      const holds = checkPortsChangeable(env);
      if (!holds && hostPort !== undefined)
        throw new FailedPreconditionError(
          `environment "${env.name}" is ${env.status}: host_port can be chosen only while it holds its ports`,
        );
      const clash = env.ports.find((p) => p.name === spec.name || p.containerPort === spec.containerPort);
      if (clash) throw new AlreadyExistsError("port", `"${clash.name}" (container port ${clash.containerPort}) on this environment`);
      env.ports = [...env.ports, spec];
      if (env.primaryPort === 0) env.primaryPort = spec.containerPort;
      if (!holds) {
        mapping = unmapped(env, spec);
        return;
      }
      const [port] = await allocateHostPorts(em, env.host!.id, this.portRange, 1, [hostPort]);
      mapping = await this.mapPort(em, env, spec, port!);
      this.portsChanged(env, `port ${spec.name} added`);
    });
    return mapping!;
  }

  /** Removes a port, by the id of its mapping (as listed, also while stopped); like addPort, `PORT` stays. */
  async removePort(environmentId: string, mappingId: string, visibility: Visibility, note: AuditNote): Promise<void> {
    checkId("environment_id", environmentId);
    const id = checkId("port_mapping_id", mappingId);
    await this.change(environmentId, visibility, note, async (em, env) => {
      const holds = checkPortsChangeable(env);
      // Mappings made before ids were derived from the name have ids of their own.
      const row = await em.findOne(PortMapping, { id, environment: env });
      const name = row?.name ?? env.ports.find((p) => portMappingId(env.id, p.name) === id)?.name;
      if (name === undefined) throw new NotFoundError("port mapping", mappingId);
      env.ports = env.ports.filter((p) => p.name !== name);
      await em.nativeDelete(PortMapping, { environment: env, name });
      if (holds) this.portsChanged(env, `port ${name} removed`);
    });
  }

  /** Adds an SSH public key; it counts from the environment's next SSH connection. */
  async addSshKey(id: string, key: string, visibility: Visibility, note: AuditNote): Promise<EnvironmentView> {
    const v = new Violations();
    checkString(v, "ssh_public_key", key, { required: true, max: 16384, pattern: SSH_KEY, patternHint: "an OpenSSH public key line" });
    v.throwIfAny();
    return this.change(id, visibility, note, async (_em, env) => {
      if (env.sshPublicKeys.some((k) => sameSshKey(k, key))) return;
      if (env.sshPublicKeys.length >= MAX_SSH_KEYS)
        throw InvalidArgumentError.field("ssh_public_key", `the environment has ${MAX_SSH_KEYS} keys, the most it may`);
      env.sshPublicKeys = [...env.sshPublicKeys, key.trim()];
    });
  }

  /** Removes an SSH public key (the comment is not compared); connections with it are refused from now on. */
  async removeSshKey(id: string, key: string, visibility: Visibility, note: AuditNote): Promise<EnvironmentView> {
    const v = new Violations();
    checkString(v, "ssh_public_key", key, { required: true, max: 16384, pattern: SSH_KEY, patternHint: "an OpenSSH public key line" });
    v.throwIfAny();
    return this.change(id, visibility, note, async (_em, env) => {
      const kept = env.sshPublicKeys.filter((k) => !sameSshKey(k, key));
      if (kept.length === env.sshPublicKeys.length)
        throw new NotFoundError("ssh public key", key.trim().split(/\s+/).slice(0, 2).join(" ").slice(0, 60));
      env.sshPublicKeys = kept;
    });
  }

  async listPorts(environmentId: string, visibility: Visibility): Promise<PortMapping[]> {
    checkId("environment_id", environmentId);
    return (await this.get(environmentId, visibility)).portMappings;
  }

  /** Tells watchers of every replica about a committed change (made here, or by the reconciler). */
  publish(type: EnvironmentChange["type"], view: EnvironmentView): void {
    this.changes.publish(type, view);
  }

  /** `held`: what `env` holds, when the caller has just read it in the same transaction. */
  async view(em: EntityManager, env: Environment, held?: Holdings): Promise<EnvironmentView> {
    return (await this.views(em, [env], held))[0]!;
  }

  private async views(em: EntityManager, envs: Environment[], held?: Holdings): Promise<EnvironmentView[]> {
    if (envs.length === 0) return [];
    const ids = envs.map((e) => e.id);
    const [gpus, ports]: [Pick<Gpu, "id" | "environment">[], PortMapping[]] = held
      ? [held.gpus, held.ports]
      : await Promise.all([
          em.find(Gpu, { environment: { $in: ids } }, { fields: ["id", "environment", "index"], orderBy: { index: "asc" } }),
          // With their host: a mapping says where it is reached (the host's address).
          em.find(PortMapping, { environment: { $in: ids } }, { orderBy: { name: "asc" }, populate: ["host"] }),
        ]);
    const countOnly = await this.countOnlyHosts(em, envs);
    return envs.map((environment) => {
      const mapped = ports.filter((p) => p.environment.id === environment.id);
      // Ports without a host port (the environment is stopped) are listed too, with host port 0.
      const names = new Set(mapped.map((p) => p.name));
      const unmappedPorts = environment.ports.filter((p) => !names.has(p.name)).map((p) => unmapped(environment, p));
      return {
        environment,
        gpuIds: countOnly.has(environment.host?.id ?? "") ? [] : gpus.filter((g) => g.environment?.id === environment.id).map((g) => g.id),
        portMappings: [...mapped, ...unmappedPorts].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
      };
    });
  }

  /**
   * Hosts whose GPUs an environment holds by count only: Kubernetes hosts in device-plugin mode, where
   * the device plugin, not RemoteGPU, picks the devices a pod gets. Their GPU rows are a reservation
   * against the node's capacity, so the environment lists no GPU ids rather than ones it may not have.
   */
  private async countOnlyHosts(em: EntityManager, envs: Environment[]): Promise<Set<string>> {
    if (this.kubernetes?.gpuMode !== "device-plugin") return new Set();
    const hostIds = [...new Set(envs.flatMap((e) => (e.host ? [e.host.id] : [])))];
    if (hostIds.length === 0) return new Set();
    const hosts = await em.find(Host, { id: { $in: hostIds }, runtime: "KUBERNETES" }, { fields: ["id"] });
    return new Set(hosts.map((h) => h.id));
  }

  /**
   * Tells the workload of a port change: the runtime applies the same generation's new port list in
   * place where it can (RUNNING stays RUNNING; the reconciler sends the run again until the runtime
   * confirms it), else a new generation replaces the workload (a restart).
   */
  private portsChanged(env: Environment, what: string): void {
    if (env.status === "PENDING") return; // its first run is yet to be sent, with the new ports
    resetWorkload(env);
    if (changesPortsInPlace(env.host!)) return;
    env.generation++;
    transition(env, "STARTING", `restarting the workload for the port change (${what})`, this.clock.now());
  }

  /** Marks the placed GPUs as the environment's and maps its ports; returns the mappings. */
  private async hold(em: EntityManager, env: Environment, hostId: string, gpuIds: string[]): Promise<PortMapping[]> {
    const now = this.clock.now();
    await em.flush(); // the environment row first: the GPU rows below point at it
    if (gpuIds.length > 0) {
      await em.nativeUpdate(
        Gpu,
        { id: { $in: gpuIds } },
        { status: "ALLOCATED", holder: `environment:${env.id}`, environment: env.id, allocatedAt: now, updatedAt: now },
      );
    }
    if (env.ports.length === 0) return [];
    const ports = await allocateHostPorts(em, hostId, this.portRange, env.ports.length);
    const mappings: PortMapping[] = [];
    for (const [i, spec] of env.ports.entries()) mappings.push(await this.mapPort(em, env, spec, ports[i]!));
    return mappings;
  }

  private async mapPort(em: EntityManager, env: Environment, spec: PortSpec, hostPort: number): Promise<PortMapping> {
    const host = await em.findOneOrFail(Host, env.host!.id);
    const url =
      spec.protocol === "HTTP"
        ? ((await this.routeOf(em, env, host, spec)) ?? `http://${host.address.replace(/:\d+$/, "")}:${hostPort}/`)
        : "";
    return em.create(PortMapping, {
      ...spec,
      id: portMappingId(env.id, spec.name),
      environment: env,
      host,
      hostPort,
      url,
      createdAt: this.clock.now(),
    });
  }

  /** The ingress URL of an HTTP port on a Kubernetes host, as the runtime names it; undefined without ingresses. */
  private async routeOf(em: EntityManager, env: Environment, host: Host, spec: PortSpec): Promise<string | undefined> {
    if (host.runtime !== "KUBERNETES" || !this.kubernetes?.ingressBaseDomain) return undefined;
    const workspace = await em.findOneOrFail(Workspace, env.workspace.id);
    return ingressUrl(spec.name, { environmentId: env.id, name: env.name, workspaceName: workspace.name }, this.kubernetes);
  }

  private async change(
    id: string,
    visibility: Visibility,
    note: AuditNote,
    mutate: (em: EntityManager, env: Environment) => Promise<void>,
  ): Promise<EnvironmentView> {
    const view = await this.orm.em.fork().transactional(async (em) => {
      const env = await this.find(em, id, visibility, LockMode.PESSIMISTIC_WRITE);
      await mutate(em, env);
      env.updatedAt = this.clock.now();
      note(em, { workspaceId: env.workspace.id, targetId: env.id });
      return this.view(em, env);
    });
    this.publish("MODIFIED", view);
    this.kick(id);
    return view;
  }

  private async find(em: EntityManager, id: string, visibility: Visibility, lockMode?: LockMode): Promise<Environment> {
    const env = await em.findOne(Environment, checkId("id", id), { populate: ["host"], ...(lockMode ? { lockMode } : {}) });
    // Another workspace's environment does not exist for this caller.
    if (!env || (visibility !== undefined && env.workspace.id !== visibility)) throw new NotFoundError("environment", id);
    return env;
  }

  private async byRequestId(workspaceId: string, requestId: string): Promise<EnvironmentView | undefined> {
    const em = this.orm.em.fork();
    const env = await em.findOne(Environment, { workspace: workspaceId, requestId });
    return env ? this.view(em, env) : undefined;
  }
}

/**
 * What makes two CreateEnvironment requests "the same" for a request id: every field the caller
 * sent but the id itself, after defaults (an unset storage size equals the default), with map keys
 * in a fixed order (env var order means nothing) and list order kept (the first port is the primary).
 */
export function requestHash(input: EnvironmentInput): string {
  // An empty mig_profile is left out, so requests of before it existed hash as they did.
  const { requestId: _, migProfile, ...rest } = input;
  const request = migProfile ? { ...rest, migProfile } : rest;
  return createHash("sha256")
    .update(JSON.stringify(canonical(request)))
    .digest("hex");
}

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value === null || typeof value !== "object") return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(
    Object.keys(record)
      .sort()
      .map((k) => [k, canonical(record[k])]),
  );
}

/** The environment a request id made, if `hash` says this is the request that made it. */
function sameRequest(earlier: EnvironmentView, requestId: string, hash: string): EnvironmentView {
  const kept = earlier.environment.requestHash;
  // Rows from before hashes were kept answer any request, as they did.
  if (kept !== null && kept !== hash) throw new RequestIdReusedError(requestId, "environment", earlier.environment.id);
  return earlier;
}

/** Records a status change with its time; the newest transitions are kept. */
export function transition(env: Environment, status: EnvironmentStatus, message: string, now: Date): void {
  env.status = status;
  env.statusMessage = message;
  env.updatedAt = now;
  env.transitions = [...env.transitions, { status, time: now.toISOString(), message }].slice(-MAX_TRANSITIONS);
}

/** Forgets what the runtime said before this decision, so only reports that follow it count. */
function resetWorkload(env: Environment): void {
  env.workloadState = "";
  env.workloadMessage = "";
  env.actedAt = null;
  env.attempts = 0;
}

/**
 * Whether an environment's ports may change now, and if so whether it holds host ports (PENDING to
 * RUNNING) or only its spec changes (STOPPED, FAILED). Not while it is stopping or being deleted.
 */
function checkPortsChangeable(env: Environment): boolean {
  if (["PENDING", "CREATING", "STARTING", "RUNNING"].includes(env.status) && env.host) return true;
  if (env.status === "STOPPED" || env.status === "FAILED") return false;
  throw new FailedPreconditionError(
    `environment "${env.name}" is ${env.status}; ports can be changed while it runs or starts, or while it is stopped`,
  );
}

/** A port of an environment that holds no host port for it (stopped): listed with host port 0 and no URL. */
function unmapped(env: Environment, spec: PortSpec): PortMapping {
  return Object.assign(new PortMapping(), {
    ...spec,
    id: portMappingId(env.id, spec.name),
    environment: env,
    hostPort: 0,
    url: "",
    createdAt: env.updatedAt,
  });
}

function countModels(gpus: { model: string }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const g of gpus) out[g.model] = (out[g.model] ?? 0) + 1;
  return out;
}

function checkPorts(v: Violations, field: string, ports: PortSpec[]): void {
  v.check(ports.length <= 32, field, "at most 32 ports");
  const names = new Set<string>();
  const numbers = new Set<number>();
  ports.forEach((p, i) => {
    const f = ports.length === 1 && field === "port" ? field : `${field}[${i}]`;
    checkString(v, `${f}.name`, p.name, {
      required: true,
      max: 15,
      pattern: PORT_NAME,
      patternHint: "lowercase letters, digits and '-', starting with a letter",
    });
    v.check(
      Number.isInteger(p.containerPort) && p.containerPort >= 1 && p.containerPort <= 65535,
      `${f}.container_port`,
      "must be 1 to 65535",
    );
    v.check(!names.has(p.name), `${f}.name`, "appears twice");
    v.check(!numbers.has(p.containerPort), `${f}.container_port`, "appears twice");
    names.add(p.name);
    numbers.add(p.containerPort);
  });
}

function checkInput(input: EnvironmentInput): void {
  checkId("workspace_id", input.workspaceId);
  const v = new Violations();
  checkString(v, "name", input.name, {
    required: true,
    max: 63,
    pattern: NAME,
    patternHint: "lowercase letters, digits and '-', starting with a letter",
  });
  checkString(v, "image", input.image, { required: true, max: 512, pattern: /^\S+$/, patternHint: "an image reference without spaces" });
  for (const [field, list] of [
    ["command", input.command],
    ["args", input.args],
  ] as const) {
    v.check(list.length <= 256, field, "at most 256 entries");
    for (const [i, s] of list.entries()) checkString(v, `${field}[${i}]`, s.replace(/[\t\n]/g, " "), { max: 8192 });
  }
  const vars = Object.entries(input.env);
  v.check(vars.length <= 256, "env", "at most 256 variables");
  checkNoDeviceVariables(v, "env", input.env);
  for (const [key, value] of vars) {
    v.check(
      ENV_KEY.test(key) && key.length <= 256,
      `env.${key.slice(0, 64)}`,
      "names are letters, digits and '_', not starting with a digit",
    );
    checkString(v, `env.${key.slice(0, 64)}`, value.replace(/[\t\n]/g, " "), { max: 32768 });
  }
  v.check(Number.isInteger(input.gpuCount) && input.gpuCount >= 0 && input.gpuCount <= 64, "gpu_count", "must be 0 to 64");
  checkString(v, "gpu_model", input.gpuModel, { max: 128 });
  if (input.gpuCount === 0) v.check(input.gpuModel === "", "gpu_model", "only with gpu_count above 0");
  checkString(v, "mig_profile", input.migProfile, { max: 24, pattern: MIG_PROFILE, patternHint: 'a MIG profile such as "1g.10gb"' });
  if (input.migProfile) {
    v.check(input.gpuCount > 0, "mig_profile", "only with gpu_count above 0: the number of slices");
    // Slices of one profile, or whole GPUs: a slice model of another profile asks for both.
    const asked = parseSliceModel(input.gpuModel)?.profile;
    v.check(
      asked === undefined || asked === input.migProfile,
      "gpu_model",
      `names MIG slices of profile "${asked}", not "${input.migProfile}": an environment holds slices of one profile or whole GPUs`,
    );
  }
  for (const field of ["cpuMillicores", "memoryBytes", "storageBytes"] as const)
    v.check(input[field] >= 0, snake(field), "must be 0 or more");
  checkPorts(v, "ports", input.ports);
  v.check(input.sshPublicKeys.length <= MAX_SSH_KEYS, "ssh_public_keys", `at most ${MAX_SSH_KEYS} keys`);
  for (const [i, k] of input.sshPublicKeys.entries()) {
    checkString(v, `ssh_public_keys[${i}]`, k, { max: 16384, pattern: SSH_KEY, patternHint: "an OpenSSH public key line" });
  }
  v.check(
    Number.isInteger(input.idleTimeoutMinutes) && input.idleTimeoutMinutes >= 0 && input.idleTimeoutMinutes <= 7 * 24 * 60,
    "idle_timeout_minutes",
    "must be 0 (never) to 10080",
  );
  if (input.requestId) v.check(REQUEST_ID.test(input.requestId), "request_id", "1 to 128 letters, digits, '.', '_', ':' or '-'");
  v.throwIfAny();
}

function snake(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
