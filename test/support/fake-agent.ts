import type { GpuInventoryItemSchema } from "../../gen/remotegpu/v1/agent_pb.js";
import { strict as assert } from "node:assert";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { HostService, type StreamHeartbeatsRequestSchema, type StreamHeartbeatsResponse } from "../../gen/remotegpu/v1/host_pb.js";
import { Channel } from "../../src/platform/channel.js";
import type { TestServer } from "./server.js";

type Req = MessageInitShape<typeof StreamHeartbeatsRequestSchema>;
const GiB = 1n << 30n;

/** An agent's side of StreamHeartbeats, driven step by step. */
export class FakeAgent {
  readonly requests = new Channel<Req>();
  private readonly responses: AsyncIterator<StreamHeartbeatsResponse>;
  private sequence = 0n;

  constructor(server: Pick<TestServer, "client">, token: string) {
    this.responses = server.client(HostService, { token, protocol: "grpc" }).streamHeartbeats(this.requests)[Symbol.asyncIterator]();
  }

  async hello(
    hostId: string,
    gpus: ({ index: number; uuid: string } & MessageInitShape<typeof GpuInventoryItemSchema>)[],
    /** Why it cannot run environments, as an agent without a container engine says (default: it can). */
    { runtimeUnavailableReason = "" }: { runtimeUnavailableReason?: string } = {},
  ) {
    this.requests.push({
      message: {
        case: "hello",
        value: {
          hostId,
          agentVersion: "0.1.0-test",
          capacity: { cpuMillicores: 32000n, memoryBytes: 256n * GiB, diskBytes: 1000n * GiB },
          gpus: gpus.map((g) => ({
            model: "NVIDIA H100 80GB HBM3",
            memoryBytes: 80n * GiB,
            driverVersion: "550.90.07",
            cudaVersion: "12.4",
            ...g,
          })),
          runtimeUnavailableReason,
        },
      },
    });
    return this.next();
  }

  async beat(
    samples: { uuid: string; index: number; util?: number; xid?: number; temp?: number; memUsed?: bigint }[] = [],
    sampleTime?: Timestamp,
  ) {
    const sequence = ++this.sequence;
    this.requests.push({
      message: {
        case: "heartbeat",
        value: {
          sequence,
          sampleTime,
          host: { cpuUtilizationPercent: 3 },
          gpus: samples.map((s) => ({
            gpuUuid: s.uuid,
            index: s.index,
            metrics: { gpuUtilizationPercent: s.util, lastXid: s.xid, temperatureCelsius: s.temp, memoryUsedBytes: s.memUsed },
          })),
        },
      },
    });
    const res = await this.next();
    assert.equal(res.message.case, "ack");
    assert.equal(res.message.value.sequence, sequence);
  }

  async next(): Promise<StreamHeartbeatsResponse> {
    const r = await this.responses.next();
    if (r.done) throw new Error("stream ended");
    return r.value;
  }

  close() {
    this.requests.close();
  }
}
