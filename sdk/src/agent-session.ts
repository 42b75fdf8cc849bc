// The node agent's side of HostService.StreamHeartbeats, for any program that speaks for a host:
// RemoteGPU's own agent (@remotegpu/agent, in agent/) is built on it.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  AgentHeartbeatSchema,
  WorkloadActivitySchema,
  type AgentCapacitySchema,
  type AgentCommand,
  type EnvironmentStatusReportSchema,
  type GpuInventoryItemSchema,
} from "../../gen/remotegpu/v1/agent_pb.js";
import type { LogLineSchema } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService, StreamHeartbeatsRequestSchema, type StreamHeartbeatsRequest } from "../../gen/remotegpu/v1/host_pb.js";
import { Channel } from "./channel.js";
import { WideWindowSessions } from "./wide-window-sessions.js";

/** One measurement of the host, as the agent protocol carries it. */
export interface AgentReading {
  /** The host's GPUs now; the hello of the next stream lists the latest ones. */
  gpus: MessageInitShape<typeof GpuInventoryItemSchema>[];
  /** The heartbeat; the session sets its sequence and the workloads' activity when it sends it. */
  heartbeat: MessageInitShape<typeof AgentHeartbeatSchema>;
}

/** What runs environments on the host, for agents that do (commands, the hello, activity). */
export interface AgentWorkloads {
  /**
   * Carries out a command of the control plane; the result goes back as its `command_result`.
   * `server` calls the replica the command came from, on the stream's connection (an SSH tunnel
   * is accepted there).
   */
  execute(command: AgentCommand, server: Client<typeof HostService>): Promise<{ ok: boolean; message: string }>;
  /** Environments running now (sent in each hello, so a reconnect does not start them twice). */
  running(): string[];
  containersSupported: boolean;
  /** Why it cannot run environments now (no container engine, and process mode not asked for); "" or unset when it can. Sent in each hello. */
  runtimeUnavailableReason?: string;
  /** Port traffic per environment, sent with each heartbeat (idle auto-stop). */
  activity(): MessageInitShape<typeof WorkloadActivitySchema>[];
}

/** Where the session says what it does; pino's logger fits. @default silent */
export interface AgentLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface AgentSessionOptions {
  /** Control-plane base URLs, tried in turn. */
  servers: string[];
  hostId: string;
  /**
   * The host's agent token (from CreateHost or RotateHostToken), or a function that gives it: called
   * for each connection, so a token replaced on disk is used from the next one on.
   */
  token: string | (() => string);
  agentVersion: string;
  capacity: MessageInitShape<typeof AgentCapacitySchema>;
  /**
   * Takes one reading of the host; called on the heartbeat timer, connected or not, with the
   * period it runs at (a collector may keep a sampler running at that period).
   */
  read: (periodMs: number) => Promise<AgentReading>;
  /** Heartbeat period; unset follows what the server asks for. @default 10000, then the server's */
  intervalMs?: number;
  /** Readings kept while disconnected (the oldest go first). @default 360 */
  bufferSize?: number;
  /** First reconnect delay; doubles per failure, with jitter. @default 500 */
  initialBackoffMs?: number;
  /**
   * Longest reconnect delay. Short, because a control plane that restarts is back within seconds
   * and the hosts go OFFLINE if their agents are not; when set, also the wait after being fenced
   * by a newer session (30 s otherwise). @default 5000
   */
  maxBackoffMs?: number;
  /** Runs environments; without it, run/stop/remove commands fail and drain succeeds. @default none */
  workloads?: AgentWorkloads;
  /** Log lines kept while disconnected (the oldest go first). @default 2000 */
  logBufferLines?: number;
  logger?: AgentLogger;
}

type Outgoing = MessageInitShape<typeof StreamHeartbeatsRequestSchema>["message"];
type StatusReport = MessageInitShape<typeof EnvironmentStatusReportSchema>;
type LogLine = MessageInitShape<typeof LogLineSchema>;

const SILENT: AgentLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };

/**
 * Runs the heartbeat stream of one host: takes readings on a timer whether or not it is connected,
 * keeps a bounded backlog and delivers it in order over a stream it reconnects (exponential backoff
 * with jitter, rotating through the servers) whenever it breaks. Readings sent but not acked go back
 * to the backlog when a stream dies, so a reconnect loses nothing that fit. Commands of the control
 * plane go to `workloads`; their status reports and log lines go up with `reportStatus`/`reportLogs`,
 * or wait (bounded) for the next stream.
 */
export class AgentSession {
  private backlog: AgentReading[] = [];
  /** Sends on the current stream; unset while disconnected (and before the welcome). */
  private live?: (message: Outgoing) => void;
  private pendingStatus = new Map<string, StatusReport>();
  private pendingLogs: { environmentId: string; line: LogLine }[] = [];
  private wake?: () => void;
  private intervalMs: number;
  /** How long the server keeps the host ONLINE without a heartbeat: its default until a welcome says. */
  private leaseMs = 40_000;
  private timer?: NodeJS.Timeout;
  /** Set while a reading is being taken: it schedules the next itself when done. */
  private reading = false;
  private gpus: AgentReading["gpus"] = [];
  private readonly log: AgentLogger;

  constructor(private readonly o: AgentSessionOptions) {
    this.intervalMs = o.intervalMs ?? 10_000;
    this.log = o.logger ?? SILENT;
  }

  /** Runs until `signal` aborts; rejects when the server refuses this agent's identity (token, host). */
  async run(signal: AbortSignal): Promise<void> {
    // Each attempt (its stream, its backoff) listens to a signal of this session's own. Sessions may
    // share the caller's signal, and adding a listener to a signal takes time in proportion to those
    // it has: 5,000 sessions reconnecting at once spent about a third of their CPU there.
    const own = new AbortController();
    const forward = () => own.abort(signal.reason);
    signal.addEventListener("abort", forward, { once: true });
    if (signal.aborted) forward();
    try {
      await this.attempts(own.signal);
    } finally {
      signal.removeEventListener("abort", forward);
    }
  }

  private async attempts(signal: AbortSignal): Promise<void> {
    await this.takeReading();
    this.schedule();
    signal.addEventListener("abort", () => this.wake?.(), { once: true });
    let failures = 0;
    for (let attempt = 0; !signal.aborted; attempt++) {
      const server = this.o.servers[attempt % this.o.servers.length]!;
      let fenced = false;
      try {
        // The host's GPUs changed (a MIG re-partition, a GPU gone): a new hello says so, at once.
        if (await this.stream(server, signal, () => (failures = 0))) {
          attempt--;
          continue;
        }
      } catch (err) {
        const e = ConnectError.from(err);
        // A wrong token or host id will not fix itself: stop and say so.
        if (e.code === Code.Unauthenticated || e.code === Code.PermissionDenied || e.code === Code.NotFound) throw e;
        // The server marks a fence; other ABORTEDs (a lost race, a reset connection) are retried at once.
        fenced = e.metadata.get("remotegpu-fenced-by") !== null;
        if (!signal.aborted) this.log.warn({ server, code: Code[e.code], error: e.rawMessage }, "agent stream ended");
      }
      if (signal.aborted) break;
      failures++;
      const base = Math.min(this.o.maxBackoffMs ?? 5000, (this.o.initialBackoffMs ?? 500) * 2 ** Math.min(failures - 1, 16));
      // A fenced session means another agent speaks for this host: do not fight it at full speed.
      await sleep(fenced ? (this.o.maxBackoffMs ?? 30_000) : base / 2 + Math.random() * (base / 2), signal);
    }
    clearTimeout(this.timer);
  }

  /** Sends a workload's state up the stream, or keeps the latest per environment for the next one. */
  reportStatus(report: StatusReport): void {
    if (this.live) this.live({ case: "environmentStatus", value: report });
    else this.pendingStatus.set(report.environmentId ?? "", report);
  }

  /** Sends a workload's output lines up the stream, or keeps the newest of them for the next one. */
  reportLogs(environmentId: string, lines: LogLine[]): void {
    if (this.live) {
      this.live({ case: "environmentLogs", value: { environmentId, lines } });
      return;
    }
    for (const line of lines) this.pendingLogs.push({ environmentId, line });
    const max = this.o.logBufferLines ?? 2000;
    if (this.pendingLogs.length > max) this.pendingLogs.splice(0, this.pendingLogs.length - max);
  }

  /** What piled up while disconnected: the log lines (grouped by environment, in order), then the states. */
  private sendPending(): void {
    const logs = this.pendingLogs;
    const statuses = [...this.pendingStatus.values()];
    this.pendingLogs = [];
    this.pendingStatus.clear();
    for (let i = 0; i < logs.length; ) {
      const environmentId = logs[i]!.environmentId;
      const lines: LogLine[] = [];
      for (; i < logs.length && logs[i]!.environmentId === environmentId; i++) lines.push(logs[i]!.line);
      this.reportLogs(environmentId, lines);
    }
    for (const s of statuses) this.reportStatus(s);
  }

  /** Carries out a command; never throws (a failure is a result with ok false). */
  private async execute(command: AgentCommand, server: Client<typeof HostService>): Promise<{ ok: boolean; message: string }> {
    const w = this.o.workloads;
    this.log.info({ command: command.commandId, kind: command.command.case }, "command from the control plane");
    try {
      if (w) return await w.execute(command, server);
      return command.command.case === "drain"
        ? { ok: true, message: "draining; this agent runs no workloads" }
        : { ok: false, message: "this agent runs no workloads" };
    } catch (err) {
      this.log.warn({ command: command.commandId, kind: command.command.case, err }, "command failed");
      return { ok: false, message: err instanceof Error ? err.message : String(err) };
    }
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.reading = true;
      this.takeReading()
        .catch((err: unknown) => this.log.error({ err }, "reading the host failed"))
        .finally(() => {
          this.reading = false;
          this.schedule();
        });
    }, this.intervalMs);
    this.timer.unref();
  }

  private async takeReading(): Promise<void> {
    const reading = await this.o.read(this.intervalMs);
    this.gpus = reading.gpus;
    this.backlog.push(reading);
    this.trimBacklog();
    this.wake?.();
  }

  /** Drops the oldest readings beyond the bound. */
  private trimBacklog(): void {
    const max = this.o.bufferSize ?? 360;
    if (this.backlog.length > max) this.backlog.splice(0, this.backlog.length - max);
  }

  /** One stream, until it ends; true when it ended because the GPU inventory changed since its hello. */
  private async stream(server: string, signal: AbortSignal, connected: () => void): Promise<boolean> {
    const auth: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${typeof this.o.token === "function" ? this.o.token() : this.o.token}`);
      return next(req);
    };
    // HTTP/2 PINGs when nothing came from the server for two heartbeat periods (an ack is due every
    // period), and a connection whose PING goes unanswered is given up: a connection that died
    // without a reset (a peer that lost power, a path that silently drops everything) never errors
    // by itself, and the agent would wait on it while its host goes OFFLINE. The PING may take half
    // of what the lease leaves after it, the rest being for the new connection: a server busy with a
    // fleet's hellos answers late, and an agent that gives up on it only joins the queue again. At
    // most 30 s however long the lease, since commands do not get through a dead connection either.
    const keepaliveMs = Math.max(this.intervalMs, 1000);
    const pingTimeoutMs = Math.max(keepaliveMs, Math.min(30_000, (this.leaseMs - 2 * keepaliveMs) / 2));
    // Wide windows: an SSH tunnel's bytes (AcceptSshTunnel) share this connection, and 64 KiB a
    // round trip would hold them to a few MiB/s.
    const sessions = new WideWindowSessions(server, { pingIntervalMs: 2 * keepaliveMs, pingTimeoutMs });
    const transport = createGrpcTransport({ baseUrl: server, interceptors: [auth], sessionManager: sessions });
    const client = createClient(HostService, transport);
    const requests = new Channel<StreamHeartbeatsRequest>();
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const responses = client.streamHeartbeats(requests, { signal: stop.signal })[Symbol.asyncIterator]();
    const inFlight: { sequence: bigint; reading: AgentReading }[] = [];
    const send = (message: Outgoing) => requests.push(create(StreamHeartbeatsRequestSchema, { message }));
    let helloGpus = this.gpus;
    const inventory = inventoryKey(helloGpus);
    let changed = false;
    try {
      send({
        case: "hello",
        value: {
          hostId: this.o.hostId,
          agentVersion: this.o.agentVersion,
          capacity: this.o.capacity,
          gpus: helloGpus,
          runningEnvironmentIds: this.o.workloads?.running() ?? [],
          containersSupported: this.o.workloads?.containersSupported ?? false,
          runtimeUnavailableReason: this.o.workloads?.runtimeUnavailableReason ?? "",
        },
      });
      const first = await responses.next();
      if (first.done || first.value.message.case !== "welcome") throw new ConnectError("the server sent no welcome", Code.Unavailable);
      const welcome = first.value.message.value;
      if (welcome.settings?.leaseTtl) this.leaseMs = durationMs(welcome.settings.leaseTtl);
      const asked = welcome.settings?.heartbeatInterval && durationMs(welcome.settings.heartbeatInterval);
      if (this.o.intervalMs === undefined && asked && asked !== this.intervalMs) {
        this.intervalMs = asked;
        // A reading under way schedules the next at the new period when it ends; rescheduling now
        // as well would leave two timers, and readings taken twice as often and at once.
        if (!this.reading) {
          clearTimeout(this.timer);
          this.schedule();
        }
      }
      this.log.info({ server, session: welcome.sessionId, intervalMs: this.intervalMs }, "agent connected");
      connected();
      this.live = send;
      this.sendPending();

      const acks = (async () => {
        for (;;) {
          const r = await responses.next();
          if (r.done) return;
          const m = r.value.message;
          if (m.case === "ack") {
            while (inFlight.length > 0 && inFlight[0]!.sequence <= m.value.sequence) inFlight.shift();
          } else if (m.case === "command") {
            // Not awaited: a slow stop must not hold up acks; the workloads order commands per environment.
            const commandId = m.value.commandId;
            void this.execute(m.value, client).then((result) => send({ case: "commandResult", value: { commandId, ...result } }));
          }
        }
      })();
      let ended = false;
      const markEnded = () => {
        ended = true;
        this.wake?.();
      };
      acks.then(markEnded, markEnded); // the error itself surfaces through `await acks` below

      let sequence = 0n;
      const maxInFlight = this.o.bufferSize ?? 360;
      while (!ended && !signal.aborted) {
        // The latest reading found other GPUs than the hello listed (their samples would be dropped).
        if (this.gpus !== helloGpus) {
          if (inventoryKey(this.gpus) !== inventory) {
            this.log.info({ server }, "the host's GPUs changed; saying hello again");
            changed = true;
            break;
          }
          helloGpus = this.gpus;
        }
        // Not more unacked readings than the backlog may hold: a server that stops acking gets no more.
        const reading = inFlight.length < maxInFlight ? this.backlog.shift() : undefined;
        if (!reading) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          this.wake = undefined;
          continue;
        }
        inFlight.push({ sequence: ++sequence, reading });
        // Activity is current at sending, not at reading: a buffered reading carries the latest traffic.
        const beat = create(AgentHeartbeatSchema, reading.heartbeat);
        beat.sequence = sequence;
        beat.workloads = (this.o.workloads?.activity() ?? []).map((a) => create(WorkloadActivitySchema, a));
        send({ case: "heartbeat", value: beat });
      }
      if (!changed) await acks;
      return changed;
    } finally {
      if (this.live === send) this.live = undefined;
      signal.removeEventListener("abort", onAbort);
      // What the server never acked is sent again on the next stream, in order, within the bound.
      this.backlog.unshift(...inFlight.map((f) => f.reading));
      this.trimBacklog();
      requests.close();
      stop.abort();
    }
  }
}

/** What a hello says of the GPUs, as one string to compare readings by. */
function inventoryKey(gpus: AgentReading["gpus"]): string {
  return gpus
    .map((g) =>
      [
        g.uuid,
        g.index,
        g.model,
        g.memoryBytes,
        g.driverVersion,
        g.cudaVersion,
        g.migEnabled,
        g.parentUuid,
        g.migProfile,
        g.migDeviceIndex,
        g.gpuInstanceId,
        g.computeInstanceId,
      ].join("|"),
    )
    .join("\n");
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
