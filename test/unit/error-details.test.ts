import { strict as assert } from "node:assert";
import { Code, type ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, QuotaFailureSchema } from "../../gen/google/rpc/error_details_pb.js";
import { ConflictError, InvalidArgumentError, QuotaExceededError, RequestIdReusedError } from "../../src/errors.js";
import { codeName } from "../../src/rpc/code-name.js";
import { toConnectError } from "../../src/rpc/error-mapping.js";
import { Violations } from "../../src/validation.js";

const mapped = (err: unknown): ConnectError => toConnectError(err).error;

describe("error details", () => {
  it("reports the first problem of each field only", () => {
    const v = new Violations()
      .add("path", "required")
      .add("path", "must not contain empty, '.' or '..' segments")
      .add("name", "required")
      .add("path", "must use '/' as separator");
    assert.throws(
      () => v.throwIfAny(),
      (err: unknown) =>
        err instanceof InvalidArgumentError && err.message === "path: required; name: required" && err.violations.length === 2,
    );
  });

  it("gives every mapped domain error an ErrorInfo, with a reason of its own where there is one", () => {
    const cases: [unknown, string][] = [
      [new ConflictError("lost a race"), "ABORTED"],
      [InvalidArgumentError.field("name", "required"), "INVALID_ARGUMENT"],
      [new RequestIdReusedError("r", "environment", "e"), "REQUEST_ID_REUSED"],
      [new QuotaExceededError("max_gpus", 6, 6, 1), "QUOTA_EXCEEDED"],
    ];
    for (const [err, reason] of cases) {
      const infos = mapped(err).findDetails(ErrorInfoSchema);
      assert.deepEqual(
        infos.map((i) => [i.reason, i.domain]),
        [[reason, "remotegpu"]],
      );
    }
    assert.deepEqual(mapped(new Error("a bug")).details, [], "nothing is said of an internal error");
  });

  it("names the model of a per-model quota as a QuotaFailure dimension, and gives no numbers for allowed models", () => {
    const perModel = mapped(new QuotaExceededError('max_gpus_per_model["NVIDIA L4"]', 2, 2, 1)).findDetails(QuotaFailureSchema)[0]!
      .violations[0]!;
    assert.deepEqual(
      [perModel.quotaMetric, perModel.quotaId, { ...perModel.quotaDimensions }, perModel.quotaValue],
      ["max_gpus_per_model", 'max_gpus_per_model["NVIDIA L4"]', { gpu_model: "NVIDIA L4" }, 2n],
    );
    const models = mapped(new QuotaExceededError("allowed_gpu_models", 0, 0, 1, "not allowed")).findDetails(ErrorInfoSchema)[0]!;
    assert.deepEqual({ ...models.metadata }, { dimension: "allowed_gpu_models" });
  });

  it("keeps details small enough for a trailer, however much the caller sent", () => {
    const many = Array.from({ length: 500 }, (_, i) => ({ field: `f${i}.${"x".repeat(1000)}`, description: "y".repeat(5000) }));
    const err = mapped(new InvalidArgumentError(many));
    const [bad] = err.findDetails(BadRequestSchema);
    assert.ok(bad!.fieldViolations.length >= 1 && bad!.fieldViolations.length < 10, `${bad!.fieldViolations.length} violations`);
    const text = bad!.fieldViolations.reduce((n, v) => n + v.field.length + v.description.length, 0);
    assert.ok(text <= 2000 + 256 + 512, `${text} characters`);
    const long = mapped(new RequestIdReusedError("r".repeat(10_000), "environment", "e")).findDetails(ErrorInfoSchema)[0]!;
    assert.ok(long.metadata.request_id!.length <= 256);
  });

  it("spells codes in snake_case, as logs, audit events and /metrics do", () => {
    assert.equal(codeName(Code.InvalidArgument), "invalid_argument");
    assert.equal(codeName(Code.ResourceExhausted), "resource_exhausted");
    assert.equal(codeName(Code.Canceled), "canceled");
  });
});
