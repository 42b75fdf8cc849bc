import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { UnavailableError } from "../../src/errors.js";
import type { ClusterEvents } from "../../src/platform/cluster-events.js";
import { ReplicatedFeed, changeMessage, type Change, type ChangeMessage, type ChangeTopic } from "../../src/platform/replicated-feed.js";

type Topics = ChangeTopic<"thing", { name: string }>;
interface Thing {
  id: string;
  name: string;
  version: number;
}

/** The other replicas, played by the test: what this replica published, and messages "from" them. */
class OtherReplicas implements ClusterEvents<Topics> {
  readonly clustered = true;
  readonly published: ChangeMessage<{ name: string }>[] = [];
  private handler?: (message: ChangeMessage<{ name: string }>) => void;
  private gapHandler?: () => void;

  publish(_topic: "thing", payload: ChangeMessage<{ name: string }>): void {
    this.published.push(payload);
  }
  subscribe(_topic: "thing", handler: (message: ChangeMessage<{ name: string }>) => void): void {
    this.handler = handler;
  }
  onGap(handler: () => void): void {
    this.gapHandler = handler;
  }
  say(message: ChangeMessage<{ name: string }>): void {
    this.handler!(message);
  }
  gap(): void {
    this.gapHandler!();
  }
}

/** A watcher of the feed: what it received, and how its subscription ended. */
function watch(feed: ReplicatedFeed<Thing, { name: string }, "thing">) {
  const abort = new AbortController();
  const seen: string[] = [];
  const ended = (async () => {
    for await (const { item } of feed.subscribe({ accept: () => true, capacity: 100, overflow: "fail" }, abort.signal))
      seen.push(label(item));
  })().then(
    () => "aborted",
    (err: unknown) => err,
  );
  return { seen, ended, stop: () => abort.abort() };
}

const label = (c: Change<Thing>) => `${c.type} ${c.view.name}@${c.view.version}`;
const settle = () => new Promise((r) => setTimeout(r, 10));

describe("ReplicatedFeed", () => {
  const [a, b] = [randomUUID(), randomUUID()];
  let others: OtherReplicas;
  /** The database as it is now; `read` answers from it. */
  let stored: Map<string, Thing>;
  let reads: string[][];
  let read: (ids: string[]) => Promise<Thing[]>;
  let feed: ReplicatedFeed<Thing, { name: string }, "thing">;
  let deletedElsewhere: string[];

  beforeEach(() => {
    others = new OtherReplicas();
    stored = new Map([
      [a, { id: a, name: "a", version: 1 }],
      [b, { id: b, name: "b", version: 1 }],
    ]);
    reads = [];
    read = async (ids) => ids.flatMap((id) => (stored.has(id) ? [{ ...stored.get(id)! }] : []));
    deletedElsewhere = [];
    feed = new ReplicatedFeed(others, "thing", {
      idOf: (t) => t.id,
      read: (ids) => {
        reads.push(ids);
        return read(ids);
      },
      remains: (t) => ({ name: t.name }),
      tombstone: (id, { name }) => ({ id, name, version: -1 }),
      deletedElsewhere: (id) => deletedElsewhere.push(id),
    });
  });

  /** Makes the first read wait until the returned function is called. */
  function holdFirstRead(): () => void {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const answer = read;
    read = async (ids) => {
      if (reads.length === 1) await held;
      return answer(ids);
    };
    return () => release();
  }

  it("shows a change made here to its watchers at once, and sends the other replicas its id (with remains when deleted)", async () => {
    const w = watch(feed);
    feed.publish("MODIFIED", stored.get(a)!);
    feed.publish("DELETED", stored.get(b)!);
    await settle();
    assert.deepEqual(w.seen, ["MODIFIED a@1", "DELETED b@1"]);
    assert.deepEqual(others.published, [
      { type: "MODIFIED", id: a },
      { type: "DELETED", id: b, deleted: { name: "b" } },
    ]);
    assert.deepEqual(reads, [], "nothing made here is read back");
    w.stop();
  });

  it("reads changes of other replicas back one batch at a time, each with the newest state, in the order they last changed", async () => {
    const w = watch(feed);
    const release = holdFirstRead();
    others.say({ type: "MODIFIED", id: a });
    await settle();
    // While the first read waits: b changes, then a twice; the database moves on.
    others.say({ type: "MODIFIED", id: b });
    stored.get(a)!.version = 3;
    others.say({ type: "MODIFIED", id: a });
    others.say({ type: "MODIFIED", id: a });
    release();
    await settle();
    assert.deepEqual(reads, [[a], [b, a]], "never two reads at once; the second batch holds each id once");
    // The first read was slow and saw the newer state too: still nothing older ever follows something newer.
    assert.deepEqual(w.seen, ["MODIFIED a@3", "MODIFIED b@1", "MODIFIED a@3"]);
    w.stop();
  });

  it("shows a deletion elsewhere from its remains, without reading, after telling the owner", async () => {
    const w = watch(feed);
    others.say({ type: "DELETED", id: b, deleted: { name: "b" } });
    await settle();
    assert.deepEqual(deletedElsewhere, [b]);
    assert.deepEqual(w.seen, ["DELETED b@-1"]);
    assert.deepEqual(reads, []);
    w.stop();
  });

  it("keeps a deletion waiting to be shown when a later change of the same id arrives behind it", async () => {
    const w = watch(feed);
    const release = holdFirstRead();
    others.say({ type: "MODIFIED", id: a });
    await settle();
    // While that read waits, b is deleted elsewhere, then a late change of b is announced here.
    stored.delete(b);
    others.say({ type: "DELETED", id: b, deleted: { name: "b" } });
    feed.announce([b]);
    release();
    await settle();
    assert.deepEqual(w.seen, ["MODIFIED a@1", "DELETED b@-1"]);
    w.stop();
  });

  it("reads nothing while nobody watches here", async () => {
    others.say({ type: "MODIFIED", id: a });
    feed.announce([b]);
    await settle();
    assert.deepEqual(reads, []);
    assert.deepEqual(others.published, [{ type: "MODIFIED", id: b }], "an announced change still reaches the other replicas");
  });

  it("reads announced changes back like the other replicas' ones", async () => {
    const w = watch(feed);
    feed.announce([a, b]);
    await settle();
    assert.deepEqual(w.seen, ["MODIFIED a@1", "MODIFIED b@1"]);
    w.stop();
  });

  it("tells every watcher to watch again when a read fails, and goes on with the next change", async () => {
    const w = watch(feed);
    read = async () => {
      throw new Error("database away");
    };
    others.say({ type: "MODIFIED", id: a });
    const err = await w.ended;
    assert.ok(err instanceof UnavailableError, String(err));
    assert.match(err.message, /watch again/);

    read = async (ids) => ids.map((id) => ({ ...stored.get(id)! }));
    const again = watch(feed);
    others.say({ type: "MODIFIED", id: b });
    await settle();
    assert.deepEqual(again.seen, ["MODIFIED b@1"]);
    again.stop();
  });

  it("tells every watcher to watch again when the replicas may have missed each other's messages", async () => {
    const [w1, w2] = [watch(feed), watch(feed)];
    others.gap();
    for (const w of [w1, w2]) {
      const err = await w.ended;
      assert.ok(err instanceof UnavailableError, String(err));
    }
    assert.equal(feed.size, 0);
  });
});

describe("changeMessage (decoding a change from another replica)", () => {
  const decode = changeMessage((raw) => {
    if (typeof raw !== "object" || raw === null || typeof (raw as { name?: unknown }).name !== "string")
      throw new Error("name: not a string");
    return { name: (raw as { name: string }).name };
  });
  const id = randomUUID();

  it("returns a well-formed message typed", () => {
    assert.deepEqual(decode({ type: "MODIFIED", id }), { type: "MODIFIED", id });
    assert.deepEqual(decode({ type: "DELETED", id, deleted: { name: "x" } }), { type: "DELETED", id, deleted: { name: "x" } });
  });

  it("refuses anything else, naming the field", () => {
    for (const [raw, field] of [
      [null, /payload/],
      [{ type: "CHANGED", id }, /type/],
      [{ type: "MODIFIED", id: "1; drop table hosts" }, /id/],
      [{ type: "MODIFIED" }, /id/],
      [{ type: "DELETED", id }, /deleted/],
      [{ type: "DELETED", id, deleted: { name: 7 } }, /name/],
    ] as const) {
      assert.throws(() => decode(raw), field, JSON.stringify(raw));
    }
  });
});
