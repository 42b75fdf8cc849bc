import { strict as assert } from "node:assert";
import { InvalidArgumentError } from "../../src/errors.js";
import {
  Violations,
  checkNoDeviceVariables,
  isDnsSubdomain,
  parseLabelSelector,
  selectsDevices,
  toSafeNumber,
} from "../../src/validation.js";
import { checkId } from "../../src/ids.js";

describe("validation", () => {
  it("parses label selectors and refuses malformed ones, naming the field", () => {
    assert.deepEqual(parseLabelSelector("label_selector", ""), {});
    assert.deepEqual(parseLabelSelector("label_selector", "zone=a, tier = gold"), { zone: "a", tier: "gold" });
    assert.deepEqual(parseLabelSelector("f", "remotegpu.io/pool=x"), { "remotegpu.io/pool": "x" });
    assert.throws(() => parseLabelSelector("label_selector", "zone"), /label_selector: "zone" is not key=value/);
    assert.throws(() => parseLabelSelector("label_selector", "a=b c"), /label value/);
  });

  it("knows the variables that select devices, in any case, and leaves the rest alone", () => {
    for (const name of [
      "NVIDIA_VISIBLE_DEVICES",
      "nvidia_visible_devices",
      "CUDA_VISIBLE_DEVICES",
      "NVIDIA_DRIVER_CAPABILITIES",
      "NVIDIA_REQUIRE_CUDA",
      "NVIDIA_REQUIRE_DRIVER",
      "NVIDIA_MIG_CONFIG_DEVICES",
      "NVIDIA_MIG_MONITOR_DEVICES",
      "ROCR_VISIBLE_DEVICES",
      "HIP_VISIBLE_DEVICES",
      "GPU_DEVICE_ORDINAL",
      "Ze_Affinity_Mask",
    ])
      assert.ok(selectsDevices(name), name);
    for (const name of [
      "NVIDIA_TF32_OVERRIDE",
      "CUDA_HOME",
      "CUDA_LAUNCH_BLOCKING",
      "VISIBLE_DEVICES",
      "MY_NVIDIA_VISIBLE_DEVICES",
      "PATH",
    ])
      assert.ok(!selectsDevices(name), name);
    const v = new Violations();
    checkNoDeviceVariables(v, "env", { MODE: "dev", NVIDIA_VISIBLE_DEVICES: "all", cuda_visible_devices: "0" });
    assert.throws(
      () => v.throwIfAny(),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        err.violations.map((x) => x.field).join(" ") === "env.NVIDIA_VISIBLE_DEVICES env.cuda_visible_devices",
    );
  });

  it("tells DNS-1123 subdomains from other names", () => {
    for (const ok of ["nginx", "a", "gpu.example.com", "fast-ssd", "0abc", "x".repeat(63)]) assert.ok(isDnsSubdomain(ok), ok);
    for (const bad of ["", "Nginx", "a_b", "-a", "a-", "a..b", ".a", "a.", "x".repeat(64), "a b"]) assert.ok(!isDnsSubdomain(bad), bad);
    assert.ok(!isDnsSubdomain(`${"a.".repeat(126)}ab`), "over 253 characters");
  });

  it("collects every violation into one error", () => {
    const v = new Violations().add("a", "bad").check(false, "b", "worse").check(true, "c", "fine");
    try {
      v.throwIfAny();
      assert.fail("should throw");
    } catch (err) {
      assert.ok(err instanceof InvalidArgumentError);
      assert.deepEqual(
        err.violations.map((x) => x.field),
        ["a", "b"],
      );
      assert.equal(err.message, "a: bad; b: worse");
    }
  });

  it("keeps int64 values inside the exact integer range", () => {
    const v = new Violations();
    assert.equal(toSafeNumber(v, "x", 42n), 42);
    toSafeNumber(v, "neg", -1n);
    toSafeNumber(v, "big", 1n << 60n);
    assert.throws(() => v.throwIfAny(), /neg: must be 0 or more; big: too large/);
  });

  it("accepts UUID ids and refuses anything else", () => {
    assert.equal(checkId("id", "6BF824DB-FA78-4BCF-84D5-7540098735C6"), "6bf824db-fa78-4bcf-84d5-7540098735c6");
    assert.throws(() => checkId("id", ""), /id: required/);
    assert.throws(() => checkId("host_id", "'; drop table hosts; --"), /host_id: .* is not a valid id/);
  });
});
