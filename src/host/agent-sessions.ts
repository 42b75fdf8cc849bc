import { randomUUID } from "node:crypto";
import type { MikroORM } from "@mikro-orm/postgresql";
import { ConflictError, NotFoundError, UnavailableError } from "../errors.js";
import { checkId } from "../ids.js";
import type { Clock } from "../platform/clock.js";
import { anyInteger, anyString, integer, list, oneOf, record, text, uuid } from "../platform/cluster-events.js";
import type { ClusterEvents, Decoders } from "../platform/cluster-events.js";
import type { HeartbeatIngest, VolumeUsageRecord } from "../telemetry/heartbeat-ingest.js";
import type { GpuSampleRecord, HostSampleRecord } from "../telemetry/latest-samples.js";
import { Violations, checkString } from "../validation.js";
import { Channel } from "../platform/channel.js";
import type { PortProtocol } from "../environment/environment.js";
import type { WorkloadSpec } from "../runtime/runtime.js";
import { Batcher } from "../platform/batcher.js";
import { pgArray } from "../platform/bulk-sql.js";
import { applyInventories, type ReportedGpu } from "./inventory-sync.js";
import { MIG_PROFILE } from "../gpu/mig.js";

export interface AgentHello {
  hostId: string;
  agentVersion: string;
  cpuMillicores: number;
  memoryBytes: number;
  diskBytes: number;
  gpus: ReportedGpu[];
  /** It runs workloads as containers (docker or podman), not as host processes. */
  containersSupported: boolean;
  /** Why it cannot run environments now (no container engine, process mode not asked for); "" when it can. */
  runtimeUnavailableReason: string;
}

/** Thrown into a session's stream when a newer session for the same host replaced it (ABORTED). */
export class SessionFencedError extends ConflictError {
  override name = "SessionFencedError";
  constructor(readonly newerSessionId: string) {
    super(`a newer agent session (${newerSessionId}) for this host replaced this one`);
  }
}

/** Work the server sends down an agent stream. */
export type AgentCommand = { id: string } & (
  | { kind: "drain" }
  | { kind: "run"; spec: WorkloadSpec }
  | { kind: "stop"; environmentId: string; generation: number }
  | { kind: "remove"; environmentId: string; generation: number }
  | { kind: "ssh"; tunnelId: string; environmentId: string; authorizedKeys: string[] }
);

/** Distributes Omit over the union, so each command keeps its own fields. */
export type AgentCommandInput = AgentCommand extends infer C ? (C extends AgentCommand ? Omit<C, "id"> : never) : never;

/** What replicas tell each other about agents: commands for a stream another replica holds, and new sessions. */
export type AgentTopics = {
  "agent-command": { hostId: string; command: AgentCommandInput };
  /** `epoch` in decimal digits: JSON has no 64-bit integers. */
  "agent-session": { hostId: string; sessionId: string; epoch: string };
};

/** What agent sessions need of the host registry. */
export interface SessionHosts {
  /** Tells watchers (here and on other replicas) that these hosts changed. */
  announce(hostIds: string[]): void;
  /** `listener` is told of each deleted host, wherever it was deleted. */
  onDeleted(listener: (hostId: string) => void): void;
}

/** One agent connection. Only the newest session of a host is live; older ones are fenced. */
export class AgentSession {
  readonly id = randomUUID();
  private readonly controller = new AbortController();
  /** Commands waiting to be written to this agent's stream. */
  readonly outbox = new Channel<AgentCommand>();
  /** Server-side GPU ids by UUID, from the hello. */
  gpuIds = new Map<string, string>();
  /** When the hello committed, in microseconds of PostgreSQL's clock: orders the sessions of a host across replicas. */
  epoch = 0n;

  constructor(
    readonly hostId: string,
    /** Heartbeat period the server asked for, with per-session jitter. */
    readonly heartbeatIntervalMs: number,
    readonly leaseMs: number,
  ) {}

  /** Aborted once the session must end: a newer session took over (SessionFencedError), or the server is stopping. */
  get ended(): AbortSignal {
    return this.controller.signal;
  }

  end(reason: Error): void {
    this.controller.abort(reason);
  }
}

const JITTER = 0.1;

/** The live agent sessions of this replica, keyed by host. */
export class AgentSessions {
  private readonly live = new Map<string, AgentSession>();
  /** Time of the newest reading accepted per host, across its sessions. */
  private readonly lastReading = new Map<string, number>();
  /** Hellos accepted, and sessions ended because a newer one of their host opened (counters for /metrics). */
  hellos = 0;
  fenced = 0;

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly ingest: HeartbeatIngest,
    private readonly heartbeatIntervalMs: number,
    private readonly leaseMs: number,
    /** Told which hosts changed (status, inventory), after the change committed; tells which were deleted. */
    private readonly hosts: SessionHosts,
    /** Other replicas: commands for the streams they hold, and sessions that fence the ones held here. */
    private readonly events: ClusterEvents<AgentTopics>,
  ) {
    hosts.onDeleted((hostId) => this.forgetHost(hostId));
    events.subscribe("agent-command", ({ hostId, command }) => this.deliver(hostId, command));
    events.subscribe("agent-session", ({ hostId, sessionId, epoch }) => this.openedElsewhere(hostId, sessionId, BigInt(epoch)));
  }

  /**
   * Opens a session from an agent's hello: records the host as ONLINE with its capacity and version,
   * syncs the GPU inventory, and fences any older session of the host.
   */
  async open(input: AgentHello): Promise<AgentSession> {
    checkHello(input);
    // One spelling of the id everywhere (streams held here, fences from other replicas, commands).
    const hello = { ...input, hostId: input.hostId.toLowerCase() };
    // Jitter spreads the heartbeats of hosts that all reconnected at once (after a restart, say).
    const interval = Math.round(this.heartbeatIntervalMs * (1 - JITTER + Math.random() * 2 * JITTER));
    const session = new AgentSession(hello.hostId, interval, this.leaseMs);
    // Raw statements, hellos batched: this runs for every agent of the fleet when the control plane
    // restarts, so it avoids the ORM's per-entity work and a transaction per hello (docs/benchmarks.md).
    try {
      await this.helloBatches.add({ hello, session });
    } catch (err) {
      // The swap below may have happened before the commit failed: do not leave a dead session live.
      if (this.live.get(hello.hostId) === session) this.live.delete(hello.hostId);
      throw err;
    }
    this.hellos++;
    this.hosts.announce([hello.hostId]);
    // Other replicas fence their older sessions of the host.
    this.events.publish("agent-session", { hostId: hello.hostId, sessionId: session.id, epoch: String(session.epoch) });
    return session;
  }

  /**
   * A session of `hostId` opened on another replica: an older one held here is fenced, so that this
   * replica stops sending the host's commands down a connection the agent has left.
   */
  private openedElsewhere(hostId: string, sessionId: string, epoch: bigint): void {
    const local = this.live.get(hostId);
    if (!local || local.epoch >= epoch) return;
    this.fence(local, sessionId);
    this.live.delete(hostId);
  }

  // A fleet reconnecting after a restart or deploy says hello all at once: the hellos waiting
  // together share one transaction, a few statements however many there are.
  private readonly helloBatches = new Batcher<{ hello: AgentHello; session: AgentSession }, undefined>(async (batch) => {
    const results: (undefined | Error)[] = [];
    // Two hellos of one host in a batch go in separate rounds, one after the other, oldest first.
    let rest = batch.map((b, i) => ({ ...b, i }));
    while (rest.length > 0) {
      const hosts = new Set<string>();
      const round: typeof rest = [];
      const later: typeof rest = [];
      for (const b of rest) {
        (hosts.has(b.hello.hostId) ? later : round).push(b);
        hosts.add(b.hello.hostId);
      }
      try {
        const missing = await this.transactHellos(round);
        for (const b of round) results[b.i] = missing.has(b.hello.hostId) ? new NotFoundError("host", b.hello.hostId) : undefined;
      } catch (err) {
        for (const b of round) results[b.i] = err instanceof Error ? err : new Error(String(err));
      }
      rest = later;
    }
    return results;
  });

  /** Records hellos of distinct hosts in one transaction; returns the hosts that do not exist. */
  private async transactHellos(round: { hello: AgentHello; session: AgentSession }[]): Promise<Set<string>> {
    return this.orm.em
      .getConnection()
      .getKnex()
      .transaction(async (trx) => {
        const now = this.clock.now();
        // The hosts' row locks, taken in one order so that concurrent batches cannot deadlock; they
        // also make concurrent hellos for one host run one at a time.
        const ids = round.map((b) => b.hello.hostId);
        await trx.raw("select id from hosts where id = any(?::uuid[]) order by id for no key update", [pgArray(ids)]);
        const updated = await trx.raw(
          `update hosts h set agent_version = v.version, containers_supported = v.containers, runtime_unavailable_reason = v.reason,
             agent_connected_at = ?,
             cpu_millicores = case when v.cpu > 0 then v.cpu else h.cpu_millicores end,
             memory_bytes = case when v.memory > 0 then v.memory else h.memory_bytes end,
             disk_bytes = case when v.disk > 0 then v.disk else h.disk_bytes end,
             last_heartbeat_at = ?, updated_at = ?,
             status_message = case when h.status = 'OFFLINE' and h.node_state is null then '' else h.status_message end,
             status = case when h.status = 'OFFLINE' and h.node_state is null then 'ONLINE' else h.status end
           from jsonb_to_recordset(?::jsonb) as v(id uuid, version text, containers boolean, reason text, cpu bigint, memory bigint, disk bigint)
           where h.id = v.id
           returning h.id, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text as epoch`,
          [
            now,
            now,
            now,
            JSON.stringify(
              round.map(({ hello }) => ({
                id: hello.hostId,
                version: hello.agentVersion,
                containers: hello.containersSupported,
                reason: hello.runtimeUnavailableReason,
                cpu: hello.cpuMillicores,
                memory: hello.memoryBytes,
                disk: hello.diskBytes,
              })),
            ),
          ],
        );
        const epochs = new Map((updated.rows as { id: string; epoch: string }[]).map((r) => [r.id, BigInt(r.epoch)]));
        const found = round.filter((b) => epochs.has(b.hello.hostId));
        const plans = await applyInventories(
          trx,
          found.map(({ hello }) => ({ hostId: hello.hostId, gpus: hello.gpus })),
          now,
        );
        for (const { hello, session } of found) {
          session.epoch = epochs.get(hello.hostId)!;
          session.gpuIds = plans.get(hello.hostId)!.ids;
          // Swapped while the host row is locked, so concurrent hellos fence in the order they committed.
          const older = this.live.get(hello.hostId);
          if (older) this.fence(older, session.id);
          this.live.set(hello.hostId, session);
        }
        return new Set(round.filter((b) => !epochs.has(b.hello.hostId)).map((b) => b.hello.hostId));
      });
  }

  /** Ends a session a newer one of its host (`newerSessionId`) replaces. */
  private fence(session: AgentSession, newerSessionId: string): void {
    session.end(new SessionFencedError(newerSessionId));
    this.fenced++;
  }

  /**
   * Records a heartbeat of a live session. Dropped: everything from a fenced session, samples of
   * GPUs the hello did not list, and readings the agent timed no later than the host's last one (an
   * agent resends readings whose ack it never got, so one may arrive twice).
   */
  heartbeat(
    session: AgentSession,
    agentTime: Date | undefined,
    host: HostSampleRecord | undefined,
    gpus: GpuSampleRecord[],
    volumes: VolumeUsageRecord[] = [],
  ): boolean {
    if (session.ended.aborted) return false;
    if (agentTime) {
      if (agentTime.getTime() <= (this.lastReading.get(session.hostId) ?? 0)) return false;
      this.lastReading.set(session.hostId, agentTime.getTime());
    }
    const known = gpus.filter((g) => session.gpuIds.has(g.gpuUuid));
    for (const g of known) g.gpuId = session.gpuIds.get(g.gpuUuid);
    this.ingest.record(session.hostId, host, known);
    if (volumes.length > 0) this.ingest.recordVolumes(session.hostId, volumes);
    return true;
  }

  /**
   * Records the samples of a unary Heartbeat (a host without a stream) like a stream's: the GPUs are
   * the host's known ones, looked up here since there is no hello.
   */
  async report(hostId: string, host: HostSampleRecord | undefined, gpus: GpuSampleRecord[]): Promise<void> {
    const rows: { id: string; uuid: string }[] = (
      await this.orm.em.getConnection().getKnex().raw("select id, uuid from gpus where host_id = ?", [hostId])
    ).rows;
    const ids = new Map(rows.map((r) => [r.uuid, r.id]));
    const known = gpus.filter((g) => ids.has(g.gpuUuid));
    for (const g of known) g.gpuId = ids.get(g.gpuUuid);
    this.ingest.record(hostId, host, known);
  }

  /**
   * Ends the host's stream held here with UNAVAILABLE: its agent reconnects at once, authenticating
   * again (after its token was revoked, with the new one or not at all).
   */
  reconnect(hostId: string, why: string): void {
    this.live.get(hostId)?.end(new UnavailableError(why));
  }

  /** Ends the stream of a deleted host (NOT_FOUND) and forgets what was kept for it. */
  forgetHost(hostId: string): void {
    this.live.get(hostId)?.end(new NotFoundError("host", hostId));
    this.lastReading.delete(hostId);
    this.ingest.forgetHost(hostId);
  }

  /**
   * Sends a command to the host's agent: down its stream when this replica holds it, else to the
   * other replicas, when there are any. Returns whether it went anywhere; the caller learns the
   * outcome from the agent's reports, and repeats a command that had none.
   */
  send(hostId: string, command: AgentCommandInput): boolean {
    if (this.deliver(hostId, command)) return true;
    if (!this.events.clustered) return false;
    this.events.publish("agent-command", { hostId, command });
    return true;
  }

  /** Delivers a command down the host's stream, if this replica holds it. */
  private deliver(hostId: string, command: AgentCommandInput): boolean {
    const session = this.live.get(hostId);
    if (!session) return false;
    session.outbox.push({ id: randomUUID(), ...command });
    return true;
  }

  /** Ends every stream with UNAVAILABLE, so agents reconnect (to another replica) at once. */
  shutdown(): void {
    for (const session of this.live.values()) session.end(new UnavailableError("the server is shutting down; reconnect"));
  }

  close(session: AgentSession): void {
    session.outbox.close();
    if (this.live.get(session.hostId) === session) this.live.delete(session.hostId);
  }

  get connected(): number {
    return this.live.size;
  }

  /** Whether this replica holds the host's agent stream. */
  holds(hostId: string): boolean {
    return this.live.has(hostId);
  }

  /** Ids of the hosts whose agent streams are open here. */
  heldHosts(): Iterable<string> {
    return this.live.keys();
  }
}

/** Most GPUs a hello may list, MIG slices included (8 GPUs in MIG mode with 7 slices each: 64). */
const MAX_HELLO_GPUS = 256;

/** Longest runtime_unavailable_reason kept from a hello. */
export const MAX_RUNTIME_REASON = 1024;

function checkHello(hello: AgentHello): void {
  checkId("hello.host_id", hello.hostId);
  const v = new Violations();
  checkString(v, "hello.agent_version", hello.agentVersion, { max: 64 });
  checkString(v, "hello.runtime_unavailable_reason", hello.runtimeUnavailableReason, { max: MAX_RUNTIME_REASON });
  v.check(hello.gpus.length <= MAX_HELLO_GPUS, "hello.gpus", `at most ${MAX_HELLO_GPUS} GPUs and MIG slices per host`);
  const uuids = new Set<string>();
  const indexes = new Set<number>();
  const parents = new Map(hello.gpus.filter((g) => g.migEnabled && !g.mig).map((g) => [g.uuid, g.index]));
  hello.gpus.forEach((g, i) => {
    const field = `hello.gpus[${i}]`;
    checkString(v, `${field}.uuid`, g.uuid, {
      required: true,
      max: 128,
      pattern: /^[\x21-\x7e]+$/,
      patternHint: "printable characters without spaces",
    });
    // A slice's row names the model with its profile, in the same 128 characters.
    checkString(v, `${field}.model`, g.model, { required: true, max: g.mig ? 96 : 128 });
    checkString(v, `${field}.driver_version`, g.driverVersion, { max: 64 });
    checkString(v, `${field}.cuda_version`, g.cudaVersion, { max: 32 });
    if (g.mig) {
      // A slice: of a GPU in MIG mode listed in the same hello, its index derived from the parent's.
      const parentIndex = parents.get(g.mig.parentUuid);
      v.check(parentIndex !== undefined, `${field}.parent_uuid`, "must be a GPU of this hello with MIG mode enabled");
      checkString(v, `${field}.mig_profile`, g.mig.profile, {
        required: true,
        max: 24,
        pattern: MIG_PROFILE,
        patternHint: 'a MIG profile such as "1g.10gb"',
      });
      const { deviceIndex } = g.mig;
      v.check(Number.isInteger(deviceIndex) && deviceIndex >= 0 && deviceIndex < 100, `${field}.mig_device_index`, "must be 0 to 99");
      if (parentIndex !== undefined)
        v.check(
          g.index === 1000 * (parentIndex + 1) + deviceIndex,
          `${field}.index`,
          "must be 1000 x (the parent's index + 1) + mig_device_index",
        );
      v.check(!g.migEnabled, `${field}.mig_enabled`, "a MIG slice cannot be in MIG mode");
    } else v.check(Number.isInteger(g.index) && g.index >= 0 && g.index < 1000, `${field}.index`, "must be 0 to 999");
    v.check(g.memoryBytes >= 0, `${field}.memory_bytes`, "must be 0 or more");
    v.check(!uuids.has(g.uuid), `${field}.uuid`, "appears twice");
    v.check(!indexes.has(g.index), `${field}.index`, "appears twice");
    uuids.add(g.uuid);
    indexes.add(g.index);
  });
  v.throwIfAny();
}

const PORT_PROTOCOLS: readonly PortProtocol[] = ["TCP", "HTTP"];

function workloadSpec(raw: unknown): WorkloadSpec {
  const o = record(raw, "spec");
  const env = record(o.env, "spec.env");
  return {
    environmentId: uuid(o, "environmentId"),
    name: text(o, "name"),
    workspaceId: text(o, "workspaceId"),
    workspaceName: text(o, "workspaceName"),
    hostId: text(o, "hostId"),
    nodeName: text(o, "nodeName"),
    image: text(o, "image"),
    command: list(o, "command", anyString),
    args: list(o, "args", anyString),
    env: Object.fromEntries(Object.keys(env).map((k) => [k, text(env, k)])),
    gpuUuids: list(o, "gpuUuids", anyString),
    gpuIndices: list(o, "gpuIndices", anyInteger),
    ports: list(o, "ports", (p) => {
      const port = record(p, "spec.ports[]");
      return {
        name: text(port, "name"),
        containerPort: integer(port, "containerPort"),
        hostPort: integer(port, "hostPort"),
        protocol: oneOf(port, "protocol", PORT_PROTOCOLS),
      };
    }),
    cpuMillicores: integer(o, "cpuMillicores"),
    memoryBytes: integer(o, "memoryBytes"),
    storageBytes: integer(o, "storageBytes"),
    sshPublicKeys: list(o, "sshPublicKeys", anyString),
    generation: integer(o, "generation"),
  };
}

function agentCommand(raw: unknown): AgentCommandInput {
  const o = record(raw, "command");
  const kind = oneOf(o, "kind", ["drain", "run", "stop", "remove", "ssh"] as const);
  switch (kind) {
    case "drain":
      return { kind };
    case "ssh":
      return {
        kind,
        tunnelId: uuid(o, "tunnelId"),
        environmentId: uuid(o, "environmentId"),
        authorizedKeys: list(o, "authorizedKeys", anyString),
      };
    case "run":
      return { kind, spec: workloadSpec(o.spec) };
    default:
      return { kind, environmentId: uuid(o, "environmentId"), generation: integer(o, "generation") };
  }
}

export const agentTopics: Decoders<AgentTopics> = {
  "agent-command": (raw) => {
    const o = record(raw);
    return { hostId: uuid(o, "hostId"), command: agentCommand(o.command) };
  },
  "agent-session": (raw) => {
    const o = record(raw);
    return { hostId: uuid(o, "hostId"), sessionId: text(o, "sessionId"), epoch: text(o, "epoch", /^\d{1,20}$/) };
  },
};
