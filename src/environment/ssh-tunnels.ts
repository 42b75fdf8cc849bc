import { randomUUID } from "node:crypto";
import type { AuditTrail } from "../audit/audit-trail.js";
import type { Principal } from "../auth/principal.js";
import { DomainError, FailedPreconditionError, NotFoundError, ResourceExhaustedError, UnavailableError } from "../errors.js";
import type { AgentSessions } from "../host/agent-sessions.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { EnvironmentManager } from "./environment-manager.js";

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
 * AcceptSshTunnel; each end then pulls the other's bytes, so neither is buffered here. The agent
 * serves SSH itself, checking the client's key against the environment's keys as they are now.
 * Each connection leaves one audit event: refused (with the code), or closed with its duration,
 * the key that was accepted and its bytes each way.
 */
export class SshTunnels {
  private readonly waiting = new Map<string, Waiting>();
  private readonly open = { environments: new Map<string, number>(), tokens: new Map<string, number>() };

  constructor(
    private readonly environments: EnvironmentManager,
    private readonly agents: AgentSessions,
    private readonly audit: AuditTrail,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly limits: SshTunnelLimits,
  ) {}

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
    try {
      const { environment: env } = await this.environments.get(environmentId, caller.kind === "workspace" ? caller.workspaceId : undefined);
      workspaceId = env.workspace.id;
      if (env.status !== "RUNNING" || !env.host)
        throw new FailedPreconditionError(`environment "${env.name}" is ${env.status}; SSH needs it RUNNING`);
      if (env.host.runtime !== "AGENT") {
        throw new FailedPreconditionError(
          `environment "${env.name}" runs on Kubernetes: SSH through the control plane serves agent hosts only; an image's own sshd finds the keys in /etc/remotegpu/ssh`,
        );
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
    try {
      const counted = (async function* () {
        for await (const chunk of fromClient) {
          bytesIn += chunk.length;
          yield chunk;
        }
      })();
      const arrived = new Promise<AsyncIterable<FromAgent>>((arrive) =>
        this.waiting.set(tunnelId, { hostId, fromClient: counted, arrive }),
      );
      if (!this.agents.send(hostId, { kind: "ssh", tunnelId, environmentId, authorizedKeys })) {
        throw new UnavailableError(`the agent of host ${hostId} is not connected; try again when it is`);
      }
      const deadline = AbortSignal.any([signal, AbortSignal.timeout(this.limits.answerMs)]);
      const fromAgent = await Promise.race([arrived, aborted(deadline)]);
      if (!fromAgent) throw new UnavailableError(`the agent of host ${hostId} did not answer within ${this.limits.answerMs / 1000} s`);
      connected = true;
      try {
        for await (const m of fromAgent) {
          if (m.keyFingerprint) fingerprint = m.keyFingerprint;
          if (m.data.length === 0) continue;
          bytesOut += m.data.length;
          yield m.data;
        }
      } catch (err) {
        if (signal.aborted) throw err;
        throw new UnavailableError(`the agent of host ${hostId} went away; the SSH connection is lost`);
      }
    } catch (err) {
      outcome = signal.aborted ? "cancelled" : codeOf(err);
      throw err;
    } finally {
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

  /** The agent's end: hands its bytes to the user's end and yields the client's, until either side ends. */
  accept(tunnelId: string, hostId: string, fromAgent: AsyncIterable<FromAgent>): AsyncIterable<Uint8Array> {
    const waiting = this.waiting.get(tunnelId);
    if (!waiting || waiting.hostId !== hostId) throw new NotFoundError("ssh tunnel", tunnelId);
    this.waiting.delete(tunnelId);
    waiting.arrive(fromAgent);
    return waiting.fromClient;
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

/** Resolves (with nothing) when `signal` aborts. */
function aborted(signal: AbortSignal): Promise<undefined> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(undefined);
    else signal.addEventListener("abort", () => resolve(undefined), { once: true });
  });
}

/** The snake_case code of a domain error, as audit events write codes ("NotFoundError" → "not_found"). */
function codeOf(err: unknown): string {
  if (!(err instanceof DomainError)) return "unknown";
  return err.name
    .replace(/Error$/, "")
    .replace(/(?<=[a-z])(?=[A-Z])/g, "_")
    .toLowerCase();
}
