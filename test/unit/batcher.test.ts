import { strict as assert } from "node:assert";
import { Batcher } from "../../src/platform/batcher.js";

describe("Batcher (calls made together share one round trip)", () => {
  it("serves calls made in one turn with one run, each getting its own answer or error", async () => {
    const runs: number[][] = [];
    const batcher = new Batcher<number, number>(async (inputs) => {
      runs.push(inputs);
      return inputs.map((n) => (n < 0 ? new Error(`negative ${n}`) : n * 2));
    });
    const results = await Promise.allSettled([1, 2, -3, 4].map((n) => batcher.add(n)));
    assert.deepEqual(runs, [[1, 2, -3, 4]]);
    assert.deepEqual(
      results.map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error).message)),
      [2, 4, "negative -3", 8],
    );
  });

  it("lets calls that arrive while the runs are busy wait and go together in the next one", async () => {
    const runs: number[][] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const batcher = new Batcher<number, number>(
      async (inputs) => {
        runs.push(inputs);
        if (runs.length === 1) await gate;
        return inputs;
      },
      { max: 2, concurrency: 1 },
    );
    const first = batcher.add(0);
    await new Promise(setImmediate);
    const rest = [1, 2, 3].map((n) => batcher.add(n));
    await new Promise(setImmediate);
    assert.deepEqual(runs, [[0]], "nothing else runs while the only run is busy");
    release();
    assert.deepEqual(await Promise.all([first, ...rest]), [0, 1, 2, 3]);
    assert.deepEqual(runs, [[0], [1, 2], [3]], "the waiting calls go in batches of at most max");
  });

  it("rejects every call of a run that throws, and goes on serving later calls", async () => {
    let fail = true;
    const batcher = new Batcher<number, number>(async (inputs) => {
      if (fail) throw new Error("database down");
      return inputs;
    });
    const failed = await Promise.allSettled([batcher.add(1), batcher.add(2)]);
    assert.deepEqual(
      failed.map((r) => r.status),
      ["rejected", "rejected"],
    );
    fail = false;
    assert.equal(await batcher.add(3), 3);
  });
});
