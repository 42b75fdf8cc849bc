// Named domain errors. Domain code throws these; src/rpc/error-mapping.ts turns them into gRPC codes
// and the SDK turns the codes back into the same names.

/** A problem with one request field. */
export interface FieldViolation {
  field: string;
  description: string;
}

export class DomainError extends Error {
  override name = "DomainError";
}

/**
 * The request is malformed; each violation names the field. Only the first problem of each field is
 * kept: the later ones usually follow from it ("required", then "must not be empty").
 */
export class InvalidArgumentError extends DomainError {
  override name = "InvalidArgumentError";
  readonly violations: FieldViolation[];
  constructor(violations: FieldViolation[]) {
    const seen = new Set<string>();
    const first = violations.filter((v) => !seen.has(v.field) && seen.add(v.field));
    super(first.map((v) => `${v.field}: ${v.description}`).join("; "));
    this.violations = first;
  }

  static field(field: string, description: string): InvalidArgumentError {
    return new InvalidArgumentError([{ field, description }]);
  }
}

export class NotFoundError extends DomainError {
  override name = "NotFoundError";
  constructor(
    readonly kind: string,
    readonly id: string,
  ) {
    super(`${kind} "${id}" not found`);
  }
}

export class AlreadyExistsError extends DomainError {
  override name = "AlreadyExistsError";
  constructor(
    readonly kind: string,
    readonly key: string,
  ) {
    super(`${kind} ${key} already exists`);
  }
}

/** The object is not in a state that allows the operation. */
export class FailedPreconditionError extends DomainError {
  override name = "FailedPreconditionError";
}

/**
 * An idempotency key (a create call's `request_id`) came back with a different request than the one
 * it was first used for. Answering with the first call's result would hide the caller's mistake.
 */
export class RequestIdReusedError extends FailedPreconditionError {
  override name = "RequestIdReusedError";
  constructor(
    readonly requestId: string,
    /** What the key made the first time: its kind ("environment") and id. */
    readonly kind: string,
    readonly existingId: string,
  ) {
    super(
      `request_id "${requestId}" was already used for a different request (it created ${kind} ${existingId}); ` +
        "send the same request to get that result again, or use a new request_id",
    );
  }
}

/** Nothing free to satisfy the request (no GPU, no port), or a quota would be exceeded. */
export class ResourceExhaustedError extends DomainError {
  override name = "ResourceExhaustedError";
}

/** A quota dimension would be exceeded; `dimension` is the quota field, e.g. "max_gpus". */
export class QuotaExceededError extends ResourceExhaustedError {
  override name = "QuotaExceededError";
  constructor(
    readonly dimension: string,
    readonly limit: number,
    readonly inUse: number,
    readonly requested: number,
    message = `quota exceeded: ${dimension} is ${limit}, ${inUse} in use, ${requested} more requested`,
  ) {
    super(message);
  }
}

/** The caller went away before the operation completed; nothing of it was kept. */
export class CancelledError extends DomainError {
  override name = "CancelledError";
  constructor() {
    super("cancelled by the caller");
  }
}

/** A concurrent change won; the caller may retry. */
export class ConflictError extends DomainError {
  override name = "ConflictError";
}

export class UnauthenticatedError extends DomainError {
  override name = "UnauthenticatedError";
}

export class PermissionDeniedError extends DomainError {
  override name = "PermissionDeniedError";
}

/** A dependency (database, runtime) cannot be reached right now. */
export class UnavailableError extends DomainError {
  override name = "UnavailableError";
}
