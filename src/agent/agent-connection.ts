import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { WorkloadState, type AgentCommand, type RunEnvironmentCommand } from "../../gen/remotegpu/v1/agent_pb.js";
import { LogStream, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService, StreamHeartbeatsRequestSchema, type StreamHeartbeatsRequest } from "../../gen/remotegpu/v1/host_pb.js";
import { Channel } from "../platform/channel.js";
import type { Logger } from "../platform/logger.js";
import { gpuMetricsToMessage, hostSampleToMessage } from "../rpc/convert.js";
import type { GpuSampleRecord, HostSampleRecord } from "../telemetry/latest-samples.js";
import type { GpuInventoryEntry } from "./nvidia-smi.js";
import type { StatusReport, WorkloadEvents, WorkloadLogLine, Workloads, WorkloadSpec } from "./workloads.js";

/** What the connection needs of the runtime. */
export type WorkloadRunner = Pick<Workloads, "run" | "stop" | "remove" | "running" | "activity" | "containersSupported">;

export interface Reading {
  inventory: GpuInventoryEntry[];
  samples: GpuSampleRecord[];
  host: HostSampleRecord;
  time: Date;
}

export interface AgentOptions {
  /** Control-plane base URLs, tried in turn. */
  servers: string[];
  hostId: string;
  token: string;
  agentVersion: string;
  /** Reads the GPUs and the host once. */
  read: () => Promise<Reading>;
  capacity: { cpuMillicores: number; memoryBytes: number; diskBytes: number };
  logger: Logger;
  /** Heartbeat period; unset follows what the server asks for. */
  intervalMs?: number;
  /** Readings kept while disconnected (the oldest go first). @default 360 */
  bufferSize?: number;
  /** First reconnect delay; doubles per failure, with jitter. @default 500 */
  initialBackoffMs?: number;
  /** @default 30000 */
  maxBackoffMs?: number;
  /**
   * Runs the environments the control plane sends; its events must reach this connection's
   * `status` and `logs`. @default none: run, stop and remove commands fail
   */
  workloads?: WorkloadRunner;
  /** Log lines kept while disconnected (the oldest go first). @default 2000 */
  logBufferLines?: number;
}

const DEFAULT_INTERVAL_MS = 10_000;

type Outgoing = MessageInitShape<typeof StreamHeartbeatsRequestSchema>["message"];

/**
 * The agent's side of StreamHeartbeats: takes readings on a timer whether or not it is connected,
 * keeps a bounded backlog, and delivers it in order over a stream it reconnects (with exponential
 * backoff and jitter, rotating through the servers) whenever it breaks. Readings sent but not yet
 * acked go back to the backlog when a stream dies, so a reconnect loses nothing that fit.
 */
export class AgentConnection implements WorkloadEvents {
  private backlog: Reading[] = [];
  /** Sends on the current stream; unset while disconnected (and before the welcome). */
  private live?: (message: Outgoing) => void;
  /** While disconnected: the latest status per environment, and the newest log lines. */
  private pendingStatus = new Map<string, StatusReport>();
  private pendingLogs: { environmentId: string; line: WorkloadLogLine }[] = [];
  private wake?: () => void;
  private intervalMs: number;
  private timer?: NodeJS.Timeout;
  private inventory: GpuInventoryEntry[] = [];

  constructor(private readonly o: AgentOptions) {
    this.intervalMs = o.intervalMs ?? DEFAULT_INTERVAL_MS;
  }

  /** Runs until `signal` aborts; rejects when the server refuses this agent's identity. */
  async run(signal: AbortSignal): Promise<void> {
    await this.takeReading();
    this.schedule();
    signal.addEventListener("abort", () => this.wake?.(), { once: true });
    let failures = 0;
    for (let attempt = 0; !signal.aborted; attempt++) {
      const server = this.o.servers[attempt % this.o.servers.length]!;
      let fenced = false;
      try {
        await this.session(server, signal, () => (failures = 0));
      } catch (err) {
        const e = ConnectError.from(err);
        // A wrong token or host id will not fix itself: stop and say so.
        if (e.code === Code.Unauthenticated || e.code === Code.PermissionDenied || e.code === Code.NotFound) throw e;
        fenced = e.code === Code.Aborted;
        if (!signal.aborted) this.o.logger.warn({ server, code: Code[e.code], error: e.rawMessage }, "agent stream ended");
      }
      if (signal.aborted) break;
      failures++;
      const max = this.o.maxBackoffMs ?? 30_000;
      const base = Math.min(max, (this.o.initialBackoffMs ?? 500) * 2 ** Math.min(failures - 1, 16));
      // A fenced session means another agent speaks for this host: do not fight it at full speed.
      const delay = fenced ? max : base / 2 + Math.random() * (base / 2);
      await sleep(delay, signal);
    }
    clearTimeout(this.timer);
  }

  /** Workload events: sent up the stream, or kept for the next one. */
  status(report: StatusReport): void {
    if (this.live) this.live({ case: "environmentStatus", value: statusToMessage(report) });
    else this.pendingStatus.set(report.environmentId, report);
  }

  logs(environmentId: string, lines: WorkloadLogLine[]): void {
    if (this.live) return this.live({ case: "environmentLogs", value: { environmentId, lines: lines.map(lineToMessage) } });
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
      const lines: WorkloadLogLine[] = [];
      for (; i < logs.length && logs[i]!.environmentId === environmentId; i++) lines.push(logs[i]!.line);
      this.logs(environmentId, lines);
    }
    for (const s of statuses) this.status(s);
  }

  /** Carries out a command; never throws (a failure is a result with ok false). */
  private async execute(command: AgentCommand): Promise<{ ok: boolean; message: string }> {
    const w = this.o.workloads;
    const c = command.command;
    this.o.logger.info({ command: command.commandId, kind: c.case }, "command from the control plane");
    try {
      if (c.case === "drain") return { ok: true, message: `draining; ${w?.running().length ?? 0} environments still running` };
      if (!w) return { ok: false, message: "this agent runs no workloads" };
      switch (c.case) {
        case "runEnvironment":
          return await w.run(workloadSpec(c.value));
        case "stopEnvironment":
          await w.stop(c.value.environmentId, Number(c.value.generation));
          return { ok: true, message: "stopped" };
        case "removeEnvironment":
          await w.remove(c.value.environmentId, Number(c.value.generation));
          return { ok: true, message: "removed" };
        default:
          return { ok: false, message: "unknown command" };
      }
    } catch (err) {
      this.o.logger.warn({ command: command.commandId, kind: c.case, err }, "command failed");
      return { ok: false, message: err instanceof Error ? err.message : String(err) };
    }
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.takeReading()
        .catch((err: unknown) => this.o.logger.error({ err }, "reading the GPUs failed"))
        .finally(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }

  private async takeReading(): Promise<void> {
    const reading = await this.o.read();
    this.inventory = reading.inventory;
    this.backlog.push(reading);
    this.trimBacklog();
    this.wake?.();
  }

  /** Drops the oldest readings beyond the bound. */
  private trimBacklog(): void {
    const max = this.o.bufferSize ?? 360;
    if (this.backlog.length > max) this.backlog.splice(0, this.backlog.length - max);
  }

  private async session(server: string, signal: AbortSignal, connected: () => void): Promise<void> {
    const auth: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${this.o.token}`);
      return next(req);
    };
    const client = createClient(HostService, createGrpcTransport({ baseUrl: server, interceptors: [auth] }));
    const requests = new Channel<StreamHeartbeatsRequest>();
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const responses = client.streamHeartbeats(requests, { signal: stop.signal })[Symbol.asyncIterator]();
    const inFlight: { sequence: bigint; reading: Reading }[] = [];
    const send = (message: Outgoing) => requests.push(create(StreamHeartbeatsRequestSchema, { message }));
    try {
      send({ case: "hello", value: this.hello() });
      const first = await responses.next();
      if (first.done || first.value.message.case !== "welcome") throw new ConnectError("the server sent no welcome", Code.Unavailable);
      const welcome = first.value.message.value;
      const asked = welcome.settings?.heartbeatInterval && durationMs(welcome.settings.heartbeatInterval);
      if (this.o.intervalMs === undefined && asked && asked !== this.intervalMs) {
        this.intervalMs = asked;
        clearTimeout(this.timer);
        this.schedule();
      }
      this.o.logger.info({ server, session: welcome.sessionId, intervalMs: this.intervalMs }, "agent connected");
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
            // Not awaited: a slow stop must not hold up acks; the Workloads order commands per environment.
            const commandId = m.value.commandId;
            void this.execute(m.value).then((result) => send({ case: "commandResult", value: { commandId, ...result } }));
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
        // Not more unacked readings than the backlog may hold: a server that stops acking gets no more.
        const reading = inFlight.length < maxInFlight ? this.backlog.shift() : undefined;
        if (!reading) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          this.wake = undefined;
          continue;
        }
        inFlight.push({ sequence: ++sequence, reading });
        requests.push(create(StreamHeartbeatsRequestSchema, { message: { case: "heartbeat", value: heartbeat(sequence, reading, this.o.workloads?.activity() ?? []) } }));
      }
      await acks;
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

  private hello() {
    return {
      hostId: this.o.hostId,
      agentVersion: this.o.agentVersion,
      capacity: {
        cpuMillicores: BigInt(this.o.capacity.cpuMillicores),
        memoryBytes: BigInt(this.o.capacity.memoryBytes),
        diskBytes: BigInt(this.o.capacity.diskBytes),
      },
      gpus: this.inventory.map((g) => ({ ...g, memoryBytes: BigInt(g.memoryBytes) })),
      runningEnvironmentIds: this.o.workloads?.running() ?? [],
      containersSupported: this.o.workloads?.containersSupported ?? false,
    };
  }
}

function heartbeat(sequence: bigint, r: Reading, activity: { environmentId: string; lastTraffic: Date }[]) {
  return {
    sequence,
    sampleTime: timestampFromDate(r.time),
    host: hostSampleToMessage(r.host),
    gpus: r.samples.map((s) => ({ gpuUuid: s.gpuUuid, index: s.index, sampleTime: timestampFromDate(s.time), metrics: gpuMetricsToMessage(s.metrics) })),
    // Current at sending, not at reading: a buffered reading still carries the latest traffic.
    workloads: activity.map((a) => ({ environmentId: a.environmentId, lastTrafficTime: timestampFromDate(a.lastTraffic) })),
  };
}

function workloadSpec(c: RunEnvironmentCommand): WorkloadSpec {
  return {
    environmentId: c.environmentId,
    workspaceId: c.workspaceId,
    image: c.image,
    command: c.command,
    args: c.args,
    env: { ...c.env },
    gpuUuids: c.gpuUuids,
    gpuIndices: c.gpuIndices,
    ports: c.ports.map((p) => ({ name: p.name, containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol === PortProtocol.HTTP ? "HTTP" : "TCP" })),
    cpuMillicores: Number(c.cpuMillicores),
    memoryBytes: Number(c.memoryBytes),
    generation: Number(c.generation),
  };
}

function statusToMessage(r: StatusReport) {
  return {
    environmentId: r.environmentId,
    state: WorkloadState[r.state],
    message: r.message,
    exitCode: r.exitCode,
    time: timestampFromDate(r.time),
    generation: BigInt(r.generation),
  };
}

function lineToMessage(l: WorkloadLogLine) {
  return { time: timestampFromDate(l.time), stream: LogStream[l.stream], text: l.text };
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
