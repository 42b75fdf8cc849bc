// The load generator: N simulated agents sharing HTTP/2 connections (--per-connection streams on
// each), each sending a hello (8 GPUs) and then heartbeats at a fixed rate; measures acks per
// second and ack latency.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { HostService, StreamHeartbeatsRequestSchema, type StreamHeartbeatsRequest } from "../../gen/remotegpu/v1/host_pb.js";
import { Channel } from "../../src/platform/channel.js";

const { values } = parseArgs({
  options: {
    target: { type: "string" },
    hosts: { type: "string" },
    rate: { type: "string", default: "1" },
    duration: { type: "string", default: "60" },
    warmup: { type: "string", default: "15" },
    gpus: { type: "string", default: "8" },
    "per-connection": { type: "string", default: "100" },
  },
});
const perConnection = Number(values["per-connection"]);
const hosts: { id: string; token: string }[] = JSON.parse(readFileSync(values.hosts!, "utf8"));
const periodMs = 1000 / Number(values.rate);
const gpuCount = Number(values.gpus);
const warmupMs = Number(values.warmup) * 1000;
const durationMs = Number(values.duration) * 1000;

let measuring = false;
let acked = 0;
let errors = 0;
const errorCodes: Record<string, number> = {};
let connected = 0;
const latencies: number[] = [];

function gpuSamples(host: number) {
  return Array.from({ length: gpuCount }, (_, i) => ({
    gpuUuid: `GPU-bench-${host}-${i}`,
    index: i,
    metrics: {
      gpuUtilizationPercent: Math.random() * 100,
      memoryUtilizationPercent: 30,
      memoryUsedBytes: 40n << 30n,
      memoryTotalBytes: 80n << 30n,
      temperatureCelsius: 55,
      powerDrawWatts: 420.5,
      powerLimitWatts: 700,
      smClockMhz: 1980,
      fanSpeedPercent: 40,
      eccCorrectedErrors: 0n,
      eccUncorrectedErrors: 0n,
    },
  }));
}

// One transport per connection, the connections spread over the targets (replicas); each call carries its own agent's token.
const targets = values.target!.split(",");
const transports = Array.from({ length: Math.ceil(hosts.length / perConnection) }, (_, i) =>
  createGrpcTransport({ baseUrl: targets[i % targets.length]! }),
);

async function agent(n: number, host: { id: string; token: string }, welcomed: () => void): Promise<void> {
  const client = createClient(HostService, transports[Math.floor(n / perConnection)]!);
  const requests = new Channel<StreamHeartbeatsRequest>();
  const sentAt = new Map<bigint, number>();
  const responses = client.streamHeartbeats(requests, { headers: { authorization: `Bearer ${host.token}` } });
  requests.push(
    create(StreamHeartbeatsRequestSchema, {
      message: {
        case: "hello",
        value: {
          hostId: host.id,
          agentVersion: "bench",
          gpus: Array.from({ length: gpuCount }, (_, i) => ({
            index: i,
            uuid: `GPU-bench-${n}-${i}`,
            model: "NVIDIA H100 80GB HBM3",
            memoryBytes: 80n << 30n,
          })),
        },
      },
    }),
  );
  let sequence = 0n;
  let timer: NodeJS.Timeout | undefined;
  try {
    for await (const res of responses) {
      if (res.message.case === "welcome") {
        connected++;
        welcomed();
        // Spread the agents over the period, as real hosts are.
        setTimeout(() => {
          timer = setInterval(() => {
            const seq = ++sequence;
            sentAt.set(seq, performance.now());
            requests.push(
              create(StreamHeartbeatsRequestSchema, { message: { case: "heartbeat", value: { sequence: seq, gpus: gpuSamples(n) } } }),
            );
          }, periodMs);
        }, Math.random() * periodMs);
      } else if (res.message.case === "ack") {
        const t = sentAt.get(res.message.value.sequence);
        sentAt.delete(res.message.value.sequence);
        if (measuring && t !== undefined) {
          acked++;
          latencies.push(performance.now() - t);
        }
      }
    }
  } catch (err) {
    errors++;
    const code = String((err as { code?: unknown }).code ?? "unknown");
    errorCodes[code] = (errorCodes[code] ?? 0) + 1;
  } finally {
    clearInterval(timer);
  }
}

// Connect with at most 200 hellos in flight, as a fleet coming up would; then warm up.
const connectStarted = performance.now();
const progress = setInterval(() => process.stderr.write(`load: ${connected}/${hosts.length} agents connected\n`), 10_000);
let inFlight = 0;
let release: (() => void) | undefined;
for (let i = 0; i < hosts.length; i++) {
  while (inFlight >= 200) await new Promise<void>((r) => (release = r));
  inFlight++;
  let done = false;
  const welcomed = () => {
    if (done) return;
    done = true;
    inFlight--;
    release?.();
  };
  void agent(i, hosts[i]!, welcomed).finally(welcomed);
}
while (connected + errors < hosts.length) await new Promise((r) => setTimeout(r, 100));
clearInterval(progress);
const hellosPerSecond = hosts.length / ((performance.now() - connectStarted) / 1000);
process.stdout.write(`${JSON.stringify({ phase: "connected", connected })}\n`);
await new Promise((r) => setTimeout(r, warmupMs));
process.stdout.write(`${JSON.stringify({ phase: "measuring", connected })}\n`);
measuring = true;
const started = performance.now();
await new Promise((r) => setTimeout(r, durationMs));
measuring = false;
const seconds = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? NaN;
process.stdout.write(
  `${JSON.stringify({ phase: "done", connected, errors, errorCodes, hellosPerSecond, ackedPerSecond: acked / seconds, p50: pct(50), p99: pct(99), max: latencies[latencies.length - 1] ?? NaN })}\n`,
);
process.exit(0);
