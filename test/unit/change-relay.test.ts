import { strict as assert } from "node:assert";
import { ChangeRelay } from "../../src/platform/change-relay.js";

describe("ChangeRelay", () => {
  it("publishes one batch at a time, each with the latest change of every id, in the order they last changed", async () => {
    const published: string[][] = [];
    let inFlight = 0;
    let release!: () => void;
    const relay = new ChangeRelay<number>(
      async (batch) => {
        assert.equal(++inFlight, 1, "never two batches at once");
        if (published.length === 0) await new Promise<void>((r) => (release = r));
        published.push([...batch].map(([id, n]) => `${id}${n}`));
        inFlight--;
      },
      () => assert.fail("nothing failed"),
    );
    relay.add("a", 1);
    // While the first batch is being read: b changes, then a twice.
    relay.add("b", 1);
    relay.add("a", 2);
    relay.add("a", 3);
    release();
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(published, [["a1"], ["b1", "a3"]]);
  });

  it("reports a failed batch and goes on with the next", async () => {
    const lost: unknown[] = [];
    const published: string[] = [];
    const relay = new ChangeRelay<string>(
      async (batch) => {
        if (batch.has("bad")) throw new Error("read failed");
        published.push(...batch.keys());
      },
      (err) => lost.push(err),
    );
    relay.add("bad", "x");
    relay.add("good", "y");
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(lost.length, 1);
    assert.deepEqual(published, ["good"]);
  });
});
