import { strict as assert } from "node:assert";
import { QuotaExceededError } from "../../src/errors.js";
import { admit, type QuotaLimits, type Usage } from "../../src/workspace/quota-ledger.js";

const H100 = "NVIDIA H100 80GB HBM3";
const A100 = "NVIDIA A100-SXM4-80GB";
const open: QuotaLimits = {
  maxGpus: null,
  maxGpusPerModel: {},
  maxMigSlicesPerProfile: {},
  allowedGpuModels: [],
  maxEnvironments: null,
  maxCpuMillicores: null,
  maxMemoryBytes: null,
  maxStorageBytes: null,
};
const idle: Usage = {
  gpus: 0,
  gpusPerModel: {},
  gpuUnits: 0,
  migSlicesPerProfile: {},
  environments: 0,
  cpuMillicores: 0,
  memoryBytes: 0,
  storageBytes: 0,
  volumeUsedBytes: 0,
};
/** Usage of whole GPUs: n of them, per model. */
const holding = (gpusPerModel: Record<string, number>): Usage => {
  const n = Object.values(gpusPerModel).reduce((a, b) => a + b, 0);
  return { ...idle, gpus: n, gpuUnits: n * 420, gpusPerModel };
};
const slice = (profile: string) => `${H100} MIG ${profile}`;

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
    admit(open, holding({ [H100]: 1000 }), { gpusPerModel: { [H100]: 64 }, environments: 50, cpuMillicores: 1e9 });
  });

  it("bounds GPUs per model and in total: at most 2 × H100 and 8 of any", () => {
    const quota = { ...open, maxGpus: 8, maxGpusPerModel: { [H100]: 2 } };
    admit(quota, idle, { gpusPerModel: { [H100]: 2 } });
    const perModel = refusal(() => admit(quota, holding({ [H100]: 1 }), { gpusPerModel: { [H100]: 2 } }));
    assert.equal(perModel.dimension, `max_gpus_per_model["${H100}"]`);
    assert.deepEqual([perModel.limit, perModel.inUse, perModel.requested], [2, 1, 2]);
    admit(quota, holding({ [H100]: 2 }), { gpusPerModel: { [A100]: 6 } });
    const total = refusal(() => admit(quota, holding({ [H100]: 2 }), { gpusPerModel: { [A100]: 7 } }));
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
    refusal(() => admit(lowered, holding({ [H100]: 4 }), { gpusPerModel: { [H100]: 1 } }));
    admit(lowered, holding({ [H100]: 4 }), { environments: 1, cpuMillicores: 500 });
  });

  it("counts a MIG slice against max_gpus as its share of the GPU: seven 1g.10gb of an H100 are one GPU", () => {
    const quota = { ...open, maxGpus: 1 };
    const sixSlices = {
      ...idle,
      gpus: 6,
      gpusPerModel: { [slice("1g.10gb")]: 6 },
      gpuUnits: 6 * 60,
      migSlicesPerProfile: { "1g.10gb": 6 },
    };
    admit(quota, sixSlices, { gpusPerModel: { [slice("1g.10gb")]: 1 } });
    const err = refusal(() => admit(quota, sixSlices, { gpusPerModel: { [slice("1g.10gb")]: 2 } }));
    assert.equal(err.dimension, "max_gpus");
    assert.deepEqual([err.limit, err.inUse, err.requested], [1, 0.857, 0.286]);
    // A 3g.40gb is 3/7 of the GPU: beside six 1g slices, it does not fit.
    assert.equal(refusal(() => admit(quota, sixSlices, { gpusPerModel: { [slice("3g.40gb")]: 1 } })).dimension, "max_gpus");
    // A whole GPU beside one slice does not fit either.
    const one = { ...idle, gpus: 1, gpusPerModel: { [slice("1g.10gb")]: 1 }, gpuUnits: 60, migSlicesPerProfile: { "1g.10gb": 1 } };
    assert.equal(refusal(() => admit(quota, one, { gpusPerModel: { [H100]: 1 } })).dimension, "max_gpus");
  });

  it("bounds MIG slices per profile, over every parent model", () => {
    const quota = { ...open, maxMigSlicesPerProfile: { "1g.10gb": 2 } };
    const a100Slice = `${A100} MIG 1g.10gb`;
    const held = { ...idle, gpus: 1, gpusPerModel: { [a100Slice]: 1 }, gpuUnits: 60, migSlicesPerProfile: { "1g.10gb": 1 } };
    admit(quota, held, { gpusPerModel: { [slice("1g.10gb")]: 1 } });
    const err = refusal(() => admit(quota, held, { gpusPerModel: { [slice("1g.10gb")]: 2 } }));
    assert.equal(err.dimension, 'max_mig_slices_per_profile["1g.10gb"]');
    assert.deepEqual([err.limit, err.inUse, err.requested], [2, 1, 2]);
    // Other profiles and whole GPUs are not bounded by it.
    admit(quota, held, { gpusPerModel: { [slice("3g.40gb")]: 2, [H100]: 4 } });
  });

  it("lets a listed product's MIG slices through allowed_gpu_models, and no other product's", () => {
    const quota = { ...open, allowedGpuModels: [H100] };
    admit(quota, idle, { gpusPerModel: { [slice("1g.10gb")]: 1 } });
    assert.equal(refusal(() => admit(quota, idle, { gpusPerModel: { [`${A100} MIG 1g.10gb`]: 1 } })).dimension, "allowed_gpu_models");
    // Listing one slice model allows that one only, not the whole GPU.
    const sliceOnly = { ...open, allowedGpuModels: [slice("1g.10gb")] };
    admit(sliceOnly, idle, { gpusPerModel: { [slice("1g.10gb")]: 1 } });
    assert.equal(refusal(() => admit(sliceOnly, idle, { gpusPerModel: { [H100]: 1 } })).dimension, "allowed_gpu_models");
  });
});
