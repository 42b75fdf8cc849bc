import { LockMode } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import type { Host, HostRuntime } from "../host/host.js";
import { isId } from "../ids.js";
import { Batcher } from "../platform/batcher.js";
import { bulkSql, pgArray } from "../platform/bulk-sql.js";
import type { Clock } from "../platform/clock.js";
import { traced } from "../platform/tracing.js";
import type { Logger } from "../platform/logger.js";
import type { Runtime, WorkloadSpec, WorkloadState } from "../runtime/runtime.js";
import { Environment, PortMapping, type EnvironmentStatus } from "./environment.js";
import { HOLDING, holdings, transition, type EnvironmentManager, type Holdings } from "./environment-manager.js";

export interface ReconcilerOptions {
  /** How long CREATING/STARTING may last before the environment is FAILED. */
  startTimeoutMs: number;
  /** How long a host may be OFFLINE before its environments are FAILED and their GPUs released. */
  lostHostTimeoutMs: number;
  /**
   * A host whose last heartbeat is older than this counts as unreachable for stops and deletions even
   * if its status is not OFFLINE (a dead host an operator drained or put in maintenance). @default none
   */
  hostGraceMs?: number;
  /** First retry delay of a runtime call; doubles per attempt. @default 2000 */
  retryBaseMs?: number;
  /** @default 60000 */
  retryMaxMs?: number;
  /** Told each time an environment turns FAILED, after the commit (a counter for /metrics). */
  onFailed?: () => void;
  /** Runs before a deleted environment's row goes (archiving its logs); a failure keeps it for the next pass. */
  beforeForget?: (environmentId: string, workspaceId: string) => Promise<void>;
}

export interface WorkloadReport {
  environmentId: string;
  generation: number;
  state: WorkloadState;
  message: string;
}

/** What one step decided for one environment. */
interface Decision {
  status?: [Environment["status"], string];
  /** Only the status message changes (no transition): e.g. "host offline since ...". */
  note?: string;
  /** Give GPUs and ports back. */
  release?: boolean;
  /** The environment is gone: delete its row (after release). */
  forget?: boolean;
  /** Ask the runtime; `cleanup` calls are best effort and not retried. */
  act?: "run" | "stop" | "remove";
  cleanup?: boolean;
}

const OFFLINE_NOTE = "host offline since";

/** What decide() reads of an environment: its row's fields and when its current status began. */
type EnvironmentFacts = Pick<
  Environment,
  "status" | "generation" | "workloadGeneration" | "workloadState" | "workloadMessage" | "statusMessage" | "actedAt" | "attempts"
> & { since: Date };

/** What decide() reads of a host. */
type HostFacts = Pick<Host, "name" | "status" | "runtime" | "lastHeartbeatAt" | "updatedAt">;

/** An environment a pass looks at: what decide() needs, read without the ORM. */
interface Unsettled {
  id: string;
  workspaceId: string;
  env: EnvironmentFacts;
  host: HostFacts | null;
}

/** Its row: times as milliseconds since the epoch; the host's columns null without a host. */
interface UnsettledRow {
  id: string;
  workspace_id: string;
  status: EnvironmentStatus;
  generation: number;
  workload_generation: number;
  workload_state: WorkloadState | "";
  workload_message: string;
  status_message: string;
  acted_at: number | null;
  attempts: number;
  since: number;
  host_id: string | null;
  host_name: string | null;
  host_status: Host["status"] | null;
  host_runtime: HostRuntime | null;
  host_last_heartbeat_at: number | null;
  host_updated_at: number | null;
}

/** An entity's facts for decide(). */
function factsOf(env: Environment): EnvironmentFacts {
  const { status, generation, workloadGeneration, workloadState, workloadMessage, statusMessage, actedAt, attempts } = env;
  const since = new Date(env.transitions.at(-1)?.time ?? env.updatedAt);
  return { status, generation, workloadGeneration, workloadState, workloadMessage, statusMessage, actedAt, attempts, since };
}

/** MikroORM's alias for the root table of an Environment query: a row lock naming it covers that row alone. */
const ENVIRONMENT_ALIAS = "e0";

/**
 * Drives every environment from its observed status toward its desired state, level-triggered: each
 * pass looks at what is, not at what happened, so a pass after a crash converges like any other.
 * Runtime calls happen after the decision committed, never inside a transaction; a call whose
 * outcome does not arrive is repeated with backoff. Failures release GPUs and ports and record
 * FAILED with the reason. Only the replica holding the leader lock runs passes.
 */
export class EnvironmentReconciler {
  private running?: Promise<void>;
  /** A pass over every environment is owed. */
  private full = false;
  /** Environments a change or report concerned, owed a look of their own. */
  private readonly touched = new Set<string>();
  /** When the last pass over every environment finished (on the leader), for the lag metric. */
  lastPassAt?: Date;
  private readonly retryBaseMs: number;
  private readonly retryMaxMs: number;

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly runtimes: Partial<Record<HostRuntime, Runtime>>,
    private readonly environments: EnvironmentManager,
    private readonly logger: Logger,
    private readonly options: ReconcilerOptions,
    /** Whether this replica may reconcile now (the leader lock). */
    private readonly isLeader: () => Promise<boolean> = async () => true,
  ) {
    this.retryBaseMs = options.retryBaseMs ?? 2000;
    this.retryMaxMs = options.retryMaxMs ?? 60_000;
  }

  /** Whether each host has environments that hold it (HOLDING), for many hosts in one statement. */
  private readonly holdingHosts = new Batcher<string, boolean>(async (hostIds) => {
    const rows = await bulkSql<{ host_id: string }>(
      this.orm,
      "select distinct host_id from environments where host_id = any(?::uuid[]) and status = any(?::text[])",
      [pgArray(hostIds), pgArray(HOLDING)],
    );
    const holding = new Set(rows.map((r) => r.host_id));
    return hostIds.map((id) => holding.has(id));
  });

  /**
   * Runs a pass soon: over one environment that changed, or over every one. Passes never overlap,
   * and a kick during one runs another after it, taking in all that were asked for meanwhile.
   */
  kick(environmentId?: string): void {
    if (environmentId) this.touched.add(environmentId);
    else this.full = true;
    if (this.running) return;
    this.running = (async () => {
      while (this.full || this.touched.size > 0) {
        const only = this.full ? undefined : [...this.touched];
        this.full = false;
        this.touched.clear();
        await this.reconcile(only).catch((err: unknown) => this.logger.error({ err }, "reconcile pass failed"));
      }
    })().finally(() => (this.running = undefined));
  }

  /** Waits for the pass in progress, if any. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** One pass over every environment that holds or is acquiring resources, or over `only` these. */
  async reconcile(only?: string[]): Promise<void> {
    if (!(await this.isLeader())) return;
    await traced("reconciler.pass", {}, () => this.pass(only));
    if (!only) this.lastPassAt = this.clock.now();
  }

  private async pass(only?: string[]): Promise<void> {
    const em = this.orm.em.fork();
    const lostSlices = await this.lostSlices(em);
    for (const { id, workspaceId, env, host } of await this.unsettled([...lostSlices.keys()], only)) {
      const decision = this.decide(env, host, this.clock.now(), lostSlices.get(id));
      if (decision === undefined) continue;
      if (decision.forget && this.options.beforeForget) {
        const ready = await this.options.beforeForget(id, workspaceId).then(
          () => true,
          (err: unknown) => {
            this.logger.warn({ err, environmentId: id }, "could not archive the logs of a deleted environment; retrying");
            return false;
          },
        );
        if (!ready) continue;
      }
      // The step decides again, on the row it locks.
      await this.step(id).catch((err: unknown) => this.logger.error({ err, environmentId: id }, "reconciling an environment failed"));
    }
  }

  /**
   * The environments a pass must decide on: those holding resources, less the RUNNING ones that have
   * nothing to do (see decide(): a live host, a current report that the workload runs, no offline
   * note, no MIG slice lost). A fleet's environments are mostly such; loading every one each second
   * would cost the leader seconds of CPU per pass at ten thousand of them. The rest are read as
   * plain rows, only what decide() reads: while a fleet's workloads start, every one is unsettled,
   * and loading each as an entity every second cost more than a core at ten thousand.
   */
  private async unsettled(lost: string[], only?: string[]): Promise<Unsettled[]> {
    const ms = (column: string) => `extract(epoch from ${column})::float8 * 1000`;
    const rows = await bulkSql<UnsettledRow>(
      this.orm,
      `select e.id, e.workspace_id, e.status, e.generation, e.workload_generation, e.workload_state, e.workload_message,
              e.status_message, ${ms("e.acted_at")} as acted_at, e.attempts,
              ${ms("coalesce((e.transitions -> -1 ->> 'time')::timestamptz, e.updated_at)")} as since,
              h.id as host_id, h.name as host_name, h.status as host_status, h.runtime as host_runtime,
              ${ms("h.last_heartbeat_at")} as host_last_heartbeat_at, ${ms("h.updated_at")} as host_updated_at
         from environments e left join hosts h on h.id = e.host_id
        where e.status = any(?::text[]) ${only ? "and e.id = any(?::uuid[])" : ""}
          and (e.id = any(?::uuid[]) or not (
                e.status = 'RUNNING' and h.id is not null and h.status <> 'OFFLINE' and e.workload_state <> ''
            and not (e.workload_generation = e.generation and e.workload_state in ('FAILED', 'STOPPED', 'REMOVED'))
            and not starts_with(e.status_message, ?)))`,
      [pgArray(HOLDING), ...(only ? [pgArray(only)] : []), pgArray(lost), OFFLINE_NOTE],
    );
    const date = (epochMs: number | null) => (epochMs === null ? null : new Date(epochMs));
    return rows.map((r) => ({
      id: r.id,
      workspaceId: r.workspace_id,
      env: {
        status: r.status,
        generation: r.generation,
        workloadGeneration: r.workload_generation,
        workloadState: r.workload_state,
        workloadMessage: r.workload_message,
        statusMessage: r.status_message,
        actedAt: date(r.acted_at),
        attempts: r.attempts,
        since: new Date(r.since),
      },
      host:
        r.host_id === null
          ? null
          : {
              name: r.host_name!,
              status: r.host_status!,
              runtime: r.host_runtime!,
              lastHeartbeatAt: date(r.host_last_heartbeat_at),
              updatedAt: new Date(r.host_updated_at!),
            },
    }));
  }

  /** Records what a runtime reports about a workload; reports of older generations are ignored. */
  async observe(hostId: string, report: WorkloadReport): Promise<void> {
    const updated = await this.orm.em
      .fork()
      .nativeUpdate(
        Environment,
        { id: report.environmentId, host: hostId, workloadGeneration: { $lte: report.generation } },
        { workloadState: report.state, workloadMessage: report.message.slice(0, 4096), workloadGeneration: report.generation },
      );
    if (updated > 0) this.kick(report.environmentId);
  }

  /**
   * A host's agent (re)connected, running `runningIds`: what it runs and should not is stopped or
   * removed; what it should run and does not is asked for again at once, and so is every stop or
   * remove still waiting on it.
   */
  async agentConnected(hostId: string, runningIds: string[]): Promise<void> {
    const runtime = this.runtimes.AGENT;
    if (!runtime) return;
    runningIds = runningIds.filter(isId).map((id) => id.toLowerCase());
    // Most agents of a reconnecting fleet run nothing and are owed nothing: one look shared by the
    // hellos arriving together settles those.
    if (runningIds.length === 0 && !(await this.holdingHosts.add(hostId))) return;
    const em = this.orm.em.fork();
    const envs = await em.find(Environment, { host: hostId, status: { $in: HOLDING } });
    const wanted = new Set(envs.filter((e) => ["CREATING", "STARTING", "RUNNING"].includes(e.status)).map((e) => e.id));
    const known = new Set(envs.map((e) => e.id));
    for (const id of runningIds) {
      if (wanted.has(id)) continue;
      // Unknown ones were deleted while the host was away; the others were stopped or failed.
      const call = known.has(id) || (await em.count(Environment, { id })) > 0 ? runtime.stop(id, hostId, 0) : runtime.remove(id, hostId, 0);
      await call.catch((err: unknown) => this.logger.warn({ err, environmentId: id }, "could not stop a workload the host should not run"));
    }
    // What it should run and does not (the agent or its host restarted) is asked for again at once,
    // each under its row lock, as a user's change would be.
    const lost = envs.filter((e) => wanted.has(e.id) && !runningIds.includes(e.id)).map((e) => e.id);
    for (const id of lost) {
      const view = await this.orm.em.fork().transactional(async (tx) => {
        const env = await tx.findOne(Environment, id, { lockMode: LockMode.PESSIMISTIC_WRITE });
        if (!env || env.host?.id !== hostId || !["CREATING", "STARTING", "RUNNING"].includes(env.status)) return undefined;
        if (env.status === "RUNNING")
          transition(env, "STARTING", "its host's agent no longer runs it; starting it again", this.clock.now());
        // A new generation: the agent may remember the old one as stopped, and would not run it again.
        Object.assign(env, { generation: env.generation + 1, workloadState: "", actedAt: null, attempts: 0 });
        return this.environments.view(tx, env);
      });
      if (view) this.environments.publish("MODIFIED", view);
    }
    // What waits on this agent is due at once, not after the backoff that tries made while it was
    // away built up (up to a minute): stops and removes, and what it runs but the database still has
    // starting (its report may have died with the old stream; asking again for the same generation
    // makes the agent report its state again), or running with a port change it has not confirmed.
    const waiting: EnvironmentStatus[] = ["CREATING", "STARTING", "RUNNING", "STOPPING", "DELETING"];
    const due = envs
      .filter(
        (e) =>
          e.status === "STOPPING" ||
          e.status === "DELETING" ||
          ((e.status === "CREATING" || e.status === "STARTING") && runningIds.includes(e.id)) ||
          (e.status === "RUNNING" && e.workloadState === "" && runningIds.includes(e.id)),
      )
      .map((e) => e.id);
    if (due.length > 0) await em.nativeUpdate(Environment, { id: { $in: due }, status: { $in: waiting } }, { actedAt: null, attempts: 0 });
    for (const id of new Set([...lost, ...due])) this.kick(id);
  }

  /** Decides and applies one step for one environment, under its row lock; acts after commit. */
  private async step(id: string): Promise<void> {
    let act: { decision: Decision; spec?: WorkloadSpec; env: Environment; failed: boolean } | undefined;
    const published = await this.orm.em.fork().transactional(async (em) => {
      // With its host and workspace (a run's spec names the workspace), the lock on its own row only.
      const env = await em.findOne(Environment, id, {
        lockMode: LockMode.PESSIMISTIC_WRITE,
        lockTableAliases: [ENVIRONMENT_ALIAS],
        populate: ["host", "workspace"],
      });
      if (!env) return undefined;
      const now = this.clock.now();
      const decision = this.decide(factsOf(env), env.host, now, (await this.lostSlices(em, env.id)).get(env.id));
      if (!decision) return undefined;
      const failed = decision.status?.[0] === "FAILED" && env.status !== "FAILED";
      if (decision.status) transition(env, decision.status[0], decision.status[1], now);
      if (decision.note !== undefined) env.statusMessage = decision.note;
      if (decision.act && !decision.cleanup) {
        env.actedAt = now;
        env.attempts++;
      }
      // What a run is sent is also what its view shows: read once.
      const held = decision.act === "run" ? await holdings(em, env.id) : undefined;
      const spec = held && this.spec(env, held);
      if (decision.release) await release(em, env.id);
      if (decision.forget) transition(env, "DELETED", "deleted", now);
      act = { decision, spec, env, failed };
      // A retry that changes nothing visible (most steps of a workload that takes long to start) has
      // nothing to publish: no view to read.
      if (!decision.status && !decision.forget && decision.note === undefined) return undefined;
      const view = await this.environments.view(em, env, held);
      // The row goes, and with it the name; port mappings and log lines go by cascade.
      if (decision.forget) em.remove(env);
      return { view, forget: decision.forget };
    });
    if (published) this.environments.publish(published.forget ? "DELETED" : "MODIFIED", published.view);
    if (act?.failed) this.options.onFailed?.();
    if (act?.decision.act) await this.act(act.decision, act.env, act.spec);
  }

  private async act(decision: Decision, env: Environment, spec: WorkloadSpec | undefined): Promise<void> {
    const host = env.host;
    const runtime = host && this.runtimes[host.runtime];
    if (!host || !runtime) return;
    try {
      const attributes = { "remotegpu.environment_id": env.id, "remotegpu.host_id": host.id, "remotegpu.runtime": host.runtime };
      await traced(`runtime.${decision.act}`, attributes, async () => {
        if (decision.act === "run") await runtime.run(spec!);
        else if (decision.act === "stop") await runtime.stop(env.id, host.id, env.generation, env.workspace.id);
        else await runtime.remove(env.id, host.id, env.generation, env.workspace.id);
      });
    } catch (err) {
      // Not delivered: the next pass after the backoff tries again (cleanups are left to the agent's next hello).
      this.logger.warn(
        { environmentId: env.id, action: decision.act, error: err instanceof Error ? err.message : String(err) },
        "runtime call not delivered",
      );
    }
  }

  /**
   * Environments whose GPUs changed MIG mode under them, each with why: one holding a MIG slice whose
   * GPU left MIG mode (its agent reports the GPU whole, and the slice no more: it will not come
   * back), or one holding a GPU whole that was put in MIG mode. A slice that only went missing stays
   * OFFLINE, as a missing GPU does, and may return.
   */
  private async lostSlices(em: EntityManager, environmentId?: string): Promise<Map<string, string>> {
    const only = environmentId ? "and g.environment_id = ?" : "";
    const rows = await em.getConnection().execute<{ environment_id: string; reason: string }[]>(
      `select g.environment_id, 'GPU ' || p.index || ' (' || p.uuid || ') left MIG mode: its MIG slice ' || g.uuid || ' (' || g.mig_profile || ') is gone' as reason
         from gpus g join gpus p on p.id = g.parent_id
        where g.parent_id is not null and g.environment_id is not null and g.status = 'OFFLINE'
          and p.status <> 'OFFLINE' and not p.mig_enabled ${only}
       union all
       select g.environment_id, 'GPU ' || g.index || ' (' || g.uuid || ') was put in MIG mode: it can no longer be used whole' as reason
         from gpus g where g.mig_enabled and g.environment_id is not null ${only}`,
      environmentId ? [environmentId, environmentId] : [],
      "all",
      em.getTransactionContext(),
    );
    return new Map(rows.map((r) => [r.environment_id, r.reason]));
  }

  /** The next step for an environment, or undefined when there is nothing to do now. */
  private decide(env: EnvironmentFacts, host: HostFacts | null, now: Date, lostSlice?: string): Decision | undefined {
    const current = env.workloadGeneration === env.generation;
    const report = env.workloadState;
    const offlineMs = host?.status === "OFFLINE" ? now.getTime() - (host.lastHeartbeatAt ?? host.updatedAt).getTime() : 0;
    const lost = offlineMs > this.options.lostHostTimeoutMs;
    // Stops and deletions do not wait for a host that cannot answer: what they release is released
    // now, the command goes out in case the agent is there after all, and an agent that comes back
    // later is told by agentConnected to stop or remove what it still runs.
    const silentMs = host?.lastHeartbeatAt ? now.getTime() - host.lastHeartbeatAt.getTime() : 0;
    const unreachable =
      host?.status === "OFFLINE" || (this.options.hostGraceMs !== undefined && host !== null && silentMs > this.options.hostGraceMs);
    const due =
      !env.actedAt ||
      now.getTime() - env.actedAt.getTime() >= Math.min(this.retryMaxMs, this.retryBaseMs * 2 ** Math.max(0, env.attempts - 1));
    const runtime = host && this.runtimes[host.runtime];
    // How long the current status has lasted.
    const waited = now.getTime() - env.since.getTime();
    const fail = (reason: string): Decision => ({ status: ["FAILED", reason], release: true, act: "stop", cleanup: true });
    const offlineNote = (): Decision | undefined => {
      const text = `${OFFLINE_NOTE} ${(host!.lastHeartbeatAt ?? host!.updatedAt).toISOString()}; failing it after ${Math.round(this.options.lostHostTimeoutMs / 1000)} s offline`;
      return env.statusMessage === text ? undefined : { note: text };
    };

    if (lostSlice && ["PENDING", "CREATING", "STARTING", "RUNNING"].includes(env.status)) return fail(lostSlice);
    switch (env.status) {
      case "PENDING":
      case "CREATING":
      case "STARTING": {
        if (current && report === "RUNNING") return { status: ["RUNNING", "running"] };
        if (current && (report === "FAILED" || report === "STOPPED" || report === "REMOVED"))
          return fail(`the workload did not start: ${env.workloadMessage || report.toLowerCase()}`);
        if (!host) return fail("its host was deleted");
        if (!runtime) return fail(`no ${host.runtime.toLowerCase()} runtime is configured for host "${host.name}"`);
        if (lost) return fail(`host "${host.name}" was offline for more than ${Math.round(this.options.lostHostTimeoutMs / 1000)} s`);
        if (waited > this.options.startTimeoutMs) {
          return fail(
            `did not start within ${Math.round(this.options.startTimeoutMs / 1000)} s${env.workloadMessage ? `: ${env.workloadMessage}` : ""}`,
          );
        }
        if (offlineMs > 0) return offlineNote();
        // What the runtime says while it starts (an image pull's progress) is the status message.
        if (current && report === "STARTING" && env.workloadMessage && env.statusMessage !== env.workloadMessage)
          return { note: env.workloadMessage };
        if (!due) return undefined;
        return env.status === "PENDING" ? { status: ["CREATING", "creating"], act: "run" } : { act: "run" };
      }
      case "RUNNING": {
        if (current && (report === "FAILED" || report === "STOPPED" || report === "REMOVED"))
          return fail(`the workload ended: ${env.workloadMessage || report.toLowerCase()}`);
        if (!host) return fail("its host was deleted");
        if (lost) return fail(`host "${host.name}" was offline for more than ${Math.round(this.options.lostHostTimeoutMs / 1000)} s`);
        if (offlineMs > 0) return offlineNote();
        // Its ports changed in place (same generation): the run goes again until the runtime confirms it.
        if (report === "" && runtime && due)
          return env.statusMessage.startsWith(OFFLINE_NOTE) ? { note: "running", act: "run" } : { act: "run" };
        return env.statusMessage.startsWith(OFFLINE_NOTE) ? { note: "running" } : undefined;
      }
      // Only a report of the current generation counts: an older workload's STOPPED (a restart replaced
      // it) says nothing about the one running now. Stop and remove commands carry the generation.
      case "STOPPING": {
        if ((current && (report === "STOPPED" || report === "REMOVED" || report === "FAILED")) || !host || !runtime)
          return { status: ["STOPPED", "stopped"], release: true };
        // The agent stops it when it returns (its hello lists it, and it should not run).
        if (unreachable)
          return {
            status: ["STOPPED", `stopped while host "${host.name}" is unreachable; its agent stops the workload when it returns`],
            release: true,
            act: "stop",
            cleanup: true,
          };
        if (waited > this.options.startTimeoutMs)
          return {
            status: ["STOPPED", `the host's agent did not confirm the stop within ${Math.round(this.options.startTimeoutMs / 1000)} s`],
            release: true,
          };
        return due ? { act: "stop" } : undefined;
      }
      case "DELETING": {
        if ((current && report === "REMOVED") || !host || !runtime || waited > this.options.startTimeoutMs)
          return { release: true, forget: true };
        // Its agent removes the workload when it returns: its hello names it, and the id is unknown then.
        if (unreachable) return { release: true, forget: true, act: "remove", cleanup: true };
        return due ? { act: "remove" } : undefined;
      }
      default:
        return undefined;
    }
  }

  /** What the runtime is asked to run: `env` with its workspace loaded, and what it holds. */
  private spec(env: Environment, { gpus, ports }: Holdings): WorkloadSpec {
    // In the order they were added: the runtime takes the first for readiness, and a new port goes last.
    const order = new Map(env.ports.map((p, i) => [p.name, i]));
    const inOrder = [...ports].sort((a, b) => (order.get(a.name) ?? ports.length) - (order.get(b.name) ?? ports.length));
    return {
      environmentId: env.id,
      name: env.name,
      workspaceId: env.workspace.id,
      workspaceName: env.workspace.name,
      hostId: env.host!.id,
      nodeName: env.host!.kubernetesNodeName,
      image: env.image,
      command: env.command,
      args: env.args,
      env: workloadEnv(env),
      gpuUuids: gpus.map((g) => g.uuid),
      gpuIndices: gpus.map((g) => g.index),
      // Slices: their profile (Kubernetes asks for nvidia.com/mig-<profile>).
      ...(gpus[0]?.migProfile ? { migProfile: gpus[0].migProfile } : {}),
      ports: inOrder.map((p) => ({ name: p.name, containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol })),
      cpuMillicores: env.cpuMillicores,
      memoryBytes: env.memoryBytes,
      storageBytes: env.storageBytes,
      sshPublicKeys: env.sshPublicKeys,
      generation: env.generation,
    };
  }
}

/**
 * The environment variables a workload gets from the server: the user's, and `PORT` = the first port
 * the environment ever had, unless the user set PORT. Sent explicitly so that it stays the same when
 * that port is removed (a runtime otherwise takes the first port of the list).
 */
function workloadEnv(env: Pick<Environment, "env" | "primaryPort">): Record<string, string> {
  if (env.primaryPort === 0 || "PORT" in env.env) return env.env;
  return { ...env.env, PORT: String(env.primaryPort) };
}

/** Gives an environment's GPUs and host ports back. */
export async function release(em: EntityManager, environmentId: string): Promise<void> {
  await em.getConnection().execute(
    `update gpus set holder = null, environment_id = null, allocated_at = null, updated_at = now(),
            status = case when status = 'ALLOCATED' then 'AVAILABLE' else status end
      where environment_id = ?`,
    [environmentId],
    "run",
    em.getTransactionContext(),
  );
  await em.nativeDelete(PortMapping, { environment: environmentId });
}
