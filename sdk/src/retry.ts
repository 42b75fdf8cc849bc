import type { DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { rateLimitDelay } from "./errors.js";
import { CreateEnvironmentRequestSchema } from "./generated.js";
import type { ResolvedOptions } from "./options.js";

const RETRYABLE = new Set([Code.Unavailable, Code.Aborted]);

/**
 * Whether a call may be sent again without doing its work twice, which is when the SDK retries it:
 * the contract marks the method free of side effects (`idempotency_level = NO_SIDE_EFFECTS`) or
 * idempotent, or it is a CreateEnvironment carrying a `request_id` (the server answers the same
 * request with the same id with the first call's environment).
 *
 * @param method The method's descriptor, e.g. `WorkspaceService.method.getWorkspace`.
 * @param request The request, as a message or as a plain object (`{ requestId: "…", … }`).
 */
export function isIdempotent(method: DescMethod, request: unknown): boolean {
  const level = method.idempotency;
  if (level === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS || level === MethodOptions_IdempotencyLevel.IDEMPOTENT) return true;
  // Requests come as messages or as the plain objects callers write; both carry requestId.
  if (method.input.typeName !== CreateEnvironmentRequestSchema.typeName || typeof request !== "object" || request === null) return false;
  const requestId = (request as { requestId?: unknown }).requestId;
  return typeof requestId === "string" && requestId !== "";
}

/**
 * Retries idempotent unary calls that failed with UNAVAILABLE or ABORTED, with exponential backoff and
 * jitter, and any unary call the server refused for the token's rate limit (it never ran) after the
 * wait the server asked for; all within the call's deadline.
 */
export function retryInterceptor(options: Pick<ResolvedOptions, "retries" | "backoff">): Interceptor {
  return (next) => async (req) => {
    if (req.stream || options.retries === 0) return next(req);
    const idempotent = isIdempotent(req.method, req.message);
    for (let attempt = 0; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        if (attempt >= options.retries || req.signal.aborted) throw err;
        const backoff = backoffMs(options.backoff, attempt);
        const rateLimited = rateLimitDelay(err);
        if (rateLimited !== undefined) await sleep(Math.max(rateLimited, backoff), req.signal);
        else if (idempotent && RETRYABLE.has(ConnectError.from(err).code)) await sleep(backoff, req.signal);
        else throw err;
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
