import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Clock } from "../platform/clock.js";
import { principalKey } from "./context.js";

/**
 * Per-token token buckets: each token may start `perSecond` calls a second, in bursts of up to twice
 * that. Over it, RESOURCE_EXHAUSTED with a `retry-after` header (seconds) saying when one is free.
 * Per replica, in memory: several replicas together allow that many times more.
 */
export function rateLimit(perSecond: number, clock: Clock): Interceptor {
  const burst = perSecond * 2;
  const buckets = new Map<string, { tokens: number; at: number }>();
  return (next) => async (req) => {
    const principal = req.contextValues.get(principalKey);
    if (!principal || perSecond === 0) return next(req);
    const now = clock.now().getTime();
    const bucket = buckets.get(principal.tokenId) ?? { tokens: burst, at: now };
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * perSecond);
    bucket.at = now;
    buckets.set(principal.tokenId, bucket);
    if (buckets.size > 100_000) buckets.clear(); // a flood of distinct tokens cannot grow it without bound
    if (bucket.tokens < 1) {
      const waitMs = Math.ceil(((1 - bucket.tokens) / perSecond) * 1000);
      const error = new ConnectError(`rate limit of ${perSecond} calls per second for this token exceeded; retry in ${waitMs} ms`, Code.ResourceExhausted);
      error.metadata.set("retry-after", String(Math.max(1, Math.ceil(waitMs / 1000))));
      throw error;
    }
    bucket.tokens -= 1;
    return next(req);
  };
}
