import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Clock } from "../platform/clock.js";
import type { TokenBuckets } from "../platform/token-buckets.js";
import { principalKey } from "./context.js";

/**
 * Per-token rate limit: each token may start `perSecond` calls a second, in bursts of up to twice
 * that. Over it, RESOURCE_EXHAUSTED with a `retry-after` header (seconds) saying when one is free.
 * With Redis the buckets are shared by all replicas (see RedisTokenBuckets).
 */
export function rateLimit(perSecond: number, clock: Clock, buckets: TokenBuckets): Interceptor {
  return (next) => async (req) => {
    const principal = req.contextValues.get(principalKey);
    if (!principal || perSecond === 0) return next(req);
    const waitMs = await buckets.take(principal.tokenId, clock.now().getTime(), perSecond, perSecond * 2);
    if (waitMs > 0) {
      const error = new ConnectError(
        `rate limit of ${perSecond} calls per second for this token exceeded; retry in ${waitMs} ms`,
        Code.ResourceExhausted,
      );
      error.metadata.set("retry-after", String(Math.max(1, Math.ceil(waitMs / 1000))));
      throw error;
    }
    return next(req);
  };
}
