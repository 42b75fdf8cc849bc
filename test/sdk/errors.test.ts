import { strict as assert } from "node:assert";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AbortedError,
  AlreadyExistsError,
  CanceledError,
  CreateEnvironmentRequestSchema,
  DeadlineExceededError,
  EnvironmentService,
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

  it("parses field violations", () => {
    const err = fromServer(
      'name: required; ports[0].container_port: must be 1 to 65535; env.1X: not a valid name; max_gpus_per_model["A: B"]: must be 0 or more',
      Code.InvalidArgument,
    );
    assert.ok(err instanceof InvalidArgumentError);
    assert.deepEqual(err.violations, [
      { field: "name", description: "required" },
      { field: "ports[0].container_port", description: "must be 1 to 65535" },
      { field: "env.1X", description: "not a valid name" },
      { field: 'max_gpus_per_model["A: B"]', description: "must be 0 or more" },
    ]);
    assert.deepEqual((fromServer("something odd", Code.InvalidArgument) as InvalidArgumentError).violations, [
      { field: "", description: "something odd" },
    ]);
  });

  it("parses quota refusals, and leaves other RESOURCE_EXHAUSTED alone", () => {
    const perModel = fromServer(
      'quota exceeded: max_gpus_per_model["NVIDIA H100 80GB HBM3"] is 6, 6 in use, 1 more requested',
      Code.ResourceExhausted,
    );
    assert.ok(perModel instanceof QuotaExceededError);
    assert.deepEqual(
      [perModel.dimension, perModel.limit, perModel.inUse, perModel.requested],
      ['max_gpus_per_model["NVIDIA H100 80GB HBM3"]', 6, 6, 1],
    );
    const storage = fromServer(
      "quota exceeded: max_storage_bytes is 1073741824, 1073741000 in use, 5000 more requested",
      Code.ResourceExhausted,
    );
    assert.ok(storage instanceof QuotaExceededError);
    assert.deepEqual(
      [storage.dimension, storage.limit, storage.inUse, storage.requested],
      ["max_storage_bytes", 1073741824, 1073741000, 5000],
    );
    const models = fromServer(
      'quota exceeded: allowed_gpu_models does not include "NVIDIA L4" (allowed: NVIDIA H100 80GB HBM3)',
      Code.ResourceExhausted,
    );
    assert.ok(models instanceof QuotaExceededError);
    assert.deepEqual(
      [models.dimension, models.limit, models.inUse, models.requested],
      ["allowed_gpu_models", undefined, undefined, undefined],
    );
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
