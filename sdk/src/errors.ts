// The named errors of the SDK. Every failed call of a RemoteGPU client rejects with a RemoteGpuError
// subclass chosen by the gRPC code, carrying what the server said in a typed form. The server maps its
// domain errors to codes in one place (src/rpc/error-mapping.ts); this is the way back.

import { Code, ConnectError } from "@connectrpc/connect";
import type { Environment } from "./generated.js";

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
}

/**
 * The base of every error a RemoteGPU call rejects with. `message` is the server's message as sent
 * (e.g. `workspace "x" not found`); `code` the gRPC status code; `requestId` the id the server logged
 * the call under, to quote when asking an operator.
 */
export class RemoteGpuError extends Error {
  override name = "RemoteGpuError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The `x-request-id` the server echoed for the call, when it answered at all. */
  readonly requestId: string | undefined;
  /** Headers and trailers of the failed call. */
  readonly metadata: Headers;

  constructor(message: string, code: Code, options: RemoteGpuErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.metadata = options.metadata ?? new Headers();
    this.requestId = options.requestId ?? this.metadata.get("x-request-id") ?? undefined;
  }
}

/** `INVALID_ARGUMENT`: the request is malformed; `violations` names every bad field. */
export class InvalidArgumentError extends RemoteGpuError {
  override name = "InvalidArgumentError";
  /** Every bad field with what is wrong with it, parsed from `"field: description; ..."`. */
  readonly violations: readonly FieldViolation[];

  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.InvalidArgument, options);
    this.violations = parseViolations(message);
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

/** `RESOURCE_EXHAUSTED`: nothing free satisfies the request (no host with enough free GPUs, no port). */
export class ResourceExhaustedError extends RemoteGpuError {
  override name = "ResourceExhaustedError";
  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, Code.ResourceExhausted, options);
  }
}

const QUOTA = /^quota exceeded: (.+) is (\d+), (\d+) in use, (\d+) more requested$/;
const QUOTA_DIMENSION = /^quota exceeded: (\S+)/;

/**
 * `RESOURCE_EXHAUSTED` because a workspace quota would be exceeded, e.g.
 * `quota exceeded: max_gpus is 6, 6 in use, 1 more requested`.
 */
export class QuotaExceededError extends ResourceExhaustedError {
  override name = "QuotaExceededError";
  /** The quota field, e.g. `"max_gpus"`, `"max_environments"`, `'max_gpus_per_model["NVIDIA H100 80GB HBM3"]'`, `"allowed_gpu_models"`. */
  readonly dimension: string;
  /** The limit; absent for `allowed_gpu_models`. */
  readonly limit: number | undefined;
  /** What the workspace holds of it now; absent for `allowed_gpu_models`. */
  readonly inUse: number | undefined;
  /** What the refused request asked for on top; absent for `allowed_gpu_models`. */
  readonly requested: number | undefined;

  constructor(message: string, options: RemoteGpuErrorOptions = {}) {
    super(message, options);
    const full = QUOTA.exec(message);
    this.dimension = full?.[1] ?? QUOTA_DIMENSION.exec(message)?.[1] ?? "";
    this.limit = full ? Number(full[2]) : undefined;
    this.inUse = full ? Number(full[3]) : undefined;
    this.requested = full ? Number(full[4]) : undefined;
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
 * Turns an error of a call into the RemoteGpuError subclass of its code. A RemoteGpuError is
 * returned as is; anything that is not a call error (a bug in a caller's iterable, say) too.
 */
export function toRemoteGpuError(err: unknown): unknown {
  if (err instanceof RemoteGpuError || !(err instanceof ConnectError)) return err;
  const options = { metadata: err.metadata, cause: err };
  if (err.code === Code.ResourceExhausted && err.rawMessage.startsWith("quota exceeded:"))
    return new QuotaExceededError(err.rawMessage, options);
  const type = BY_CODE[err.code];
  return type ? new type(err.rawMessage, options) : new RemoteGpuError(err.rawMessage, err.code, options);
}

/**
 * Parses the server's `"field: description; field: description"` form. A field name ends at the
 * first ": " outside brackets and quotes (`max_gpus_per_model["A: B"]` is one field).
 */
function parseViolations(message: string): FieldViolation[] {
  const violations: FieldViolation[] = [];
  let field: string | undefined;
  let start = 0;
  let depth = 0;
  let quoted = false;
  const end = (at: number) => {
    const text = message.slice(start, at);
    if (field !== undefined || text !== "")
      violations.push(field === undefined ? { field: "", description: text } : { field, description: text });
    field = undefined;
    start = at + 2;
    depth = 0;
    quoted = false;
  };
  for (let i = 0; i < message.length; i++) {
    const ch = message[i];
    const spaced = message[i + 1] === " ";
    if (field === undefined && ch === '"') quoted = !quoted;
    else if (field === undefined && !quoted && ch === "[") depth++;
    else if (field === undefined && !quoted && ch === "]") depth--;
    else if (field === undefined && !quoted && depth === 0 && ch === ":" && spaced) {
      field = message.slice(start, i);
      start = i + 2;
      i++;
    } else if (ch === ";" && spaced && (field !== undefined || (!quoted && depth === 0))) {
      end(i);
      i++;
    }
  }
  end(message.length);
  return violations;
}
