import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type {
  CordonHostRequest,
  CreateHostRequest,
  DeleteHostRequest,
  DrainHostRequest,
  GetHostRequest,
  StreamHeartbeatsRequest,
  WatchHostsRequest,
  HeartbeatRequest,
  HostService,
  ListHostsRequest,
  UncordonHostRequest,
  UpdateHostRequest,
} from "../../gen/remotegpu/v1/host_pb.js";
import { durationFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { StreamHeartbeatsResponseSchema, WatchHostsResponseSchema } from "../../gen/remotegpu/v1/host_pb.js";
import { WatchEventType } from "../../gen/remotegpu/v1/common_pb.js";
import {
  WorkloadState as WorkloadStateMessage,
  type AgentCommandSchema,
  type AgentHello as AgentHelloMessage,
  type EnvironmentLogReport,
  type EnvironmentStatusReport,
} from "../../gen/remotegpu/v1/agent_pb.js";
import { LogStream, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import type { LogStreamName } from "../environment/environment.js";
import type { LogLineRecord } from "../environment/environment-logs.js";
import type { WorkloadReport } from "../environment/environment-reconciler.js";
import type { AgentCommand } from "../host/agent-sessions.js";
import { Channel } from "../platform/channel.js";
import type { WorkloadState } from "../runtime/runtime.js";
import { checkId } from "../ids.js";
import { assertMaySpeakForHost } from "../auth/authenticator.js";
import { InvalidArgumentError } from "../errors.js";
import type { AgentHello, AgentSessions } from "../host/agent-sessions.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { HostPatch, HostRegistry } from "../host/host-registry.js";
import { Violations, checkString, parseLabelSelector, required, toSafeNumber } from "../validation.js";
import { auditNote, callerOf } from "./context.js";
import {
  capacityFromMessage,
  dateFromMessage,
  gpuMetricsFromMessage,
  gpuToMessage,
  hostRuntime,
  hostSampleFromMessage,
  hostStatus,
  hostToMessage,
} from "./convert.js";

type Impl = Partial<ServiceImpl<typeof HostService>>;

/** Where an agent's reports about its workloads go (the environment reconciler and log store). */
export interface WorkloadReports {
  connected(hostId: string, runningEnvironmentIds: string[]): Promise<void>;
  status(hostId: string, report: WorkloadReport): Promise<void>;
  logs(hostId: string, environmentId: string, lines: LogLineRecord[]): Promise<void>;
  /** Traffic on an environment's ports (idle auto-stop). */
  traffic(environmentId: string, time: Date): void;
}

const IGNORED_REPORTS: WorkloadReports = { connected: async () => undefined, status: async () => undefined, logs: async () => undefined, traffic: () => undefined };

const WORKLOAD_STATES: Record<number, WorkloadState> = {
  [WorkloadStateMessage.STARTING]: "STARTING",
  [WorkloadStateMessage.RUNNING]: "RUNNING",
  [WorkloadStateMessage.STOPPED]: "STOPPED",
  [WorkloadStateMessage.FAILED]: "FAILED",
  [WorkloadStateMessage.REMOVED]: "REMOVED",
};

const STREAMS: Record<number, LogStreamName> = { [LogStream.STDOUT]: "STDOUT", [LogStream.STDERR]: "STDERR", [LogStream.SYSTEM]: "SYSTEM" };

/** A server-side command as the agent protocol spells it. */
function commandToMessage(c: AgentCommand): MessageInitShape<typeof AgentCommandSchema> {
  switch (c.kind) {
    case "drain":
      return { commandId: c.id, command: { case: "drain", value: {} } };
    case "stop":
      return { commandId: c.id, command: { case: "stopEnvironment", value: { environmentId: c.environmentId, generation: BigInt(c.generation) } } };
    case "remove":
      return { commandId: c.id, command: { case: "removeEnvironment", value: { environmentId: c.environmentId, generation: BigInt(c.generation) } } };
    case "run": {
      const s = c.spec;
      return {
        commandId: c.id,
        command: {
          case: "runEnvironment",
          value: {
            environmentId: s.environmentId,
            workspaceId: s.workspaceId,
            image: s.image,
            command: s.command,
            args: s.args,
            env: s.env,
            gpuUuids: s.gpuUuids,
            gpuIndices: s.gpuIndices,
            ports: s.ports.map((p) => ({ name: p.name, containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol === "HTTP" ? PortProtocol.HTTP : PortProtocol.TCP })),
            cpuMillicores: BigInt(s.cpuMillicores),
            memoryBytes: BigInt(s.memoryBytes),
            sshPublicKeys: s.sshPublicKeys,
            generation: BigInt(s.generation),
          },
        },
      };
    }
  }
}

const HELLO_TIMEOUT_MS = 30_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Oldest buffered reading an agent may deliver with its own time. */
const MAX_BACKLOG_AGE_MS = 6 * 3_600_000;

/** Changes held for a slow WatchHosts caller before its watch is ended (it can watch again). */
const WATCH_BUFFER = 1000;

/** HostService over Connect/gRPC: convert, call the registry, convert back. */
export class HostHandler implements Impl {
  constructor(
    private readonly hosts: HostRegistry,
    private readonly agents: AgentSessions,
    private readonly clock: Clock,
    private readonly heartbeatIntervalMs: number,
    private readonly logger: Logger,
    private readonly workloads: WorkloadReports = IGNORED_REPORTS,
  ) {}

  private async reportStatus(hostId: string, r: EnvironmentStatusReport): Promise<void> {
    const state = WORKLOAD_STATES[r.state];
    if (!state) throw InvalidArgumentError.field("environment_status.state", `unknown value ${r.state}`);
    const v = new Violations();
    checkString(v, "environment_status.message", r.message.slice(0, 4096), { max: 4096 });
    const id = checkId("environment_status.environment_id", r.environmentId);
    const generation = toSafeNumber(v, "environment_status.generation", r.generation);
    v.throwIfAny();
    const message = r.exitCode === undefined || r.message.includes(String(r.exitCode)) ? r.message : `${r.message} (exit code ${r.exitCode})`;
    await this.workloads.status(hostId, { environmentId: id, generation, state, message });
  }

  private async reportLogs(hostId: string, r: EnvironmentLogReport): Promise<void> {
    const id = checkId("environment_logs.environment_id", r.environmentId);
    if (r.lines.length > 10_000) throw InvalidArgumentError.field("environment_logs.lines", "at most 10000 per report");
    const v = new Violations();
    const lines = r.lines.map((l) => ({ time: l.time ? dateFromMessage(v, "environment_logs.lines.time", l.time) : this.clock.now(), stream: STREAMS[l.stream] ?? "STDOUT", text: l.text }));
    v.throwIfAny();
    await this.workloads.logs(hostId, id, lines);
  }

  async createHost(req: CreateHostRequest, ctx: HandlerContext) {
    const v = new Violations();
    const input = {
      name: req.name,
      address: req.address,
      labels: req.labels,
      ...capacityFromMessage(v, "capacity", req.capacity),
      runtime: hostRuntime.toDomain(req.runtime, "runtime", v) ?? "AGENT",
      kubernetesNodeName: req.kubernetesNodeName,
    };
    v.throwIfAny();
    const { view, agentToken } = await this.hosts.create(input, auditNote(ctx));
    return { host: hostToMessage(view), agentToken };
  }

  async getHost(req: GetHostRequest) {
    return { host: hostToMessage(await this.hosts.get(req.id)) };
  }

  async listHosts(req: ListHostsRequest) {
    const v = new Violations();
    const status = hostStatus.toDomain(req.status, "status", v);
    v.throwIfAny();
    const filter = { status, labels: parseLabelSelector("label_selector", req.labelSelector), schedulable: req.schedulable };
    const page = await this.hosts.list(filter, req.pageSize, req.pageToken);
    return { hosts: page.items.map(hostToMessage), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  async updateHost(req: UpdateHostRequest, ctx: HandlerContext) {
    const v = new Violations();
    const h = req.host;
    const paths = req.updateMask?.paths ?? [];
    if (!h) v.add("host", "required");
    const patch: HostPatch = {};
    for (const path of paths) {
      if (path === "address") patch.address = h?.address;
      else if (path === "labels") patch.labels = h?.labels;
      else if (path === "kubernetes_node_name") patch.kubernetesNodeName = h?.kubernetesNodeName;
      else if (path === "capacity") Object.assign(patch, capacityFromMessage(v, "host.capacity", h?.capacity));
      else if (path === "runtime") patch.runtime = hostRuntime.toDomain(h?.runtime ?? 0, "host.runtime", v) ?? required(v, "host.runtime");
      else if (path === "status") patch.status = hostStatus.toDomain(h?.status ?? 0, "host.status", v) ?? required(v, "host.status");
    }
    v.throwIfAny();
    return { host: hostToMessage(await this.hosts.update(h!.id, patch, paths, auditNote(ctx))) };
  }

  async deleteHost(req: DeleteHostRequest, ctx: HandlerContext) {
    await this.hosts.delete(req.id, auditNote(ctx));
    return {};
  }

  async cordonHost(req: CordonHostRequest, ctx: HandlerContext) {
    return { host: hostToMessage(await this.hosts.cordon(req.id, auditNote(ctx))) };
  }

  async uncordonHost(req: UncordonHostRequest, ctx: HandlerContext) {
    return { host: hostToMessage(await this.hosts.uncordon(req.id, auditNote(ctx))) };
  }

  async drainHost(req: DrainHostRequest, ctx: HandlerContext) {
    const report = await this.hosts.drain(req.id, auditNote(ctx));
    this.agents.send(report.view.host.id, { kind: "drain" });
    return {
      host: hostToMessage(report.view),
      allocatedGpus: report.allocatedGpus.map(gpuToMessage),
      environmentIds: report.environmentIds,
    };
  }

  async heartbeat(req: HeartbeatRequest, ctx: HandlerContext) {
    assertMaySpeakForHost(callerOf(ctx), req.hostId);
    if (req.gpuSamples.length > 64) throw InvalidArgumentError.field("gpu_samples", "at most 64 samples");
    await this.hosts.heartbeat(req.hostId, req.agentVersion);
    const now = this.clock.now();
    const gpus = req.gpuSamples.map((g) => ({ gpuUuid: g.gpuUuid, index: g.index, time: now, metrics: gpuMetricsFromMessage(g.metrics) }));
    await this.agents.report(req.hostId.toLowerCase(), req.hostSample && hostSampleFromMessage(req.hostSample), gpus);
    return {
      host: hostToMessage(await this.hosts.get(req.hostId)),
      heartbeatInterval: durationFromMs(this.heartbeatIntervalMs),
      leaseTtl: durationFromMs(this.hosts.heartbeatGraceMs),
    };
  }

  /**
   * When a reading was taken: the agent's word for readings it buffered while disconnected, unless
   * that is in the future or older than an agent keeps readings (a wrong clock); then now.
   */
  private sampleTime(sent: Timestamp | undefined): Date {
    const now = this.clock.now();
    if (!sent) return now;
    const t = dateFromMessage(new Violations(), "sample_time", sent); // an impossible time reads as 1970: too old
    return t > now || now.getTime() - t.getTime() > MAX_BACKLOG_AGE_MS ? now : t;
  }

  /** Current hosts first (INITIAL), then every change, until the caller cancels. */
  async *watchHosts(req: WatchHostsRequest, ctx: HandlerContext): AsyncIterable<MessageInitShape<typeof WatchHostsResponseSchema>> {
    const only = req.hostId;
    // Subscribed before the initial state is read, so no change falls between the two.
    const changes = this.hosts.changes.subscribe(
      { accept: (c) => !only || c.view.host.id === only, capacity: WATCH_BUFFER, overflow: "fail" },
      ctx.signal,
    );
    if (only) {
      yield { type: WatchEventType.INITIAL, host: hostToMessage(await this.hosts.get(only)) };
    } else {
      let token = "";
      do {
        const page = await this.hosts.list({ labels: {} }, 1000, token);
        for (const view of page.items) yield { type: WatchEventType.INITIAL, host: hostToMessage(view) };
        token = page.nextPageToken;
      } while (token);
    }
    for await (const { item } of changes) yield { type: EVENT_TYPES[item.type], host: hostToMessage(item.view) };
  }

  /** The agent stream: hello → welcome, then each heartbeat → ack, until the agent leaves or is fenced. */
  async *streamHeartbeats(
    requests: AsyncIterable<StreamHeartbeatsRequest>,
    ctx: HandlerContext,
  ): AsyncIterable<MessageInitShape<typeof StreamHeartbeatsResponseSchema>> {
    const caller = callerOf(ctx);
    const incoming = requests[Symbol.asyncIterator]();
    // A stream that never says who it is does not get to hold a slot.
    let timer: NodeJS.Timeout | undefined;
    const first = await Promise.race([
      incoming.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(InvalidArgumentError.field("hello", `none within ${HELLO_TIMEOUT_MS / 1000} s`)), HELLO_TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    if (first.done || first.value.message.case !== "hello") throw InvalidArgumentError.field("hello", "the first message must be a hello");
    const hello = first.value.message.value;
    assertMaySpeakForHost(caller, hello.hostId);
    const v = new Violations();
    const session = await this.agents.open(helloFromMessage(v, hello));
    this.logger.info({ hostId: session.hostId, sessionId: session.id, agentVersion: hello.agentVersion }, "agent connected");
    // What the loop below waits for, in the order it happened: a message from the agent, a command
    // for it, or the session's end. Each pending read has exactly one reaction attached, once:
    // racing the same long-pending promises on every message would pile reactions (and the messages
    // they resolved with) onto them for as long as the session lives.
    const events = new Channel<
      { from: "agent"; r: IteratorResult<StreamHeartbeatsRequest> } | { from: "server"; r: IteratorResult<AgentCommand> } | { from: "end"; error: unknown }
    >();
    const end = (error: unknown) => events.push({ from: "end", error });
    session.ended.addEventListener("abort", () => end(session.ended.reason), { once: true });
    const readAgent = () => void incoming.next().then((r) => events.push({ from: "agent", r }), end);
    try {
      await this.workloads.connected(session.hostId, hello.runningEnvironmentIds.slice(0, 1000));
      yield {
        message: {
          case: "welcome",
          value: {
            sessionId: session.id,
            settings: { heartbeatInterval: durationFromMs(session.heartbeatIntervalMs), leaseTtl: durationFromMs(session.leaseMs) },
          },
        },
      };
      const commands = session.outbox[Symbol.asyncIterator]();
      const readCommand = () => void commands.next().then((r) => events.push({ from: "server", r }), end);
      readAgent();
      readCommand();
      for await (const got of events) {
        if (got.from === "end") throw got.error;
        if (got.from === "server") {
          if (got.r.done) continue; // the outbox closes only as the session ends
          readCommand();
          yield { message: { case: "command", value: commandToMessage(got.r.value) } };
          continue;
        }
        readAgent();
        const next = got.r;
        if (next.done) return;
        const m = next.value.message;
        if (m.case === "hello") throw InvalidArgumentError.field("hello", "only the first message may be a hello");
        if (m.case === "commandResult") {
          this.logger.info({ hostId: session.hostId, command: m.value.commandId, ok: m.value.ok, message: m.value.message }, "agent command result");
          continue;
        }
        if (m.case === "environmentStatus") {
          await this.reportStatus(session.hostId, m.value);
          continue;
        }
        if (m.case === "environmentLogs") {
          await this.reportLogs(session.hostId, m.value);
          continue;
        }
        if (m.case !== "heartbeat") continue;
        if (m.value.gpus.length > 64) throw InvalidArgumentError.field("heartbeat.gpus", "at most 64 samples");
        const time = this.sampleTime(m.value.sampleTime);
        const gpus = m.value.gpus.map((g) => ({ gpuUuid: g.gpuUuid, index: g.index, time, metrics: gpuMetricsFromMessage(g.metrics) }));
        this.agents.heartbeat(session, m.value.sampleTime && time, m.value.host && hostSampleFromMessage(m.value.host), gpus);
        for (const w of m.value.workloads.slice(0, 1000)) {
          if (w.lastTrafficTime && UUID.test(w.environmentId)) this.workloads.traffic(w.environmentId, this.sampleTime(w.lastTrafficTime));
        }
        yield { message: { case: "ack", value: { sequence: m.value.sequence } } };
      }
    } finally {
      this.agents.close(session);
      this.logger.info({ hostId: session.hostId, sessionId: session.id }, "agent disconnected");
    }
  }
}

const EVENT_TYPES = { ADDED: WatchEventType.ADDED, MODIFIED: WatchEventType.MODIFIED, DELETED: WatchEventType.DELETED } as const;

function helloFromMessage(v: Violations, m: AgentHelloMessage): AgentHello {
  const hello = {
    hostId: m.hostId,
    agentVersion: m.agentVersion,
    ...capacityFromMessage(v, "hello.capacity", m.capacity),
    gpus: m.gpus.map((g, i) => ({
      index: g.index,
      uuid: g.uuid,
      model: g.model,
      memoryBytes: toSafeNumber(v, `hello.gpus[${i}].memory_bytes`, g.memoryBytes),
      driverVersion: g.driverVersion,
      cudaVersion: g.cudaVersion,
    })),
  };
  v.throwIfAny();
  return hello;
}
