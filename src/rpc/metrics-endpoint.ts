import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Logger } from "../platform/logger.js";
import type { Metrics } from "../platform/metrics.js";
import type { FleetMetrics } from "../telemetry/fleet-metrics.js";

/** What the control-plane gauges are read from, at scrape time. */
export interface ControlPlaneState {
  agents: { readonly connected: number; readonly hellos: number; readonly fenced: number };
  leader: { readonly leads: boolean };
  busConnected: () => boolean;
}

/**
 * GET /metrics for Prometheus, beside the RPC routes: the server's own metrics, the fleet's, and
 * (unless METRICS_GPU_SERIES says otherwise) the per-GPU series, which GET /metrics/gpus serves
 * alone so that Prometheus can scrape them at an interval of their own. Anything else that is not
 * an RPC gets a plain 404.
 */
export class MetricsEndpoint {
  constructor(
    private readonly metrics: Metrics,
    private readonly fleet: FleetMetrics,
    state: ControlPlaneState,
    private readonly logger: Logger,
  ) {
    metrics.gaugeOf("remotegpu_agents_connected", "Agent streams open on this replica", () => state.agents.connected);
    metrics.counterOf("remotegpu_agent_hellos_total", "Agent hellos accepted by this replica", () => state.agents.hellos);
    metrics.counterOf(
      "remotegpu_agent_sessions_fenced_total",
      "Agent sessions on this replica ended because a newer one of their host opened",
      () => state.agents.fenced,
    );
    metrics.gaugeOf("remotegpu_leader", "1 on the replica that leads background work (lease expiry, reconciliation)", () =>
      state.leader.leads ? 1 : 0,
    );
    metrics.gaugeOf("remotegpu_bus_connected", "1 when this replica hears the others through Redis (always 1 without Redis)", () =>
      state.busConnected() ? 1 : 0,
    );
  }

  /** The fallback of the Connect adapter: requests no RPC route took. */
  readonly handle: NonNullable<ConnectNodeAdapterOptions["fallback"]> = (req, res) => {
    const mode = this.fleet.gpuSeries;
    const path = req.method === "GET" ? req.url : undefined;
    const everything = path === "/metrics";
    if (!everything && !(path === "/metrics/gpus" && mode !== "off")) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
      return;
    }
    const head = everything ? this.metrics.registry.metrics().then((own) => own + this.fleet.fleetText()) : Promise.resolve("");
    head.then(
      async (first) => {
        res.writeHead(200, { "content-type": this.metrics.registry.contentType });
        res.write(first);
        if (!everything || mode === "inline") {
          // A chunk at a time, with a turn of the event loop between: heartbeats go on meanwhile.
          for (const chunk of this.fleet.gpuChunks()) {
            if (res.destroyed) return;
            if (!res.write(chunk)) await new Promise((resolve) => res.once("drain", resolve).once("close", resolve));
            else await new Promise(setImmediate);
          }
        }
        res.end();
      },
      (err: unknown) => {
        this.logger.error({ err }, "metrics collection failed");
        res.writeHead(503);
        res.end();
      },
    );
  };
}
