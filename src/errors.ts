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

/** The request is malformed; each violation names the field. */
export class InvalidArgumentError extends DomainError {
  override name = "InvalidArgumentError";
  constructor(readonly violations: FieldViolation[]) {
    super(violations.map((v) => `${v.field}: ${v.description}`).join("; "));
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
