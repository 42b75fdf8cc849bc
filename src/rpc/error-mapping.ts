import { Code, ConnectError } from "@connectrpc/connect";
import { SessionFencedError } from "../host/agent-sessions.js";
import {
  ConnectionException,
  DeadlockException,
  ForeignKeyConstraintViolationException,
  LockWaitTimeoutException,
  OptimisticLockError,
  UniqueConstraintViolationException,
} from "@mikro-orm/core";
import {
  AlreadyExistsError,
  CancelledError,
  ConflictError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
} from "../errors.js";
import { codeReason, detailsOf, errorInfo } from "./error-details.js";

const DOMAIN_CODES: [new (...args: never[]) => Error, Code][] = [
  [InvalidArgumentError, Code.InvalidArgument],
  [NotFoundError, Code.NotFound],
  [AlreadyExistsError, Code.AlreadyExists],
  [FailedPreconditionError, Code.FailedPrecondition],
  [ResourceExhaustedError, Code.ResourceExhausted],
  [ConflictError, Code.Aborted],
  [UnauthenticatedError, Code.Unauthenticated],
  [PermissionDeniedError, Code.PermissionDenied],
  [UnavailableError, Code.Unavailable],
  [CancelledError, Code.Canceled],
];

// Node and pg error codes that mean "the database is not reachable right now".
const CONNECTION_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "57P01",
  "57P02",
  "57P03",
  "08000",
  "08003",
  "08006",
]);

/**
 * The one place that decides a gRPC code. `expected` is false only for errors no caller could have
 * caused; those become INTERNAL with no detail, and the caller logs them once.
 */
export function toConnectError(err: unknown): { error: ConnectError; expected: boolean } {
  if (err instanceof ConnectError) return { error: err, expected: err.code !== Code.Internal && err.code !== Code.Unknown };
  if (err instanceof SessionFencedError) {
    // Agents tell "a newer session replaced you" (back off) from other ABORTEDs (retry now) by this.
    return {
      error: new ConnectError(err.message, Code.Aborted, { "remotegpu-fenced-by": err.newerSessionId }, detailsOf(err, Code.Aborted), err),
      expected: true,
    };
  }
  for (const [type, code] of DOMAIN_CODES) {
    if (err instanceof type)
      return { error: new ConnectError(bounded(err.message), code, undefined, detailsOf(err, code), err), expected: true };
  }
  if (err instanceof UniqueConstraintViolationException) return expected("already exists", Code.AlreadyExists, err);
  if (err instanceof ForeignKeyConstraintViolationException) {
    return expected("a related object was removed concurrently; retry", Code.Aborted, err);
  }
  if (err instanceof OptimisticLockError || err instanceof DeadlockException || err instanceof LockWaitTimeoutException) {
    return expected("the object was changed concurrently; retry", Code.Aborted, err);
  }
  if (err instanceof ConnectionException || isConnectionError(err)) {
    return expected("database unavailable; retry later", Code.Unavailable, err);
  }
  return { error: new ConnectError("internal error", Code.Internal, undefined, undefined, err), expected: false };
}

/**
 * Messages quote what the caller sent; a huge value would not fit in a gRPC trailer (HTTP/2 header
 * limits) and the caller would see a protocol error instead of the answer.
 */
const MAX_MESSAGE = 2000;
function bounded(message: string): string {
  return message.length <= MAX_MESSAGE ? message : `${message.slice(0, MAX_MESSAGE)}… (${message.length - MAX_MESSAGE} more characters)`;
}

function expected(message: string, code: Code, cause: unknown) {
  return { error: new ConnectError(message, code, undefined, [errorInfo(codeReason(code))], cause), expected: true };
}

function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && CONNECTION_CODES.has(code)) return true;
  // knex's pool timeout when every connection is stuck on a dead server; pg refusing queries on a
  // client whose connection broke; knex ending a transaction whose connection broke under it (the
  // transaction's next query then finds it "already complete": our code never reuses a finished one).
  return (
    err.name === "KnexTimeoutError" ||
    /Connection terminated|connect ECONNREFUSED|is not queryable|Transaction query already complete/.test(err.message)
  );
}
