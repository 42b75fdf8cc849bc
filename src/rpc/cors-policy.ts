import type http from "node:http";
import type http2 from "node:http2";
import { cors } from "@connectrpc/connect";

/** Headers of ours a page sends (the token, a trace id) and reads (the trace id, when to retry). */
const OWN_REQUEST_HEADERS = ["Authorization", "X-Request-Id"];
const OWN_RESPONSE_HEADERS = ["X-Request-Id", "Retry-After"];
/** How long a browser may reuse a preflight answer (Chromium caps it at 2 hours). */
const PREFLIGHT_MAX_AGE_SECONDS = 7200;

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

/**
 * Cross-origin calls from browser pages on the listed origins (`CORS_ALLOWED_ORIGINS`), with the
 * headers the Connect and gRPC-Web protocols need, as connect-es lists them. A request from any
 * other origin gets no CORS header at all, so the browser keeps the answer from the page.
 */
export class CorsPolicy {
  private readonly origins: Set<string>;

  constructor(origins: string[]) {
    this.origins = new Set(origins);
  }

  /** Adds the CORS headers a request may have; true when it was a preflight, answered here. */
  handle(req: Request, res: Response): boolean {
    const origin = req.headers.origin;
    if (typeof origin !== "string" || !this.origins.has(origin)) return false;
    res.setHeader("Access-Control-Allow-Origin", origin);
    res.setHeader("Vary", "Origin");
    if (req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined) {
      res.setHeader("Access-Control-Allow-Methods", cors.allowedMethods.join(", "));
      res.setHeader("Access-Control-Allow-Headers", [...cors.allowedHeaders, ...OWN_REQUEST_HEADERS].join(", "));
      res.setHeader("Access-Control-Max-Age", String(PREFLIGHT_MAX_AGE_SECONDS));
      res.writeHead(204);
      res.end();
      return true;
    }
    res.setHeader("Access-Control-Expose-Headers", [...cors.exposedHeaders, ...OWN_RESPONSE_HEADERS].join(", "));
    return false;
  }
}
