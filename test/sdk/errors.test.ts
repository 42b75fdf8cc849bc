import { strict as assert } from "node:assert";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AbortedError,
  AlreadyExistsError,
  BadRequestSchema,
  CanceledError,
  CreateEnvironmentRequestSchema,
  DeadlineExceededError,
  EnvironmentService,
  ErrorInfoSchema,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  isIdempotent,
  NotFoundError,
  PermissionDeniedError,
  QuotaExceededError,
  RemoteGpuError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  WorkspaceService,
} from "../../sdk/src/index.js";
import { toRemoteGpuError } from "../../sdk/src/errors.js";
import { backoffMs } from "../../sdk/src/retry.js";
import { chunked } from "../../sdk/src/upload.js";

const fromServer = (message: string, code: Code, requestId = "req-1") =>
  toRemoteGpuError(new ConnectError(message, code, new Headers({ "x-request-id": requestId })));

describe("SDK errors and building blocks", () => {
  it("maps every code to its named error, keeping message, code and request id", () => {
    const table: [Code, new (...args: never[]) => RemoteGpuError][] = [
      [Code.InvalidArgument, InvalidArgumentError],
      [Code.NotFound, NotFoundError],
      [Code.AlreadyExists, AlreadyExistsError],
      [Code.FailedPrecondition, FailedPreconditionError],
      [Code.ResourceExhausted, ResourceExhaustedError],
      [Code.PermissionDenied, PermissionDeniedError],
      [Code.Unauthenticated, UnauthenticatedError],
      [Code.Unavailable, UnavailableError],
      [Code.Aborted, AbortedError],
      [Code.Canceled, CanceledError],
      [Code.DeadlineExceeded, DeadlineExceededError],
      [Code.Internal, InternalError],
    ];
    for (const [code, type] of table) {
      const err = fromServer("something: happened", code);
      assert.ok(err instanceof type && err instanceof RemoteGpuError && err instanceof Error, Code[code]);
      assert.equal(err.name, type.name);
      assert.equal(err.code, code);
      assert.equal(err.message, "something: happened");
      assert.equal(err.requestId, "req-1");
      assert.ok(err.cause instanceof ConnectError);
    }
    const other = fromServer("nope", Code.Unimplemented);
    assert.ok(other instanceof RemoteGpuError && other.constructor === RemoteGpuError && other.code === Code.Unimplemented);
    const plain = new TypeError("a bug");
    assert.equal(toRemoteGpuError(plain), plain, "errors that are not call errors pass through");
  });

  it("reads field violations from the BadRequest detail, never from the message", () => {
    const violations = [
      { field: "name", description: "required" },
      { field: 'max_gpus_per_model["A: B"]', description: "must be 0 or more" },
    ];
    const err = toRemoteGpuError(
      new ConnectError("name: required; something else: entirely", Code.InvalidArgument, undefined, [
        { desc: ErrorInfoSchema, value: { reason: "INVALID_ARGUMENT", domain: "remotegpu" } },
        { desc: BadRequestSchema, value: { fieldViolations: violations } },
      ]),
    );
    assert.ok(err instanceof InvalidArgumentError);
    assert.deepEqual(err.violations, violations);
    assert.equal(err.reason, "INVALID_ARGUMENT");
    assert.deepEqual((fromServer("name: required", Code.InvalidArgument) as InvalidArgumentError).violations, []);
  });

  it("reads quota refusals from ErrorInfo, and leaves other RESOURCE_EXHAUSTED alone", () => {
    const quota = (message: string, metadata: Record<string, string>) =>
      toRemoteGpuError(
        new ConnectError(message, Code.ResourceExhausted, undefined, [
          { desc: ErrorInfoSchema, value: { reason: "QUOTA_EXCEEDED", domain: "remotegpu", metadata } },
        ]),
      );
    const perModel = quota("over", { dimension: 'max_gpus_per_model["NVIDIA H100 80GB HBM3"]', limit: "6", in_use: "6", requested: "1" });
    assert.ok(perModel instanceof QuotaExceededError);
    assert.deepEqual(
      [perModel.dimension, perModel.limit, perModel.inUse, perModel.requested],
      ['max_gpus_per_model["NVIDIA H100 80GB HBM3"]', 6, 6, 1],
    );
    const models = quota("not that model", { dimension: "allowed_gpu_models" });
    assert.ok(models instanceof QuotaExceededError);
    assert.deepEqual(
      [models.dimension, models.limit, models.inUse, models.requested],
      ["allowed_gpu_models", undefined, undefined, undefined],
    );
    // The wording alone no longer makes a QuotaExceededError.
    const worded = fromServer("quota exceeded: max_gpus is 6, 6 in use, 1 more requested", Code.ResourceExhausted);
    assert.ok(worded instanceof ResourceExhaustedError && !(worded instanceof QuotaExceededError));
    const full = fromServer("no host with 8 free healthy GPU(s)", Code.ResourceExhausted);
    assert.ok(full instanceof ResourceExhaustedError && !(full instanceof QuotaExceededError));
  });

  it("retries only what is idempotent", () => {
    assert.ok(isIdempotent(WorkspaceService.method.getWorkspace, {}));
    assert.ok(isIdempotent(EnvironmentService.method.listEnvironments, {}));
    assert.ok(!isIdempotent(WorkspaceService.method.createWorkspace, {}));
    assert.ok(!isIdempotent(EnvironmentService.method.stopEnvironment, {}));
    const createEnv = EnvironmentService.method.createEnvironment;
    assert.ok(isIdempotent(createEnv, create(CreateEnvironmentRequestSchema, { name: "a", requestId: "r-1" })));
    assert.ok(!isIdempotent(createEnv, create(CreateEnvironmentRequestSchema, { name: "a" })));
  });

  it("backs off exponentially, with jitter, up to the bound", () => {
    const backoff = { initialMs: 100, maxMs: 1000, multiplier: 2 };
    for (let i = 0; i < 200; i++) {
      for (const [attempt, bound] of [
        [0, 100],
        [1, 200],
        [3, 800],
        [4, 1000],
        [20, 1000],
      ] as const) {
        const ms = backoffMs(backoff, attempt);
        assert.ok(ms >= bound / 2 && ms <= bound, `attempt ${attempt}: ${ms}`);
      }
    }
  });

  it("cuts upload data into exact chunks", async () => {
    const sizes = async (data: Parameters<typeof chunked>[0]) => {
      const out: number[] = [];
      for await (const c of chunked(data, 10)) out.push(c.length);
      return out;
    };
    assert.deepEqual(await sizes(new Uint8Array(25)), [10, 10, 5]);
    assert.deepEqual(await sizes(new Uint8Array(0)), []);
    assert.deepEqual(
      await sizes([new Uint8Array(3), new Uint8Array(7), new Uint8Array(12), new Uint8Array(0), new Uint8Array(1)]),
      [10, 10, 3],
    );
    const joined: number[] = [];
    for await (const c of chunked([Uint8Array.of(1, 2, 3), Uint8Array.of(4, 5, 6, 7, 8, 9, 10, 11)], 4)) joined.push(...c);
    assert.deepEqual(joined, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  });
});
