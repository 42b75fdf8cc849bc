import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AgentSession,
  GpuInventoryItemSchema,
  GpuMetricsSchema,
  HostSampleSchema,
  LogStream,
  PortProtocol,
  WorkloadState,
  type AgentCommand,
  type RunEnvironmentCommand,
} from "@remotegpu/sdk";
import type { Logger } from "./logger.js";
import type { SshServer } from "./ssh-server.js";
import { toMessageInit, type GpuInventoryEntry, type GpuSampleRecord, type HostSampleRecord } from "./readings.js";
import type { StatusReport, VolumeUsage, WorkloadEvents, WorkloadLogLine, Workloads, WorkloadSpec } from "./workloads.js";

/** What the connection needs of the runtime. */
export type WorkloadRunner = Pick<
  Workloads,
  "run" | "stop" | "remove" | "running" | "activity" | "containersSupported" | "volumeUsage" | "runtimeUnavailableReason"
>;

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
  token: string | (() => string);
  agentVersion: string;
  /** Reads the GPUs and the host once; given the heartbeat period. */
  read: (periodMs: number) => Promise<Reading>;
  capacity: { cpuMillicores: number; memoryBytes: number; diskBytes: number };
  logger: Logger;
  /** Heartbeat period; unset follows what the server asks for. */
  intervalMs?: number;
  /** Readings kept while disconnected (the oldest go first). @default 360 */
  bufferSize?: number;
  /** First reconnect delay; doubles per failure, with jitter. @default 500 */
  initialBackoffMs?: number;
  /** Longest reconnect delay (see the SDK's AgentSessionOptions). @default 5000 */
  maxBackoffMs?: number;
  /**
   * Runs the environments the control plane sends; its events must reach this connection's
   * `status` and `logs`. @default none: run, stop and remove commands fail
   */
  workloads?: WorkloadRunner;
  /** Log lines kept while disconnected (the oldest go first). @default 2000 */
  logBufferLines?: number;
  /** How often the workloads' volumes are measured; the next heartbeat carries the figures. @default never */
  volumeSampleMs?: number;
  /** Serves SSH for the environments on tunnels the control plane asks for. @default none: tunnels are refused */
  ssh?: Pick<SshServer, "open">;
}

/**
 * RemoteGPU's agent on the SDK's AgentSession (one implementation of the stream, its reconnects and
 * its buffering): this class only turns the agent's readings and workload events into messages and
 * the control plane's commands into Workloads calls.
 */
export class AgentConnection implements WorkloadEvents {
  private readonly session: AgentSession;

  constructor(o: AgentOptions) {
    const w = o.workloads;
    let measuredAt = 0;
    this.session = new AgentSession({
      servers: o.servers,
      hostId: o.hostId,
      token: o.token,
      agentVersion: o.agentVersion,
      capacity: {
        cpuMillicores: BigInt(o.capacity.cpuMillicores),
        memoryBytes: BigInt(o.capacity.memoryBytes),
        diskBytes: BigInt(o.capacity.diskBytes),
      },
      read: async (periodMs) => {
        const r = await o.read(periodMs);
        let volumes: VolumeUsage[] = [];
        if (w && o.volumeSampleMs && Date.now() - measuredAt >= o.volumeSampleMs) {
          measuredAt = Date.now();
          volumes = await w.volumeUsage();
        }
        return { gpus: r.inventory.map((g) => toMessageInit(GpuInventoryItemSchema, g)), heartbeat: heartbeat(r, volumes) };
      },
      intervalMs: o.intervalMs,
      bufferSize: o.bufferSize,
      initialBackoffMs: o.initialBackoffMs,
      maxBackoffMs: o.maxBackoffMs,
      logBufferLines: o.logBufferLines,
      logger: o.logger,
      workloads: w && {
        execute: (command, server) => {
          const c = command.command;
          if (c.case !== "openSshTunnel") return execute(w, command);
          return o.ssh ? o.ssh.open(c.value, server) : Promise.resolve({ ok: false, message: "this agent serves no SSH" });
        },
        running: () => w.running(),
        containersSupported: w.containersSupported,
        runtimeUnavailableReason: w.runtimeUnavailableReason,
        activity: () => w.activity().map((a) => ({ environmentId: a.environmentId, lastTrafficTime: timestampFromDate(a.lastTraffic) })),
      },
    });
  }

  /** Runs until `signal` aborts; rejects when the server refuses this agent's identity. */
  run(signal: AbortSignal): Promise<void> {
    return this.session.run(signal);
  }

  /** Workload events: sent up the stream, or kept for the next one. */
  status(report: StatusReport): void {
    this.session.reportStatus(statusToMessage(report));
  }

  logs(environmentId: string, lines: WorkloadLogLine[]): void {
    this.session.reportLogs(environmentId, lines.map(lineToMessage));
  }
}

/** Carries out a command of the control plane on the workloads. */
async function execute(w: WorkloadRunner, command: AgentCommand): Promise<{ ok: boolean; message: string }> {
  const c = command.command;
  switch (c.case) {
    case "drain":
      return { ok: true, message: `draining; ${w.running().length} environments still running` };
    case "runEnvironment":
      return w.run(workloadSpec(c.value));
    case "stopEnvironment":
      await w.stop(c.value.environmentId, Number(c.value.generation));
      return { ok: true, message: "stopped" };
    case "removeEnvironment":
      await w.remove(c.value.environmentId, Number(c.value.generation));
      return { ok: true, message: "removed" };
    default:
      return { ok: false, message: "unknown command" };
  }
}

function heartbeat(r: Reading, volumes: VolumeUsage[]) {
  return {
    volumes: volumes.map((v) => ({
      environmentId: v.environmentId,
      usedBytes: BigInt(v.usedBytes),
      sampleTime: timestampFromDate(v.time),
    })),
    sampleTime: timestampFromDate(r.time),
    host: toMessageInit(HostSampleSchema, r.host),
    gpus: r.samples.map((s) => ({
      gpuUuid: s.gpuUuid,
      index: s.index,
      sampleTime: timestampFromDate(s.time),
      metrics: toMessageInit(GpuMetricsSchema, s.metrics),
    })),
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
    ports: c.ports.map((p) => ({
      name: p.name,
      containerPort: p.containerPort,
      hostPort: p.hostPort,
      protocol: p.protocol === PortProtocol.HTTP ? "HTTP" : "TCP",
    })),
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
