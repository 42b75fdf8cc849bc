import { strict as assert } from "node:assert";
import { planInventory, type StoredGpu } from "../../src/host/inventory-sync.js";

const gpu = (index: number, uuid: string, more: Partial<StoredGpu> = {}): StoredGpu => ({
  id: `id-${uuid}`,
  index,
  uuid,
  model: "H100",
  memoryBytes: 80,
  driverVersion: "550",
  cudaVersion: "12.4",
  status: "AVAILABLE",
  holder: null,
  healthReasons: [],
  ...more,
});
const report = (g: StoredGpu) => ({
  index: g.index,
  uuid: g.uuid,
  model: g.model,
  memoryBytes: g.memoryBytes,
  driverVersion: g.driverVersion,
  cudaVersion: g.cudaVersion,
});

describe("inventory plan", () => {
  it("plans nothing for a reconnect that reports the same GPUs", () => {
    const stored = [gpu(0, "a"), gpu(1, "b")];
    const plan = planInventory(stored, stored.map(report));
    assert.deepEqual([plan.park, plan.insert, plan.update, plan.offline], [[], [], [], []]);
    assert.deepEqual(
      [...plan.ids],
      [
        ["a", "id-a"],
        ["b", "id-b"],
      ],
    );
  });

  it("adds new GPUs, takes missing ones offline and parks an index a newcomer claims", () => {
    const plan = planInventory([gpu(0, "a"), gpu(1, "gone")], [report(gpu(0, "a")), report(gpu(1, "new"))]);
    assert.deepEqual(plan.park, ["id-gone"]);
    assert.deepEqual(plan.offline, ["id-gone"]);
    assert.deepEqual(
      plan.insert.map((g) => [g.index, g.uuid]),
      [[1, "new"]],
    );
    assert.equal(plan.ids.get("new"), plan.insert[0]!.id);
  });

  it("swaps indexes through parking, and brings an OFFLINE GPU back to what its health and holder say", () => {
    const stored = [
      gpu(0, "a"),
      gpu(1, "b", { status: "OFFLINE", holder: "env-1" }),
      gpu(2, "c", { status: "OFFLINE", healthReasons: ["xid 79"] }),
    ];
    const plan = planInventory(stored, [report(gpu(1, "a")), report(gpu(0, "b")), report(gpu(2, "c"))]);
    assert.deepEqual(plan.park.sort(), ["id-a", "id-b"]);
    assert.deepEqual(
      plan.update.map((u) => [u.uuid, u.index, u.status]),
      [
        ["a", 1, "AVAILABLE"],
        ["b", 0, "ALLOCATED"],
        ["c", 2, "UNHEALTHY"],
      ],
    );
  });

  it("does not park a row already parked", () => {
    const plan = planInventory([gpu(-1, "old", { status: "OFFLINE" })], [report(gpu(0, "x"))]);
    assert.deepEqual([plan.park, plan.offline], [[], []]);
  });
});
