import { randomUUID } from "node:crypto";
import type { AuditTrail } from "../audit/audit-trail.js";
import type { Principal } from "../auth/principal.js";
import { FailedPreconditionError, NotFoundError, ResourceExhaustedError, UnavailableError } from "../errors.js";
import type { AgentSessions } from "../host/agent-sessions.js";
import { Channel } from "../platform/channel.js";
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

/** The agent's side of a tunnel, once it called back. */
interface AgentEnd {
  /** Bytes for the agent. */
  toAgent: Channel<Uint8Array>;
  /** Bytes from the agent. */
  fromAgent: Channel<Uint8Array>;
  /** Set when the agent's stream broke rather than ended. */
  lost: { error?: unknown };
  /** The SHA-256 fingerprint of the key the SSH client proved, once the agent says so. */
  key: { fingerprint?: string };
}

interface Waiting {
  hostId: string;
  arrive: (end: AgentEnd) => void;
}

const METHOD = "remotegpu.v1.EnvironmentService/OpenSshTunnel";

/**
 * SSH connections through the control plane. A user's OpenSshTunnel asks the agent of the
 * environment's host (wherever its stream is held: commands are routed) to call back with
 * AcceptSshTunnel; the two streams are then joined, byte for byte. The agent serves SSH itself,
 * checking the client's key against the environment's keys as they are now.
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

  /**
   * The user's end: `fromClient` is the connection's bytes from the SSH client (the first chunk
   * included); the result yields the bytes for it until either side ends.
   */
  async *connect(
    environmentId: string,
    caller: Principal,
    fromClient: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
    requestId: string,
  ): AsyncGenerator<Uint8Array> {
    const visibility = caller.kind === "workspace" ? caller.workspaceId : undefined;
    const { environment: env } = await this.environments.get(environmentId, visibility);
    const record = (code: string, detail: string) =>
      this.audit
        .append({
          actorId: caller.tokenId,
          actorKind: caller.kind,
          workspaceId: env.workspace.id,
          method: METHOD,
          targetId: env.id,
          code,
          requestId,
          detail,
        })
        .catch((err: unknown) => this.logger.error({ err, environmentId }, "writing an SSH audit event failed"));
    if (env.status !== "RUNNING" || !env.host) {
      await record("failed_precondition", `not running (${env.status})`);
      throw new FailedPreconditionError(`environment "${env.name}" is ${env.status}; SSH needs it RUNNING`);
    }
    if (env.host.runtime !== "AGENT") {
      await record("failed_precondition", "runs on Kubernetes");
      throw new FailedPreconditionError(
        `environment "${env.name}" runs on Kubernetes: SSH through the control plane serves agent hosts only; its image's own sshd sees the keys in /etc/remotegpu/ssh`,
      );
    }
    const hostId = env.host.id;
    let release: () => void;
    try {
      release = this.take(env.id, caller.tokenId);
    } catch (err) {
      await record("resource_exhausted", "too many connections");
      throw err;
    }
    const started = this.clock.now().getTime();
    let bytesIn = 0;
    let bytesOut = 0;
    let outcome = "ok";
    let end: AgentEnd | undefined;
    try {
      const tunnelId = randomUUID();
      const arrived = new Promise<AgentEnd>((resolve) => this.waiting.set(tunnelId, { hostId, arrive: resolve }));
      const sent = this.agents.send(hostId, { kind: "ssh", tunnelId, environmentId: env.id, authorizedKeys: env.sshPublicKeys });
      if (!sent) throw new UnavailableError(`the agent of host ${hostId} is not connected; try again when it is`);
      end = await Promise.race([arrived, timeout(this.limits.answerMs, signal)]).finally(() => this.waiting.delete(tunnelId));
      if (!end) throw new UnavailableError(`the agent of host ${hostId} did not answer within ${this.limits.answerMs / 1000} s`);
      await record("ok", "connected to the agent");
      const agent = end;
      // The client's bytes go to the agent as they come; the agent's are yielded below.
      void (async () => {
        try {
          for await (const chunk of fromClient) {
            bytesIn += chunk.length;
            agent.toAgent.push(chunk);
          }
        } catch {
          // The client went away: the agent's side ends below.
        } finally {
          agent.toAgent.close();
        }
      })();
      const stop = () => agent.fromAgent.close();
      signal.addEventListener("abort", stop, { once: true });
      try {
        for await (const chunk of agent.fromAgent) {
          bytesOut += chunk.length;
          yield chunk;
        }
      } finally {
        signal.removeEventListener("abort", stop);
      }
      if (agent.lost.error !== undefined) {
        throw new UnavailableError(`the agent of host ${hostId} went away; the SSH connection is lost`);
      }
    } catch (err) {
      outcome = signal.aborted ? "cancelled" : errorCode(err);
      throw err;
    } finally {
      end?.toAgent.close();
      release();
      const seconds = Math.round((this.clock.now().getTime() - started) / 1000);
      const key = end?.key.fingerprint ? `key ${end.key.fingerprint}` : "no key accepted";
      await record(outcome, `closed after ${seconds} s, ${key}, ${bytesIn} bytes in, ${bytesOut} bytes out`);
    }
  }

  /**
   * The agent's end: `fromAgent` carries its bytes, and `keyAccepted` the fingerprint of the key the
   * client proved; the result yields the client's bytes for it.
   */
  async *accept(
    tunnelId: string,
    hostId: string,
    fromAgent: AsyncIterable<{ data: Uint8Array; keyFingerprint: string }>,
    signal: AbortSignal,
  ): AsyncGenerator<Uint8Array> {
    const waiting = this.waiting.get(tunnelId);
    if (!waiting || waiting.hostId !== hostId) throw new NotFoundError("ssh tunnel", tunnelId);
    this.waiting.delete(tunnelId);
    const end: AgentEnd = { toAgent: new Channel(), fromAgent: new Channel(), lost: {}, key: {} };
    waiting.arrive(end);
    void (async () => {
      try {
        for await (const m of fromAgent) {
          if (m.keyFingerprint) end.key.fingerprint = m.keyFingerprint;
          if (m.data.length > 0) end.fromAgent.push(m.data);
        }
      } catch (err) {
        end.lost.error = err;
      } finally {
        end.fromAgent.close();
      }
    })();
    const stop = () => end.toAgent.close();
    signal.addEventListener("abort", stop, { once: true });
    try {
      yield* end.toAgent;
    } finally {
      signal.removeEventListener("abort", stop);
      end.fromAgent.close();
    }
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

function timeout(ms: number, signal: AbortSignal): Promise<undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve(undefined);
      },
      { once: true },
    );
  });
}

/** The snake_case code an error of this module stands for, as audit events write codes. */
function errorCode(err: unknown): string {
  if (err instanceof UnavailableError) return "unavailable";
  if (err instanceof ResourceExhaustedError) return "resource_exhausted";
  if (err instanceof FailedPreconditionError) return "failed_precondition";
  return "unknown";
}
