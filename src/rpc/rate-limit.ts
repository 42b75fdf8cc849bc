import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { QuotaFailureSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { Clock } from "../platform/clock.js";
import type { TokenBuckets } from "../platform/token-buckets.js";
import { principalKey } from "./context.js";
import { errorInfo } from "./error-details.js";

/**
 * Per-token rate limit: each token may start `perSecond` calls a second, in bursts of up to twice
 * that. Over it, RESOURCE_EXHAUSTED with reason RATE_LIMITED, refused before any handler ran (so any
 * call may be sent again, idempotent or not). With Redis the buckets are shared by all replicas (see
 * RedisTokenBuckets).
 */
export function rateLimit(perSecond: number, clock: Clock, buckets: TokenBuckets, onLimited: () => void = () => undefined): Interceptor {
  return (next) => async (req) => {
    const principal = req.contextValues.get(principalKey);
    if (!principal || perSecond === 0) return next(req);
    const waitMs = await buckets.take(principal.tokenId, clock.now().getTime(), perSecond, perSecond * 2);
    if (waitMs > 0) {
      onLimited();
      throw rateLimited(perSecond, waitMs, principal.tokenId);
    }
    return next(req);
  };
}

/**
 * The refusal, saying one wait everywhere: `waitMs` in the message, in RetryInfo, in ErrorInfo's
 * `retry_after_ms` and in the `retry-after-ms` header; `retry-after` holds the same wait in whole
 * seconds, rounded up, as HTTP wants it (so it is at least 1).
 */
export function rateLimited(perSecond: number, waitMs: number, tokenId: string): ConnectError {
  const message = `rate limit of ${perSecond} calls per second for this token exceeded; retry after ${waitMs} ms`;
  const headers = { "retry-after": String(Math.max(1, Math.ceil(waitMs / 1000))), "retry-after-ms": String(waitMs) };
  return new ConnectError(message, Code.ResourceExhausted, headers, [
    errorInfo("RATE_LIMITED", { limit_per_second: String(perSecond), retry_after_ms: String(waitMs) }),
    { desc: RetryInfoSchema, value: { retryDelay: durationFromMs(waitMs) } },
    {
      desc: QuotaFailureSchema,
      value: {
        violations: [
          {
            subject: `token:${tokenId}`,
            description: message,
            quotaMetric: "calls_per_second",
            quotaId: "RATE_LIMIT_PER_SECOND",
            quotaValue: BigInt(perSecond),
          },
        ],
      },
    },
  ]);
}
