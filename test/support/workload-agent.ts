import type { GpuInventoryItemSchema } from "../../gen/remotegpu/v1/agent_pb.js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { WorkloadState, type AgentCommand } from "../../gen/remotegpu/v1/agent_pb.js";
import { LogStream } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService, StreamHeartbeatsRequestSchema, type StreamHeartbeatsRequest } from "../../gen/remotegpu/v1/host_pb.js";
import { Channel } from "../../src/platform/channel.js";
import type { TestServer } from "./server.js";

const GiB = 1n << 30n;

/** What the scripted agent does with a run command: report RUNNING (default), FAILED, or nothing. */
export type RunBehaviour = "run" | "fail" | "ignore";

/**
 * An agent on a stream that plays the runtime's part: it answers run/stop/remove commands with the
 * status reports a real agent would send, and remembers which workloads it runs.
 */
export class WorkloadAgent {
  readonly commands: AgentCommand[] = [];
  /** Environment id → generation it runs. */
  readonly running: Map<string, bigint>;
  behaviour: RunBehaviour = "run";
  private sequence = 0n;
  private readonly acks = new Map<bigint, () => void>();
  private readonly requests = new Channel<StreamHeartbeatsRequest>();
  /** Resolves when the stream ended, however it ended (a real agent would then reconnect). */
  readonly ended: Promise<void>;
  private welcomed!: () => void;
  readonly welcome = new Promise<void>((resolve) => (this.welcomed = resolve));

  constructor(
    server: Pick<TestServer, "client">,
    token: string,
    readonly hostId: string,
    gpus: ({ index: number; uuid: string } & MessageInitShape<typeof GpuInventoryItemSchema>)[],
    /** What it runs already (environment id → generation), as an agent that reconnects. */
    running: Map<string, bigint> = new Map(),
    /**
     * What its hello says it can do: run containers (default: host processes only), or nothing, and
     * why (default: "", it can run environments).
     */
    {
      containersSupported = false,
      runtimeUnavailableReason = "",
    }: { containersSupported?: boolean; runtimeUnavailableReason?: string } = {},
  ) {
    this.running = new Map(running);
    const runningIds = [...running.keys()];
    const responses = server.client(HostService, { token, protocol: "grpc" }).streamHeartbeats(this.requests);
    this.send({
      case: "hello",
      value: {
        hostId,
        agentVersion: "0.1.0-test",
        capacity: { cpuMillicores: 64000n, memoryBytes: 512n * GiB, diskBytes: 4000n * GiB },
        gpus: gpus.map((g) => ({ model: "NVIDIA H100 80GB HBM3", memoryBytes: 80n * GiB, ...g })),
        runningEnvironmentIds: runningIds,
        containersSupported,
        runtimeUnavailableReason,
      },
    });
    this.ended = (async () => {
      for await (const res of responses) {
        if (res.message.case === "welcome") this.welcomed();
        if (res.message.case === "command") this.handle(res.message.value);
        if (res.message.case === "ack") this.acks.get(res.message.value.sequence)?.();
      }
    })().catch(() => undefined);
  }

  /** Sends a heartbeat, which keeps the host ONLINE at the server's (test) clock; resolves when the server acked it. */
  beat(
    gpus: { uuid: string; index: number; util: number }[] = [],
    traffic: string[] = [],
    /** What each environment's volume uses, as the agent measures it now and then. */
    volumes: { environmentId: string; usedBytes: bigint }[] = [],
  ): Promise<void> {
    const acked = new Promise<void>((resolve) => this.acks.set(this.sequence + 1n, resolve));
    this.send({
      case: "heartbeat",
      value: {
        sequence: ++this.sequence,
        host: { cpuUtilizationPercent: 1 },
        gpus: gpus.map((g) => ({ gpuUuid: g.uuid, index: g.index, metrics: { gpuUtilizationPercent: g.util } })),
        workloads: traffic.map((environmentId) => ({ environmentId, lastTrafficTime: timestampNow() })),
        volumes: volumes.map((v) => ({ ...v, sampleTime: timestampNow() })),
      },
    });
    return acked;
  }

  /** Sends output lines of an environment up the stream. */
  log(environmentId: string, ...texts: string[]): void {
    this.send({
      case: "environmentLogs",
      value: { environmentId, lines: texts.map((text) => ({ time: timestampNow(), stream: LogStream.STDOUT, text })) },
    });
  }

  report(environmentId: string, generation: bigint, state: WorkloadState, message = ""): void {
    this.send({ case: "environmentStatus", value: { environmentId, generation, state, message, time: timestampNow() } });
  }

  /** Ends the stream, as a dead agent would. */
  async close(): Promise<void> {
    this.requests.close();
    await this.ended;
  }

  private handle(c: AgentCommand): void {
    this.commands.push(c);
    const cmd = c.command;
    if (cmd.case === "runEnvironment") {
      const { environmentId, generation } = cmd.value;
      if (this.behaviour === "ignore") return;
      // Like the real agent, a newer run first ends the older workload, and says so.
      const older = this.running.get(environmentId);
      if (older !== undefined && older < generation)
        this.report(environmentId, older, WorkloadState.STOPPED, `replaced by generation ${generation}`);
      this.report(environmentId, generation, WorkloadState.STARTING);
      if (this.behaviour === "fail") {
        this.report(environmentId, generation, WorkloadState.FAILED, "exited with code 3");
        return;
      }
      this.running.set(environmentId, generation);
      this.report(environmentId, generation, WorkloadState.RUNNING);
    } else if (cmd.case === "stopEnvironment") {
      const generation = bigMax(this.running.get(cmd.value.environmentId) ?? 0n, cmd.value.generation);
      this.running.delete(cmd.value.environmentId);
      this.report(cmd.value.environmentId, generation, WorkloadState.STOPPED, "stopped");
    } else if (cmd.case === "removeEnvironment") {
      const generation = bigMax(this.running.get(cmd.value.environmentId) ?? 0n, cmd.value.generation);
      this.running.delete(cmd.value.environmentId);
      this.report(cmd.value.environmentId, generation, WorkloadState.REMOVED, "removed");
    }
    this.send({ case: "commandResult", value: { commandId: c.commandId, ok: true } });
  }

  private send(message: MessageInitShape<typeof StreamHeartbeatsRequestSchema>["message"]): void {
    this.requests.push(create(StreamHeartbeatsRequestSchema, { message }));
  }
}

const bigMax = (a: bigint, b: bigint) => (a > b ? a : b);
