import { strict as assert } from "node:assert";
import { randomBytes, randomUUID } from "node:crypto";
import { once } from "node:events";
import { Redis } from "ioredis";
import { agentTopics, type AgentTopics } from "../../src/host/agent-sessions.js";
import { hostTopics } from "../../src/host/host-registry.js";
import type { TopicsOf } from "../../src/platform/cluster-events.js";
import { createLogger } from "../../src/platform/logger.js";
import { openRedis } from "../../src/platform/redis.js";
import { RedisClusterEvents } from "../../src/platform/redis-cluster-events.js";
import { eventually } from "../support/eventually.js";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

describe("ClusterEvents over Redis", () => {
  const prefix = `remotegpu-test-${randomBytes(4).toString("hex")}:`;
  const topics = { ...hostTopics, ...agentTopics };
  /** What B logged. */
  const logged: { msg: string; topic?: string; error?: string }[] = [];
  const clients: Redis[] = [];
  let raw: Redis;
  let a: RedisClusterEvents<TopicsOf<typeof topics>>;
  let b: RedisClusterEvents<TopicsOf<typeof topics>>;

  before(async () => {
    raw = new Redis(REDIS_URL);
    clients.push(new Redis(REDIS_URL), new Redis(REDIS_URL));
    a = new RedisClusterEvents(clients[0]!, prefix, topics, createLogger("silent"));
    b = new RedisClusterEvents(
      clients[1]!,
      prefix,
      topics,
      createLogger("warn", { write: (line: string) => void logged.push(JSON.parse(line)) }),
    );
    await Promise.all([a.start(), b.start()]);
  });
  after(() => {
    a.close();
    b.close();
    for (const client of [raw, ...clients]) client.disconnect();
  });

  it("delivers a well-formed message typed to the other replicas, not back to its sender", async () => {
    const heardByA: unknown[] = [];
    const heardByB: AgentTopics["agent-session"][] = [];
    a.subscribe("agent-session", (p) => heardByA.push(p));
    b.subscribe("agent-session", (p) => heardByB.push(p));
    const hostId = randomUUID();
    a.publish("agent-session", { hostId, sessionId: "s-1", epoch: "1733400000000000" });
    const [message] = await eventually("B hears it", () => heardByB.length > 0 && heardByB);
    assert.deepEqual(message, { hostId, sessionId: "s-1", epoch: "1733400000000000" });
    assert.equal(BigInt(message!.epoch), 1733400000000000n, "typed: the epoch is digits");
    assert.deepEqual(heardByA, []);
  });

  it("tells the others of a gap once it can publish again, after a message of its own was lost", async () => {
    // A replica whose publishing connection drops while its subscription stays (Redis's connections
    // come back one by one after an outage): what it publishes meanwhile is lost to the others.
    const logger = createLogger("silent");
    const [publisher, other] = await Promise.all([openRedis(REDIS_URL, logger), openRedis(REDIS_URL, logger)]);
    const c = new RedisClusterEvents(publisher, prefix, topics, logger);
    const d = new RedisClusterEvents(other, prefix, topics, logger);
    try {
      await Promise.all([c.start(), d.start()]);
      let gaps = 0;
      d.onGap(() => gaps++);
      const heard: string[] = [];
      d.subscribe("agent-session", (p) => heard.push(p.sessionId));
      // Publish the moment the connection is seen closed: ioredis reconnects within about 50 ms, so
      // polling its status could miss the outage altogether.
      const closed = once(publisher, "close");
      await raw.client("KILL", "ID", String(await publisher.client("ID")));
      await closed;
      c.publish("agent-session", { hostId: randomUUID(), sessionId: "s-lost", epoch: "1" }); // fails: no offline queue
      await eventually("the other replica told of the gap", () => gaps > 0, 10_000);
      assert.equal(publisher.status, "ready");
      assert.deepEqual(heard, [], "the message sent while the connection was down was lost, not queued");
    } finally {
      c.close();
      d.close();
      publisher.disconnect();
      other.disconnect();
    }
  });

  it("drops a malformed message at the edge and logs it, and goes on with the next", async () => {
    const heard: AgentTopics["agent-command"][] = [];
    b.subscribe("agent-command", (p) => heard.push(p));
    const send = (topic: string, payload: unknown) => raw.publish(`${prefix}bus`, JSON.stringify({ from: "elsewhere", topic, payload }));
    await send("agent-command", { hostId: randomUUID(), command: { kind: "explode" } });
    await send("agent-command", { hostId: "not-an-id", command: { kind: "drain" } });
    await send("agent-command", { hostId: randomUUID(), command: { kind: "stop", environmentId: randomUUID(), generation: "2" } });
    await raw.publish(`${prefix}bus`, "{ not json");
    await send("no-such-topic", {});
    const hostId = randomUUID();
    await send("agent-command", { hostId, command: { kind: "drain" } });

    await eventually("the good one", () => heard.length > 0);
    assert.deepEqual(heard, [{ hostId, command: { kind: "drain" } }], "only the well-formed command reached the handler");
    const dropped = logged.filter((l) => /malformed|not JSON|unknown topic/.test(l.msg));
    assert.equal(dropped.length, 5, JSON.stringify(logged));
    assert.match(dropped[0]!.error!, /kind/);
    assert.match(dropped[1]!.error!, /hostId/);
    assert.match(dropped[2]!.error!, /generation/);
  });
});
