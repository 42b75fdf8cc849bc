import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Metrics } from "../platform/metrics.js";
import type { Logger } from "../platform/logger.js";

/** Where the fleet gauges are read from, at scrape time. */
export interface FleetCounts {
  hosts: { countByStatus(): Promise<Record<string, number>> };
  gpus: { countByStatus(): Promise<Record<string, number>> };
  agents: { readonly connected: number };
}

/**
 * GET /metrics for Prometheus, beside the RPC routes: the server's metrics plus gauges of the fleet.
 * Anything else that is not an RPC gets a plain 404.
 */
export class MetricsEndpoint {
  constructor(
    private readonly metrics: Metrics,
    counts: FleetCounts,
    private readonly logger: Logger,
  ) {
    metrics.gaugeFromSource("remotegpu_hosts", "Hosts by status", "status", () => counts.hosts.countByStatus());
    metrics.gaugeFromSource("remotegpu_gpus", "GPUs by status", "status", () => counts.gpus.countByStatus());
    const agents = async () => ({ self: counts.agents.connected });
    metrics.gaugeFromSource("remotegpu_agents_connected", "Agent streams open on this replica", "replica", agents);
  }

  /** The fallback of the Connect adapter: requests no RPC route took. */
  readonly handle: NonNullable<ConnectNodeAdapterOptions["fallback"]> = (req, res) => {
    if (req.method !== "GET" || req.url !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
      return;
    }
    this.metrics.registry.metrics().then(
      (body) => {
        res.writeHead(200, { "content-type": this.metrics.registry.contentType });
        res.end(body);
      },
      (err: unknown) => {
        this.logger.error({ err }, "metrics collection failed");
        res.writeHead(503);
        res.end();
      },
    );
  };
}
