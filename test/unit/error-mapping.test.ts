import { strict as assert } from "node:assert";
import { Code, ConnectError } from "@connectrpc/connect";
import { OptimisticLockError, UniqueConstraintViolationException } from "@mikro-orm/core";
import {
  AlreadyExistsError,
  ConflictError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  QuotaExceededError,
  UnauthenticatedError,
  UnavailableError,
} from "../../src/errors.js";
import { toConnectError } from "../../src/rpc/error-mapping.js";

describe("error mapping", () => {
  const cases: [Error, Code][] = [
    [InvalidArgumentError.field("name", "required"), Code.InvalidArgument],
    [new NotFoundError("host", "x"), Code.NotFound],
    [new AlreadyExistsError("host", "named x"), Code.AlreadyExists],
    [new FailedPreconditionError("busy"), Code.FailedPrecondition],
    [new QuotaExceededError("max_gpus", 2, 2, 1), Code.ResourceExhausted],
    [new ConflictError("lost a race"), Code.Aborted],
    [new UnauthenticatedError("no token"), Code.Unauthenticated],
    [new PermissionDeniedError("no"), Code.PermissionDenied],
    [new UnavailableError("db down"), Code.Unavailable],
    [new UniqueConstraintViolationException(Object.assign(new Error("dup"), { code: "23505" })), Code.AlreadyExists],
    [OptimisticLockError.lockFailed("Gpu"), Code.Aborted],
    [Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" }), Code.Unavailable],
  ];
  for (const [err, code] of cases) {
    it(`maps ${err.name} to ${Code[code]}`, () => {
      const { error, expected } = toConnectError(err);
      assert.equal(error.code, code);
      assert.equal(expected, true);
    });
  }

  it("keeps the domain message, which names the field", () => {
    assert.equal(toConnectError(InvalidArgumentError.field("host.name", "required")).error.rawMessage, "host.name: required");
    assert.match(
      toConnectError(new QuotaExceededError("max_gpus", 2, 2, 1)).error.rawMessage,
      /quota exceeded: max_gpus is 2, 2 in use, 1 more requested/,
    );
  });

  it("turns anything unexpected into INTERNAL without leaking its message", () => {
    const { error, expected } = toConnectError(new TypeError("secret detail at /srv/app.ts:42"));
    assert.equal(error.code, Code.Internal);
    assert.equal(expected, false);
    assert.equal(error.rawMessage, "internal error");
  });

  it("passes ConnectErrors through", () => {
    const original = new ConnectError("nope", Code.Unimplemented);
    assert.equal(toConnectError(original).error, original);
  });
});
