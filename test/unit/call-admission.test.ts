import { strict as assert } from "node:assert";
import { CallAdmission } from "../../src/rpc/call-admission.js";

describe("call admission (calls of one connection worked on at once)", () => {
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
    const leaveFirst = await admission.enter(connection, new AbortController().signal);
    const quitter = new AbortController();
    const second = admission.enter(connection, quitter.signal);
    const third = admission.enter(connection, new AbortController().signal);
    leaveFirst(); // the place goes to the second call, on the next turn of the event loop...
    quitter.abort(); // ...which has given up by then
    assert.equal(await settled(second), "refused");
    assert.equal(await settled(third), "entered", "the third call gets the place");
  });

  it("keeps other connections out of one connection's queue", async () => {
    const admission = new CallAdmission(1, 60_000);
    const busy = {};
    await admission.enter(busy, new AbortController().signal);
    const queued = admission.enter(busy, new AbortController().signal);
    assert.equal(await settled(queued), "waiting");
    assert.equal(await settled(admission.enter({}, new AbortController().signal)), "entered");
  });
});
