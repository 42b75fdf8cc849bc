import { strict as assert } from "node:assert";
import { CallAdmission } from "../../src/rpc/call-admission.js";

describe("call admission (calls of one caller on one connection worked on at once)", () => {
  const settled = (p: Promise<unknown>) =>
    Promise.race([
      p.then(
        () => "entered",
        () => "refused",
      ),
      new Promise((r) => setTimeout(() => r("waiting"), 200)),
    ]);

  it("a call that gives up just as its turn comes passes the place on, rather than losing it", async () => {
    const admission = new CallAdmission(1, 60_000);
    const connection = {};
    const leaveFirst = await admission.enter(connection, "Bearer a", new AbortController().signal);
    const quitter = new AbortController();
    const second = admission.enter(connection, "Bearer a", quitter.signal);
    const third = admission.enter(connection, "Bearer a", new AbortController().signal);
    leaveFirst(); // the place goes to the second call, on the next turn of the event loop...
    quitter.abort(); // ...which has given up by then
    assert.equal(await settled(second), "refused");
    assert.equal(await settled(third), "entered", "the third call gets the place");
  });

  it("keeps other connections out of one connection's queue", async () => {
    const admission = new CallAdmission(1, 60_000);
    const busy = {};
    await admission.enter(busy, "Bearer a", new AbortController().signal);
    const queued = admission.enter(busy, "Bearer a", new AbortController().signal);
    assert.equal(await settled(queued), "waiting");
    assert.equal(await settled(admission.enter({}, "Bearer a", new AbortController().signal)), "entered");
  });

  it("lets another caller on the same connection (a proxy, multiplexed agents) pass a busy one", async () => {
    const admission = new CallAdmission(1, 60_000);
    const shared = {};
    const leave = await admission.enter(shared, "Bearer a", new AbortController().signal);
    const queued = admission.enter(shared, "Bearer a", new AbortController().signal);
    assert.equal(await settled(queued), "waiting");
    assert.equal(await settled(admission.enter(shared, "Bearer b", new AbortController().signal)), "entered");
    assert.equal(await settled(admission.enter(shared, "", new AbortController().signal)), "entered", "no credentials is a caller too");
    leave();
    assert.equal(await settled(queued), "entered");
  });
});
