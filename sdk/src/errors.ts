// The named errors of the SDK. Every failed call of a RemoteGPU client rejects with a RemoteGpuError
// subclass chosen by the gRPC code, carrying what the server said in a typed form. The server maps its
// domain errors to codes in one place (src/rpc/error-mapping.ts) and attaches google.rpc details
// (ErrorInfo, BadRequest, QuotaFailure, RetryInfo, PreconditionFailure); this is the way back: the
// typed fields come from those details, never from the message's wording.

import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, QuotaFailureSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { Environment } from "./generated.js";

/** `ErrorInfo.domain` of the reasons RemoteGPU defines (`RemoteGpuError.reason`). */
export const ERROR_DOMAIN = "remotegpu";

/**
 * A code as the README, the Connect protocol and the server's logs and metrics spell it:
 * `Code.InvalidArgument` is `"invalid_argument"`, `Code.Canceled` is `"canceled"`.
 *
 * @param code A gRPC status code.
 */
export function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  return name ? name.replace(/(?<=[a-z])(?=[A-Z])/g, "_").toLowerCase() : String(code);
}

/** One problem with one request field, as named by an `INVALID_ARGUMENT` error. */
export interface FieldViolation {
  /** The field's path in the request, e.g. `"name"`, `"ports[0].container_port"`, `"env.1X"`. */
  readonly field: string;
  /** What is wrong with it, e.g. `"required"`. */
  readonly description: string;
}

/** What every RemoteGpuError constructor accepts besides the message. */
export interface RemoteGpuErrorOptions {
  /** The request id of the failed call (the server's `x-request-id`). */
  requestId?: string;
  /** Response headers and trailers of the failed call. */
  metadata?: Headers;
  /** The underlying error, usually the transport's `ConnectError`. */
  cause?: unknown;
  /** The server's `google.rpc.ErrorInfo` reason, e.g. `"QUOTA_EXCEEDED"`. */
  reason?: string;
  /** The server's `google.rpc.ErrorInfo` metadata. */
  info?: Readonly<Record<string, string>>;
}

/**
 * The base of every error a RemoteGPU call rejects with. `message` is the server's message as sent
 * (e.g. `workspace "x" not found`); `code` the gRPC status code and `codeName` its name; `reason` the
 * machine-readable cause; `requestId` the id the server logged the call under, to quote when asking
 * an operator.
 */
export class RemoteGpuError extends Error {
  override name = "RemoteGpuError";
  /** The gRPC status code, a number (`Code.NotFound` is 5); `codeName` spells it. */
  readonly code: Code;
  /** The code's name as the README's tables, logs and metrics write it, e.g. `"not_found"`. */
  readonly codeName: string;
  /**
   * Why the call failed, from the server's `google.rpc.ErrorInfo` (domain `"remotegpu"`), e.g.
   * `"NOT_FOUND"`, `"QUOTA_EXCEEDED"`, `"RATE_LIMITED"`, `"REQUEST_ID_REUSED"`; undefined when the
   * error did not come from RemoteGPU (a proxy, the network) or from an older server.
   */
  readonly reason: string | undefined;
  /** The ErrorInfo's metadata, e.g. `{ kind: "workspace", id: "…" }` with NOT_FOUND; `{}` without one. */
  readonly info: Readonly<Record<string, string>>;
  /** The `x-request-id` the server echoed for the call, when it answered at all. */
  readonly requestId: string | undefined;
  /** Headers and trailers of the failed call. */
  readonly metadata: Headers;

  constructor(message: string, code: Code, options: RemoteGpuErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.codeName = codeName(code);
    this.reason = options.reason;
    this.info = options.info ?? {};
    this.metadata = options.metadata ?? new Headers();
    this.requestId = options.requestId ?? this.metadata.get("x-request-id") ?? undefined;
  }
}

/** `INVALID_ARGUMENT`: the request is malformed; `violations` names every bad field. */
export class InvalidArgumentError extends RemoteGpuError {
  override name = "InvalidArgumentError";
  /** Every bad field with what is wrong with it (the first problem of each), from the server's `google.rpc.BadRequest`. */
  readonly violations: readonly FieldViolation[];

  constructor(message: string, options: RemoteGpuErrorOptions & { violations?: readonly FieldViolation[] } = {}) {
    super(message, Code.InvalidArgument, options);
    this.violations = options.violations ?? [];
  }
}

/** `NOT_FOUND`: the object does not exist, or is not visible to the caller's token. */
export class NotFoundError extends RemoteGpuError {
  override name = "NotFoundError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.NotFound, options);
  }
}

/** `ALREADY_EXISTS`: a unique name or path is taken. */
export class AlreadyExistsError extends RemoteGpuError {
  override name = "AlreadyExistsError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.AlreadyExists, options);
  }
}

/** `FAILED_PRECONDITION`: the object is not in a state that allows the operation (e.g. a RUNNING environment cannot be started). */
export class FailedPreconditionError extends RemoteGpuError {
  override name = "FailedPreconditionError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.FailedPrecondition, options);
  }
}

/**
 * `FAILED_PRECONDITION` with reason `REQUEST_ID_REUSED`: a `requestId` (idempotency key) came with a
 * request other than the one it was first used for. Send the same request again to get the first
 * call's result, or use a new `requestId`.
 */
export class RequestIdReusedError extends FailedPreconditionError {
  override name = "RequestIdReusedError";
  /** The `requestId` of the refused request (not to be confused with `requestId`, the call's log id). */
  readonly reusedRequestId: string;
  /** What the key made the first time, e.g. the environment's id. */
  readonly existingId: string;

  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, options);
    this.reusedRequestId = options.info?.request_id ?? "";
    this.existingId = options.info?.existing_id ?? "";
  }
}

/** `RESOURCE_EXHAUSTED`: nothing free satisfies the request (no host with enough free GPUs, no port). */
export class ResourceExhaustedError extends RemoteGpuError {
  override name = "ResourceExhaustedError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.ResourceExhausted, options);
  }
}

/** The typed fields of a QuotaExceededError. */
export interface QuotaFields {
  dimension?: string;
  limit?: number;
  inUse?: number;
  requested?: number;
}

/**
 * `RESOURCE_EXHAUSTED` with reason `QUOTA_EXCEEDED`: a workspace quota would be exceeded, e.g.
 * `quota exceeded: max_gpus is 6, 6 in use, 1 more requested`. The fields come from the server's
 * ErrorInfo metadata (`dimension`, `limit`, `in_use`, `requested`) and QuotaFailure.
 */
export class QuotaExceededError extends ResourceExhaustedError {
  override name = "QuotaExceededError";
  /** The quota field, e.g. `"max_gpus"`, `"max_environments"`, `'max_gpus_per_model["NVIDIA H100 80GB HBM3"]'`, `"allowed_gpu_models"`. */
  readonly dimension: string;
  /** The limit, in the quota's unit (GPUs, environments, millicores, bytes); absent for `allowed_gpu_models`. */
  readonly limit: number | undefined;
  /** What the workspace holds of it now; absent for `allowed_gpu_models`. */
  readonly inUse: number | undefined;
  /** What the refused request asked for on top; absent for `allowed_gpu_models`. */
  readonly requested: number | undefined;

  constructor(message: string, options: RemoteGpuErrorOptions & QuotaFields = {}) {
    super(message, options);
    this.dimension = options.dimension ?? "";
    this.limit = options.limit;
    this.inUse = options.inUse;
    this.requested = options.requested;
  }
}

/**
 * `RESOURCE_EXHAUSTED` with reason `RATE_LIMITED`: the token started more calls than the server's
 * `RATE_LIMIT_PER_SECOND` allows. The server refused the call before doing anything, so the SDK
 * retries it (idempotent or not) after `retryAfter`, within the call's retries and deadline.
 */
export class RateLimitedError extends ResourceExhaustedError {
  override name = "RateLimitedError";
  /** Milliseconds to wait before the next call, from the server's `google.rpc.RetryInfo`. */
  readonly retryAfter: number;

  constructor(message: string, options: RemoteGpuErrorOptions & { retryAfter?: number } = {}) {
    super(message, options);
    this.retryAfter = options.retryAfter ?? 0;
  }
}

/** `PERMISSION_DENIED`: the token is valid but may not do this (wrong role or another workspace). */
export class PermissionDeniedError extends RemoteGpuError {
  override name = "PermissionDeniedError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.PermissionDenied, options);
  }
}

/** `UNAUTHENTICATED`: no token, or an unknown, revoked or expired one. */
export class UnauthenticatedError extends RemoteGpuError {
  override name = "UnauthenticatedError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.Unauthenticated, options);
  }
}

/** `UNAVAILABLE`: the server or its database cannot be reached right now; safe to retry idempotent calls. */
export class UnavailableError extends RemoteGpuError {
  override name = "UnavailableError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.Unavailable, options);
  }
}

/** `ABORTED`: the call lost a race with a concurrent change; retry it. */
export class AbortedError extends RemoteGpuError {
  override name = "AbortedError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.Aborted, options);
  }
}

/** `CANCELED`: the caller cancelled the call (its `AbortSignal`). */
export class CanceledError extends RemoteGpuError {
  override name = "CanceledError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.Canceled, options);
  }
}

/** `DEADLINE_EXCEEDED`: the call (or a helper's wait) ran past its deadline. */
export class DeadlineExceededError extends RemoteGpuError {
  override name = "DeadlineExceededError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.DeadlineExceeded, options);
  }
}

/** `INTERNAL`: a server bug; the server logged it under `requestId` and told the caller nothing more. */
export class InternalError extends RemoteGpuError {
  override name = "InternalError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.Internal, options);
  }
}

/** `waitForEnvironment` saw the environment reach FAILED instead of the status it waited for. */
export class EnvironmentFailedError extends Error {
  override name = "EnvironmentFailedError";
  constructor(
    /** The environment as last seen, FAILED; `statusMessage` says why. */
    readonly environment: Environment,
    /** The status that was waited for, e.g. `"RUNNING"`. */
    readonly wanted: string,
  ) {
    super(`environment ${environment.id} failed while waiting for ${wanted}: ${environment.statusMessage || "no reason given"}`);
  }
}

type ErrorClass = new (message: string, options?: RemoteGpuErrorOptions) => RemoteGpuError;

const BY_CODE: Partial<Record<Code, ErrorClass>> = {
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.NotFound]: NotFoundError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.Unauthenticated]: UnauthenticatedError,
  [Code.Unavailable]: UnavailableError,
  [Code.Aborted]: AbortedError,
  [Code.Canceled]: CanceledError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.Internal]: InternalError,
};

/**
 * Turns an error of a call into the RemoteGpuError subclass of its code (and, for some, of its
 * ErrorInfo reason). A RemoteGpuError is returned as is; anything that is not a call error (a bug in
 * a caller's iterable, say) too.
 */
export function toRemoteGpuError(err: unknown): unknown {
  if (err instanceof RemoteGpuError || !(err instanceof ConnectError)) return err;
  const info = errorInfoOf(err);
  const options: RemoteGpuErrorOptions = { metadata: err.metadata, cause: err, reason: info?.reason, info: info?.metadata };
  const message = err.rawMessage;
  if (err.code === Code.ResourceExhausted && info?.reason === "QUOTA_EXCEEDED")
    return new QuotaExceededError(message, { ...options, ...quotaFields(err, info.metadata) });
  if (err.code === Code.ResourceExhausted && info?.reason === "RATE_LIMITED")
    return new RateLimitedError(message, { ...options, retryAfter: retryAfterOf(err) });
  if (err.code === Code.FailedPrecondition && info?.reason === "REQUEST_ID_REUSED") return new RequestIdReusedError(message, options);
  if (err.code === Code.InvalidArgument) {
    const violations = err
      .findDetails(BadRequestSchema)
      .flatMap((b) => b.fieldViolations.map(({ field, description }) => ({ field, description })));
    return new InvalidArgumentError(message, { ...options, violations });
  }
  const type = BY_CODE[err.code];
  return type ? new type(message, options) : new RemoteGpuError(message, err.code, options);
}

/**
 * How long the server asked to wait before this call is sent again, when it refused it for the
 * token's rate limit (reason `RATE_LIMITED`); undefined for any other error. The retry interceptor
 * uses it: such a call never ran, so retrying it is safe.
 */
export function rateLimitDelay(err: unknown): number | undefined {
  if (!(err instanceof ConnectError) || err.code !== Code.ResourceExhausted) return undefined;
  return errorInfoOf(err)?.reason === "RATE_LIMITED" ? retryAfterOf(err) : undefined;
}

function errorInfoOf(err: ConnectError) {
  return err.findDetails(ErrorInfoSchema).find((i) => i.domain === ERROR_DOMAIN);
}

/** RetryInfo's delay; else the `retry-after-ms` or `retry-after` (seconds) header; else 0. */
function retryAfterOf(err: ConnectError): number {
  const delay = err.findDetails(RetryInfoSchema)[0]?.retryDelay;
  if (delay) return Math.max(0, durationMs(delay));
  const ms = Number(err.metadata.get("retry-after-ms") ?? Number.NaN);
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const seconds = Number(err.metadata.get("retry-after") ?? Number.NaN);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 0;
}

function quotaFields(err: ConnectError, metadata: Record<string, string>): QuotaFields {
  const count = (key: string) => {
    const value = metadata[key];
    return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
  };
  const violation = err.findDetails(QuotaFailureSchema)[0]?.violations[0];
  return {
    dimension: metadata.dimension ?? violation?.quotaId ?? "",
    limit: count("limit"),
    inUse: count("in_use"),
    requested: count("requested"),
  };
}
