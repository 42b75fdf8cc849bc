import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { AgentHeartbeat } from "../../gen/remotegpu/v1/agent_pb.js";
import type { StreamHeartbeatsRequest, StreamHeartbeatsResponseSchema } from "../../gen/remotegpu/v1/host_pb.js";
import { assertMaySpeakForHost } from "../auth/authenticator.js";
import type { Principal } from "../auth/principal.js";
import type { LogLineRecord } from "../environment/environment-logs.js";
import type { WorkloadReport } from "../environment/environment-reconciler.js";
import { InvalidArgumentError } from "../errors.js";
import type { AgentCommand, AgentSession, AgentSessions } from "../host/agent-sessions.js";
import { isId } from "../ids.js";
import { Channel } from "../platform/channel.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import { Violations } from "../validation.js";
import { commandToMessage, helloFromMessage, logReportFromMessage, statusReportFromMessage, volumesFromMessage } from "./agent-convert.js";
import { dateFromMessage, gpuMetricsFromMessage, hostSampleFromMessage } from "./convert.js";

/** Where an agent's reports about its workloads go (the environment reconciler and log store). */
export interface WorkloadReports {
  connected(hostId: string, runningEnvironmentIds: string[]): Promise<void>;
  status(hostId: string, report: WorkloadReport): Promise<void>;
  logs(hostId: string, environmentId: string, lines: LogLineRecord[]): Promise<void>;
  /** Traffic on an environment's ports (idle auto-stop). */
  traffic(environmentId: string, time: Date): void;
}

/** For a server without environments on agents: reports are dropped. */
export const IGNORED_REPORTS: WorkloadReports = {
  connected: async () => undefined,
  status: async () => undefined,
  logs: async () => undefined,
  traffic: () => undefined,
};

/** What a stream needs: the replica's agent sessions, where workload reports go, a clock and a logger. */
export interface AgentStreamDeps {
  agents: Pick<AgentSessions, "open" | "heartbeat" | "close">;
  workloads: WorkloadReports;
  clock: Clock;
  logger: Logger;
  /** Where each heartbeat's time from arrival to ack goes. */
  ackSeconds?: { observe(seconds: number): void };
}

type Response = MessageInitShape<typeof StreamHeartbeatsResponseSchema>;

/** What the loop waits for, in the order it happened. */
type Event =
  | { from: "agent"; r: IteratorResult<StreamHeartbeatsRequest> }
  | { from: "server"; r: IteratorResult<AgentCommand> }
  | { from: "end"; error: unknown };

// A stream that never says who it is does not get to hold a slot for long.
const HELLO_TIMEOUT_MS = 30_000;
/** Oldest buffered reading an agent may deliver with its own time. */
const MAX_BACKLOG_AGE_MS = 6 * 3_600_000;
/** Most samples (GPUs) and workloads one heartbeat may carry; the rest of the workloads are ignored. */
const MAX_GPU_SAMPLES = 64;
const MAX_WORKLOADS = 1000;

/**
 * One agent connection (HostService.StreamHeartbeats): hello → welcome, then each heartbeat → ack,
 * commands for the host down the stream, workload reports up, until the agent leaves or its session
 * ends (fenced by a newer one, the host deleted, the server stopping).
 */
export class AgentStream {
  private readonly incoming: AsyncIterator<StreamHeartbeatsRequest>;

  constructor(
    private readonly deps: AgentStreamDeps,
    private readonly caller: Principal,
    requests: AsyncIterable<StreamHeartbeatsRequest>,
  ) {
    this.incoming = requests[Symbol.asyncIterator]();
  }

  async *run(): AsyncGenerator<Response> {
    const { agents, workloads, logger } = this.deps;
    const hello = await this.hello();
    assertMaySpeakForHost(this.caller, hello.hostId);
    const session = await agents.open(helloFromMessage(hello));
    logger.info({ hostId: session.hostId, sessionId: session.id, agentVersion: hello.agentVersion }, "agent connected");
    // Each pending read has exactly one reaction attached, once, feeding one queue: racing the same
    // long-pending promises on every message would pile reactions (and the messages they resolved
    // with) onto them for as long as the session lives.
    const events = new Channel<Event>();
    const end = (error: unknown) => events.push({ from: "end", error });
    session.ended.addEventListener("abort", () => end(session.ended.reason), { once: true });
    const readAgent = () => void this.incoming.next().then((r) => events.push({ from: "agent", r }), end);
    try {
      await workloads.connected(session.hostId, hello.runningEnvironmentIds.slice(0, MAX_WORKLOADS));
      yield this.welcome(session);
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
        if (got.r.done) return;
        const answer = await this.receive(session, got.r.value);
        if (answer) yield answer;
      }
    } finally {
      agents.close(session);
      logger.info({ hostId: session.hostId, sessionId: session.id }, "agent disconnected");
    }
  }

  /** The first message, which must be a hello, within HELLO_TIMEOUT_MS. */
  private async hello() {
    let timer: NodeJS.Timeout | undefined;
    const first = await Promise.race([
      this.incoming.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(InvalidArgumentError.field("hello", `none within ${HELLO_TIMEOUT_MS / 1000} s`)), HELLO_TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    if (first.done || first.value.message.case !== "hello") throw InvalidArgumentError.field("hello", "the first message must be a hello");
    return first.value.message.value;
  }

  private welcome(session: AgentSession): Response {
    const settings = { heartbeatInterval: durationFromMs(session.heartbeatIntervalMs), leaseTtl: durationFromMs(session.leaseMs) };
    return { message: { case: "welcome", value: { sessionId: session.id, settings } } };
  }

  /** Handles one message after the hello; returns what to answer, if anything. */
  private async receive(session: AgentSession, { message: m }: StreamHeartbeatsRequest): Promise<Response | undefined> {
    switch (m.case) {
      case "hello":
        throw InvalidArgumentError.field("hello", "only the first message may be a hello");
      case "commandResult": {
        const { commandId: command, ok, message } = m.value;
        this.deps.logger.info({ hostId: session.hostId, command, ok, message }, "agent command result");
        return undefined;
      }
      case "environmentStatus":
        await this.deps.workloads.status(session.hostId, statusReportFromMessage(m.value));
        return undefined;
      case "environmentLogs": {
        const { environmentId, lines } = logReportFromMessage(m.value, this.deps.clock.now());
        await this.deps.workloads.logs(session.hostId, environmentId, lines);
        return undefined;
      }
      case "heartbeat": {
        const arrived = performance.now();
        this.heartbeat(session, m.value);
        this.deps.ackSeconds?.observe((performance.now() - arrived) / 1000);
        return { message: { case: "ack", value: { sequence: m.value.sequence } } };
      }
      default:
        return undefined; // a message of a newer agent this server does not know yet
    }
  }

  private heartbeat(session: AgentSession, beat: AgentHeartbeat): void {
    if (beat.gpus.length > MAX_GPU_SAMPLES) throw InvalidArgumentError.field("heartbeat.gpus", `at most ${MAX_GPU_SAMPLES} samples`);
    const time = this.sampleTime(beat.sampleTime);
    const gpus = beat.gpus.map((g) => ({ gpuUuid: g.gpuUuid, index: g.index, time, metrics: gpuMetricsFromMessage(g.metrics) }));
    const volumes = volumesFromMessage(beat);
    this.deps.agents.heartbeat(session, beat.sampleTime && time, beat.host && hostSampleFromMessage(beat.host), gpus, volumes);
    for (const w of beat.workloads.slice(0, MAX_WORKLOADS)) {
      if (!w.lastTrafficTime || !isId(w.environmentId)) continue;
      this.deps.workloads.traffic(w.environmentId.toLowerCase(), this.sampleTime(w.lastTrafficTime));
    }
  }

  /**
   * When a reading was taken: the agent's word for readings it buffered while disconnected, unless
   * that is in the future or older than an agent keeps readings (a wrong clock); then now.
   */
  private sampleTime(sent: Timestamp | undefined): Date {
    const now = this.deps.clock.now();
    if (!sent) return now;
    const t = dateFromMessage(new Violations(), "sample_time", sent); // an impossible time reads as 1970: too old
    return t > now || now.getTime() - t.getTime() > MAX_BACKLOG_AGE_MS ? now : t;
  }
}
