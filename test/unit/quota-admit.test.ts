import { strict as assert } from "node:assert";
import { QuotaExceededError } from "../../src/errors.js";
import { admit, type QuotaLimits, type Usage } from "../../src/workspace/quota-ledger.js";

const H100 = "NVIDIA H100 80GB HBM3";
const A100 = "NVIDIA A100-SXM4-80GB";
const open: QuotaLimits = {
  maxGpus: null,
  maxGpusPerModel: {},
  allowedGpuModels: [],
  maxEnvironments: null,
  maxCpuMillicores: null,
  maxMemoryBytes: null,
  maxStorageBytes: null,
};
const idle: Usage = { gpus: 0, gpusPerModel: {}, environments: 0, cpuMillicores: 0, memoryBytes: 0, storageBytes: 0, volumeUsedBytes: 0 };

function refusal(fn: () => void): QuotaExceededError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof QuotaExceededError);
    return err;
  }
  assert.fail("expected a QuotaExceededError");
}

describe("quota admission", () => {
  it("admits anything under an unlimited quota", () => {
    admit(open, { ...idle, gpus: 1000 }, { gpusPerModel: { [H100]: 64 }, environments: 50, cpuMillicores: 1e9 });
  });

  it("bounds GPUs per model and in total: at most 2 × H100 and 8 of any", () => {
    const quota = { ...open, maxGpus: 8, maxGpusPerModel: { [H100]: 2 } };
    admit(quota, idle, { gpusPerModel: { [H100]: 2 } });
    const perModel = refusal(() => admit(quota, { ...idle, gpus: 1, gpusPerModel: { [H100]: 1 } }, { gpusPerModel: { [H100]: 2 } }));
    assert.equal(perModel.dimension, `max_gpus_per_model["${H100}"]`);
    assert.deepEqual([perModel.limit, perModel.inUse, perModel.requested], [2, 1, 2]);
    admit(quota, { ...idle, gpus: 2, gpusPerModel: { [H100]: 2 } }, { gpusPerModel: { [A100]: 6 } });
    const total = refusal(() => admit(quota, { ...idle, gpus: 2, gpusPerModel: { [H100]: 2 } }, { gpusPerModel: { [A100]: 7 } }));
    assert.equal(total.dimension, "max_gpus");
  });

  it("refuses models outside the allowed list", () => {
    const err = refusal(() => admit({ ...open, allowedGpuModels: [A100] }, idle, { gpusPerModel: { [H100]: 1 } }));
    assert.equal(err.dimension, "allowed_gpu_models");
    assert.match(err.message, /H100/);
  });

  it("names each dimension it refuses", () => {
    const quota = { ...open, maxEnvironments: 1, maxCpuMillicores: 1000, maxMemoryBytes: 1 << 30, maxStorageBytes: 10 };
    assert.equal(refusal(() => admit(quota, { ...idle, environments: 1 }, { environments: 1 })).dimension, "max_environments");
    assert.equal(refusal(() => admit(quota, idle, { cpuMillicores: 1001 })).dimension, "max_cpu_millicores");
    assert.equal(refusal(() => admit(quota, idle, { memoryBytes: 2 ** 31 })).dimension, "max_memory_bytes");
    assert.equal(refusal(() => admit(quota, idle, { storageBytes: 11 })).dimension, "max_storage_bytes");
  });

  it("refuses new demand above a lowered limit but lets a request that takes nothing of that dimension through", () => {
    const lowered = { ...open, maxGpus: 0 };
    refusal(() => admit(lowered, { ...idle, gpus: 4 }, { gpusPerModel: { [H100]: 1 } }));
    admit(lowered, { ...idle, gpus: 4 }, { environments: 1, cpuMillicores: 500 });
  });
});
