import { isMessage, type DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { CreateEnvironmentRequestSchema } from "./generated.js";
import type { ResolvedOptions } from "./options.js";

const RETRYABLE = new Set([Code.Unavailable, Code.Aborted]);

/**
 * Whether a call may be sent again without doing its work twice, which is when the SDK retries it:
 * the contract marks the method free of side effects (`idempotency_level = NO_SIDE_EFFECTS`) or
 * idempotent, or it is a CreateEnvironment carrying a `request_id` (the server answers a repeated
 * one with the first call's environment).
 *
 * @param method The method's descriptor, e.g. `WorkspaceService.method.getWorkspace`.
 * @param request The request message.
 */
export function isIdempotent(method: DescMethod, request: unknown): boolean {
  const level = method.idempotency;
  if (level === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS || level === MethodOptions_IdempotencyLevel.IDEMPOTENT) return true;
  return isMessage(request, CreateEnvironmentRequestSchema) && request.requestId !== "";
}

/** Retries idempotent unary calls that failed with UNAVAILABLE or ABORTED, with exponential backoff and jitter, within the call's deadline. */
export function retryInterceptor(options: Pick<ResolvedOptions, "retries" | "backoff">): Interceptor {
  return (next) => async (req) => {
    if (req.stream || options.retries === 0 || !isIdempotent(req.method, req.message)) return next(req);
    for (let attempt = 0; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        if (attempt >= options.retries || req.signal.aborted || !RETRYABLE.has(ConnectError.from(err).code)) throw err;
        await sleep(backoffMs(options.backoff, attempt), req.signal);
      }
    }
  };
}

/** The wait before retry number `attempt + 1`: half of the exponential bound, plus up to as much again at random. */
export function backoffMs(backoff: ResolvedOptions["backoff"], attempt: number): number {
  const bound = Math.min(backoff.maxMs, backoff.initialMs * backoff.multiplier ** attempt);
  return bound / 2 + Math.random() * (bound / 2);
}

/** Waits `ms`, or rejects with the signal's reason (the call's deadline or cancellation) as soon as it aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
