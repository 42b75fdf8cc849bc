import { randomUUID } from "node:crypto";
import { setMaxListeners } from "node:events";
import type { AuditTrail } from "../audit/audit-trail.js";
import type { Principal } from "../auth/principal.js";
import { DomainError, FailedPreconditionError, NotFoundError, ResourceExhaustedError, UnavailableError } from "../errors.js";
import type { AgentSessions } from "../host/agent-sessions.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { EnvironmentManager } from "./environment-manager.js";
import type { RelayEntry, SshRelay } from "./ssh-relay.js";

export interface SshTunnelLimits {
  /** Connections open at once to one environment, on this replica. */
  perEnvironment: number;
  /** Connections open at once with one token, on this replica. */
  perToken: number;
  /** How long the agent has to answer a new tunnel. */
  answerMs: number;
}

/** What the agent's end sends: the connection's bytes, and once the fingerprint of the key the client proved. */
export interface FromAgent {
  data: Uint8Array;
  keyFingerprint: string;
}

/** SSH served by the control plane into an environment's pod (runtime/kubernetes-ssh.ts). */
export interface PodSsh {
  /** Yields what goes to the client, pulling `fromClient`, until either side ends. */
  serve(
    environment: { id: string; generation: number },
    authorizedKeys: string[],
    fromClient: AsyncIterable<Uint8Array>,
    /** Ends the connection (the client's call ended). */
    signal: AbortSignal,
  ): AsyncIterable<FromAgent>;
}

/** A tunnel whose agent has been asked to call back. */
interface Waiting {
  hostId: string;
  /** The client's bytes, for the agent's end to pull (HTTP/2 flow control then holds end to end). */
  fromClient: AsyncIterable<Uint8Array>;
  arrive: (fromAgent: AsyncIterable<FromAgent>) => void;
}

const METHOD = "remotegpu.v1.EnvironmentService/OpenSshTunnel";

/**
 * SSH connections through the control plane. A user's OpenSshTunnel asks the agent of the
 * environment's host (wherever its stream is held: commands are routed) to call back with
 * AcceptSshTunnel; each end then pulls the other's bytes, so neither is buffered here. When the
 * agent's stream is held by another replica, the agent calls that one back, and the two replicas
 * relay the bytes through Redis (SshRelay). The agent serves SSH itself, checking the client's key
 * against the environment's keys as they are now.
 * Each connection leaves one audit event: refused (with the code), or closed with its duration,
 * the key that was accepted and its bytes each way.
 */
export class SshTunnels {
  private readonly waiting = new Map<string, Waiting>();
  private readonly open = { environments: new Map<string, number>(), tokens: new Map<string, number>() };
  private readonly closing = new AbortController();

  constructor(
    private readonly environments: EnvironmentManager,
    private readonly agents: AgentSessions,
    private readonly audit: AuditTrail,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly limits: SshTunnelLimits,
    /** Between replicas; without it (one replica) agents always call back here. */
    private readonly relay?: SshRelay,
    /** SSH into Kubernetes pods, where the control plane has a cluster. */
    private readonly kubernetes?: PodSsh,
  ) {
    // Every open tunnel listens for the shutdown, so a busy replica has many listeners, not a leak.
    setMaxListeners(0, this.closing.signal);
  }

  /** Ends every tunnel through this replica with UNAVAILABLE: the clients connect again, to another one. */
  shutdown(): void {
    this.closing.abort();
  }

  /** The user's end: yields the bytes for the SSH client, pulling `fromClient` for the agent, until either side ends. */
  async *connect(
    environmentId: string,
    caller: Principal,
    fromClient: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
    requestId: string,
  ): AsyncGenerator<Uint8Array> {
    const started = this.clock.now().getTime();
    let workspaceId = caller.kind === "workspace" ? caller.workspaceId : null;
    const record = (code: string, detail: string) =>
      this.audit
        .append({
          actorId: caller.tokenId,
          actorKind: caller.kind,
          workspaceId,
          method: METHOD,
          targetId: environmentId,
          code,
          requestId,
          detail,
        })
        .catch((err: unknown) => this.logger.error({ err, environmentId }, "writing an SSH audit event failed"));
    let hostId: string;
    let authorizedKeys: string[];
    let release: () => void;
    /** A Kubernetes environment: this replica serves SSH itself, into its pod. */
    let inPod: { id: string; generation: number } | undefined;
    try {
      const { environment: env } = await this.environments.get(environmentId, caller.kind === "workspace" ? caller.workspaceId : undefined);
      workspaceId = env.workspace.id;
      if (env.status !== "RUNNING" || !env.host)
        throw new FailedPreconditionError(`environment "${env.name}" is ${env.status}; SSH needs it RUNNING`);
      if (env.host.runtime === "KUBERNETES") {
        if (!this.kubernetes)
          throw new FailedPreconditionError(`environment "${env.name}" runs on Kubernetes, which this server does not reach`);
        inPod = { id: env.id, generation: env.generation };
      }
      hostId = env.host.id;
      authorizedKeys = env.sshPublicKeys;
      release = this.take(env.id, caller.tokenId);
    } catch (err) {
      await record(codeOf(err), err instanceof Error ? err.message.slice(0, 400) : "refused");
      throw err;
    }

    let bytesIn = 0;
    let bytesOut = 0;
    let fingerprint: string | undefined;
    let connected = false;
    let outcome = "ok";
    const tunnelId = randomUUID();
    const stop = new AbortController();
    try {
      if (this.closing.signal.aborted) throw new UnavailableError(SHUTTING_DOWN);
      const counted = (async function* () {
        for await (const chunk of fromClient) {
          bytesIn += chunk.length;
          yield chunk;
        }
      })();
      const fromAgent = inPod
        ? this.kubernetes!.serve(inPod, authorizedKeys, counted, AbortSignal.any([signal, stop.signal]))
        : await this.throughAgent({ tunnelId, hostId, environmentId, authorizedKeys }, counted, AbortSignal.any([signal, stop.signal]));
      connected = true;
      try {
        // The client's call ending (the CLI killed) ends the connection too, whatever the other end does.
        for await (const m of untilAborted(fromAgent, AbortSignal.any([signal, this.closing.signal]))) {
          if (m.keyFingerprint) fingerprint = m.keyFingerprint;
          if (m.data.length === 0) continue;
          bytesOut += m.data.length;
          yield m.data;
        }
      } catch (err) {
        if (signal.aborted) throw err;
        if (this.closing.signal.aborted) throw new UnavailableError(SHUTTING_DOWN);
        if (inPod) throw new UnavailableError(`the connection to the environment's pod was lost: ${String(err)}`);
        throw new UnavailableError(`the agent of host ${hostId} went away; the SSH connection is lost`);
      }
    } catch (err) {
      outcome = signal.aborted ? "cancelled" : codeOf(err);
      throw err;
    } finally {
      stop.abort();
      this.waiting.delete(tunnelId);
      release();
      if (signal.aborted && outcome === "ok") outcome = "cancelled";
      // A connection that never proved a key was refused by the agent (or ended before trying).
      if (connected && !fingerprint && outcome === "ok") outcome = "unauthenticated";
      const seconds = Math.round((this.clock.now().getTime() - started) / 1000);
      const key = fingerprint ? `key ${fingerprint}` : "no key accepted";
      await record(
        outcome,
        connected ? `closed after ${seconds} s, ${key}, ${bytesIn} bytes in, ${bytesOut} bytes out` : "the agent was not reached",
      );
    }
  }

  /**
   * Asks the environment's agent to call back: this replica, or the one holding its stream, which
   * relays. Resolves to the agent's bytes once it has.
   */
  private async throughAgent(
    tunnel: { tunnelId: string; hostId: string; environmentId: string; authorizedKeys: string[] },
    fromClient: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
  ): Promise<AsyncIterable<FromAgent>> {
    const { tunnelId, hostId } = tunnel;
    const relay = this.agents.holds(hostId) ? undefined : this.relay;
    const arrived = relay
      ? this.relayed(relay, tunnelId, hostId, fromClient, signal)
      : new Promise<AsyncIterable<FromAgent>>((arrive) => this.waiting.set(tunnelId, { hostId, fromClient, arrive }));
    arrived.catch(() => undefined); // awaited below, unless the agent cannot be asked at all
    const { environmentId, authorizedKeys } = tunnel;
    if (!this.agents.send(hostId, { kind: "ssh", tunnelId, environmentId, authorizedKeys })) {
      throw new UnavailableError(`the agent of host ${hostId} is not connected; try again when it is`);
    }
    const deadline = AbortSignal.any([signal, this.closing.signal, AbortSignal.timeout(this.limits.answerMs)]);
    const late = aborted(deadline);
    const fromAgent = await Promise.race([arrived, late.promise]).finally(late.dispose);
    if (fromAgent) return fromAgent;
    if (this.closing.signal.aborted) throw new UnavailableError(SHUTTING_DOWN);
    throw new UnavailableError(`the agent of host ${hostId} did not answer within ${this.limits.answerMs / 1000} s`);
  }

  /**
   * The user's end when another replica holds the agent's stream: resolves, once the agent has
   * called that replica back, to the agent's side of the relay (pulling `fromClient` into it).
   */
  private async relayed(
    relay: SshRelay,
    tunnelId: string,
    hostId: string,
    fromClient: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
  ): Promise<AsyncIterable<FromAgent>> {
    await relay.expect(tunnelId, hostId, this.limits.answerMs).catch((err: unknown) => {
      throw new UnavailableError(`the agent of host ${hostId} is connected to another replica, and Redis did not answer: ${String(err)}`);
    });
    signal.addEventListener("abort", () => void relay.forget(tunnelId), { once: true });
    const out = (async function* () {
      for await (const data of fromClient) yield { data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) };
    })();
    const link = relay.link(tunnelId, "client", out, signal);
    const first = await link.next();
    if (first.done || !first.value.answered) throw new UnavailableError(`the agent of host ${hostId} did not take the tunnel`);
    return (async function* () {
      for await (const e of link) {
        yield { data: e.data ?? new Uint8Array(0), keyFingerprint: e.fingerprint ?? "" };
      }
    })();
  }

  /**
   * The agent's end: hands its bytes to the user's end and yields the client's, until either side
   * ends. The user's end is here, or, through the relay, on the replica that asked for the tunnel.
   */
  async accept(
    tunnelId: string,
    hostId: string,
    fromAgent: AsyncIterable<FromAgent>,
    signal: AbortSignal,
  ): Promise<AsyncIterable<Uint8Array>> {
    const waiting = this.waiting.get(tunnelId);
    if (waiting?.hostId === hostId) {
      this.waiting.delete(tunnelId);
      waiting.arrive(fromAgent);
      return waiting.fromClient;
    }
    if (waiting || !this.relay || !(await this.relay.claim(tunnelId, hostId))) throw new NotFoundError("ssh tunnel", tunnelId);
    const out = (async function* (): AsyncGenerator<RelayEntry> {
      yield { answered: true };
      for await (const m of fromAgent) {
        yield {
          data: m.data.length > 0 ? Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength) : undefined,
          fingerprint: m.keyFingerprint || undefined,
        };
      }
    })();
    const link = this.relay.link(tunnelId, "agent", out, AbortSignal.any([signal, this.closing.signal]));
    return (async function* () {
      for await (const e of link) if (e.data) yield e.data;
    })();
  }

  /** Counts a connection against the limits, or refuses it; the result gives the place back. */
  private take(environmentId: string, tokenId: string): () => void {
    const { environments, tokens } = this.open;
    if ((environments.get(environmentId) ?? 0) >= this.limits.perEnvironment) {
      throw new ResourceExhaustedError(
        `environment ${environmentId} has ${this.limits.perEnvironment} SSH connections open, the most it may`,
      );
    }
    if ((tokens.get(tokenId) ?? 0) >= this.limits.perToken) {
      throw new ResourceExhaustedError(`this token has ${this.limits.perToken} SSH connections open, the most it may`);
    }
    const bump = (m: Map<string, number>, key: string, by: number) => {
      const n = (m.get(key) ?? 0) + by;
      if (n === 0) m.delete(key);
      else m.set(key, n);
    };
    bump(environments, environmentId, 1);
    bump(tokens, tokenId, 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      bump(environments, environmentId, -1);
      bump(tokens, tokenId, -1);
    };
  }
}

const SHUTTING_DOWN = "the server is shutting down; connect again to reach another replica";

/** Yields what `source` yields until `signal` aborts, then throws (whatever `source` is waiting for). */
async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  const stopped = aborted(signal);
  try {
    for (;;) {
      const next = it.next();
      next.catch(() => undefined);
      const r = await Promise.race([next, stopped.promise]);
      if (!r) throw new Error("aborted");
      if (r.done) return;
      yield r.value;
    }
  } finally {
    stopped.dispose();
    it.return?.()?.catch(() => undefined);
  }
}

/** A promise that resolves (with nothing) when `signal` aborts; dispose of it when done waiting, as signals may live long. */
function aborted(signal: AbortSignal): { promise: Promise<undefined>; dispose: () => void } {
  let onAbort = () => {};
  const promise = new Promise<undefined>((resolve) => {
    onAbort = () => resolve(undefined);
    if (signal.aborted) resolve(undefined);
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  return { promise, dispose: () => signal.removeEventListener("abort", onAbort) };
}

/** The snake_case code of a domain error, as audit events write codes ("NotFoundError" → "not_found"). */
function codeOf(err: unknown): string {
  if (!(err instanceof DomainError)) return "unknown";
  return err.name
    .replace(/Error$/, "")
    .replace(/(?<=[a-z])(?=[A-Z])/g, "_")
    .toLowerCase();
}
