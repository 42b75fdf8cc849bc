import { strict as assert } from "node:assert";
import { getEventListeners } from "node:events";
import { onSharedAbort } from "../../src/platform/shared-abort.js";

describe("onSharedAbort", () => {
  it("puts one listener on the signal however many wait on it, and tells those still waiting", () => {
    const shutdown = new AbortController();
    const told: number[] = [];
    const stops = Array.from({ length: 1000 }, (_, i) => onSharedAbort(shutdown.signal, () => told.push(i)));
    assert.equal(getEventListeners(shutdown.signal, "abort").length, 1);
    for (let i = 0; i < 1000; i += 2) stops[i]!();
    shutdown.abort();
    assert.equal(told.length, 500);
    assert.ok(
      told.every((i) => i % 2 === 1),
      "a waiter that stopped watching was told",
    );
    assert.equal(getEventListeners(shutdown.signal, "abort").length, 0);
  });

  it("keeps the waiters of different signals apart", () => {
    const a = new AbortController();
    const b = new AbortController();
    const told: string[] = [];
    onSharedAbort(a.signal, () => told.push("a"));
    onSharedAbort(b.signal, () => told.push("b"));
    a.abort();
    assert.deepEqual(told, ["a"]);
  });
});
