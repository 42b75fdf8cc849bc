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

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "remotegpu_" });
  }

  /** A gauge whose values are read (for example from the database) at scrape time. */
  gaugeFromSource(name: string, help: string, label: string, read: () => Promise<Record<string, number>>): void {
    new Gauge({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const [value, count] of Object.entries(await read())) this.set({ [label]: value }, count);
      },
    });
  }
}
