import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/** Prometheus metrics of one server. A registry per instance keeps in-process test servers apart. */
export class Metrics {
  readonly registry = new Registry();

  readonly rpcRequests = new Counter({
    name: "remotegpu_rpc_requests_total",
    // Codes as logs and audit events write them: "ok", "invalid_argument", "not_found", …
    help: "RPCs handled, by service, method and gRPC code (snake_case: ok, invalid_argument, ...)",
    labelNames: ["service", "method", "code"] as const,
    registers: [this.registry],
  });

  readonly rpcDuration = new Histogram({
    name: "remotegpu_rpc_duration_seconds",
    help: "RPC latency (for streams: until the stream ended)",
    labelNames: ["service", "method"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [this.registry],
  });

  readonly heartbeatAck = new Histogram({
    name: "remotegpu_heartbeat_ack_seconds",
    help: "From a heartbeat's arrival to its ack being handed to the connection (samples recorded, health judged)",
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5],
    registers: [this.registry],
  });

  readonly flushDuration = new Histogram({
    name: "remotegpu_flush_duration_seconds",
    help: "Batched writes of what heartbeats brought, by batch: last_seen (times, verdicts, volumes), telemetry (history buckets)",
    labelNames: ["batch"] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [this.registry],
  });

  readonly rateLimited = new Counter({
    name: "remotegpu_rate_limited_total",
    help: "Calls refused by the per-token rate limit",
    registers: [this.registry],
  });

  readonly environmentsFailed = new Counter({
    name: "remotegpu_environments_failed_total",
    help: "Environments that turned FAILED, counted by the replica that recorded it",
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "remotegpu_" });
  }

  /** A gauge of one value read at scrape time. */
  gaugeOf(name: string, help: string, read: () => number): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(read());
      },
    });
  }

  /** A counter whose total is kept elsewhere and read at scrape time. */
  counterOf(name: string, help: string, read: () => number): void {
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  }
}
