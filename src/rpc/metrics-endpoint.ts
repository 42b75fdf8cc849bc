import { once } from "node:events";
import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import { hashSecret, sameHash } from "../auth/token-secret.js";
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
  /** SHA-256 of the Authorization header scrapes must send, when METRICS_TOKEN is set. */
  private readonly tokenHash?: string;

  constructor(
    private readonly metrics: Metrics,
    private readonly fleet: FleetMetrics,
    state: ControlPlaneState,
    private readonly logger: Logger,
    /** The bearer token scrapes must show; none: open. */
    token?: string,
  ) {
    this.tokenHash = token === undefined ? undefined : hashSecret(`Bearer ${token}`);
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
    if (this.tokenHash && !sameHash(hashSecret(req.headers.authorization ?? ""), this.tokenHash)) {
      res.writeHead(401, { "content-type": "text/plain", "www-authenticate": "Bearer" });
      res.end("metrics need the METRICS_TOKEN bearer token\n");
      return;
    }
    const closed = new AbortController(); // one listener for the whole response, not one per wait
    res.once("close", () => closed.abort());
    const stream = async () => {
      const first = everything ? (await this.metrics.registry.metrics()) + this.fleet.fleetText() : "";
      res.writeHead(200, { "content-type": this.metrics.registry.contentType });
      res.write(first);
      if (!everything || mode === "inline") {
        // A chunk at a time, with a turn of the event loop between: heartbeats go on meanwhile.
        for (const chunk of this.fleet.gpuChunks()) {
          if (closed.signal.aborted) return;
          if (res.write(chunk)) await new Promise(setImmediate);
          else await once(res, "drain", { signal: closed.signal }).catch(() => undefined); // or the scraper left
        }
      }
      res.end();
    };
    stream().catch((err: unknown) => {
      this.logger.error({ err }, "metrics collection failed");
      if (res.headersSent) {
        res.destroy(); // cut short: the scraper sees an incomplete body, not a wrong one
        return;
      }
      res.writeHead(503);
      res.end();
    });
  };
}
