import { strict as assert } from "node:assert";
import { getEventListeners } from "node:events";
import { type AgentReading, AgentSession, type AgentSessionOptions } from "@remotegpu/sdk";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { freePort } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { TcpProxy } from "../support/tcp-proxy.js";

describe("AgentSession keepalive", () => {
  let server: TestServer;
  let proxy: TcpProxy;
  before(async () => {
    server = await startTestServer({ env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "10" } });
    proxy = await TcpProxy.start(server.port);
  });
  after(async () => {
    await proxy.close();
    await server.close();
  });

  /** One GPU's reading for the host `name`. */
  const reading = (name: string): AgentReading => ({
    gpus: [{ index: 0, uuid: `GPU-${name}`, model: "NVIDIA H100 80GB HBM3" }],
    heartbeat: {},
  });
  /** A new host and an AgentSession of it through the proxy, running until `stop()`; `o` adds to its options. */
  const runSession = async (name: string, o: Partial<AgentSessionOptions>) => {
    const { host, agentToken } = await server.client(HostService).createHost({ name, address: "10.0.0.7" });
    const abort = new AbortController();
    const running = new AgentSession({
      servers: [proxy.url],
      hostId: host!.id,
      token: agentToken,
      agentVersion: "test",
      capacity: {},
      read: async () => reading(name),
      ...o,
    }).run(abort.signal);
    return {
      host: host!,
      stop: () => {
        abort.abort();
        return running;
      },
    };
  };

  it("waits on a server that answers late, within half of what the lease leaves, rather than reconnecting", async () => {
    const hosts = server.client(HostService);
    const events: string[] = [];
    const { host, stop } = await runSession("slow-server", {
      intervalMs: 1000,
      logger: {
        info: (_f, message) => events.push(message),
        warn: (f, message) => events.push(`${message}: ${(f as { error?: string }).error}`),
        error: () => undefined,
      },
    });
    try {
      await eventually("the agent connected", () => events.includes("agent connected"));
      // A second connection, opened once the first welcome told the agent the 10 s lease.
      proxy.reject();
      proxy.heal();
      await eventually("the agent connected again", () => events.filter((e) => e === "agent connected").length === 2);
      await new Promise((r) => setTimeout(r, 1500)); // acks flowing on it
      const accepted = proxy.accepted;
      const mark = events.length;

      // Nothing from the server for 3.5 s: the agent PINGs after 2 s of silence (two heartbeat
      // periods). Given up after one period, as before, the connection would be gone by 3 s; with
      // half of the lease's 8 s left, the PING may take 4 s.
      proxy.partition();
      await new Promise((r) => setTimeout(r, 3500));
      proxy.heal();
      await new Promise((r) => setTimeout(r, 2000));

      assert.deepEqual(events.slice(mark), [], "the stream neither ended nor reconnected");
      assert.equal(proxy.accepted, accepted, "no new connection");
      const { host: after } = await hosts.getHost({ id: host.id });
      assert.equal(HostStatus[after!.status], "ONLINE");
    } finally {
      await stop();
    }
  });

  it("takes one reading at a time when a welcome changes the period while a reading is under way", async () => {
    const events: string[] = [];
    let underWay = 0;
    let most = 0;
    const { stop } = await runSession("slow-reader", {
      // Busy 60% of each period: a reconnect's welcome (a new jittered period) often lands in one.
      read: async () => {
        most = Math.max(most, ++underWay);
        await new Promise((r) => setTimeout(r, 600));
        underWay--;
        return reading("slow-reader");
      },
      logger: { info: (_f, message) => events.push(message), warn: () => undefined, error: () => undefined },
    });
    const connected = () => events.filter((e) => e === "agent connected").length;
    try {
      for (let i = 1; i <= 6; i++) {
        await eventually(`connection ${i}`, () => connected() === i);
        await new Promise((r) => setTimeout(r, 300 + 170 * i));
        proxy.reject();
        proxy.heal();
      }
      await eventually("the last connection", () => connected() === 7);
      await new Promise((r) => setTimeout(r, 2500));
      assert.equal(most, 1, "readings overlapped");
    } finally {
      await stop();
    }
  });

  it("tells each reading the period it is taken at: the default until the server asks for its own", async () => {
    const periods: number[] = [];
    const { stop } = await runSession("period-reader", {
      read: async (periodMs) => {
        periods.push(periodMs);
        return reading("period-reader");
      },
    });
    try {
      await eventually("two readings at the server's period", () => periods.length >= 3);
      assert.equal(periods[0], 10_000, "the first, before any welcome");
      // The server's 1 s, with its ±10% jitter per session.
      for (const p of periods.slice(1)) assert.ok(p >= 900 && p <= 1100, `period ${p}`);
    } finally {
      await stop();
    }
  });
});

describe("AgentSession sharing a stop signal", () => {
  it("listens to the caller's signal once per session, however often it reconnects", async () => {
    // Nothing listens on the port: every attempt is refused and followed by a short backoff.
    const url = `http://127.0.0.1:${await freePort()}`;
    const stop = new AbortController();
    const failures: number[] = [0, 0, 0];
    let most = 0;
    const runs = failures.map((_, n) =>
      new AgentSession({
        servers: [url],
        hostId: `host-${n}`,
        token: "token",
        agentVersion: "test",
        capacity: {},
        read: async () => ({ gpus: [], heartbeat: {} }),
        initialBackoffMs: 2,
        maxBackoffMs: 10,
        logger: {
          info: () => undefined,
          warn: () => {
            failures[n]!++;
            most = Math.max(most, getEventListeners(stop.signal, "abort").length);
          },
          error: () => undefined,
        },
      }).run(stop.signal),
    );
    const sample = setInterval(() => (most = Math.max(most, getEventListeners(stop.signal, "abort").length)), 1);
    try {
      await eventually("every session refused 20 times", () => failures.every((f) => f >= 20));
    } finally {
      clearInterval(sample);
      stop.abort();
    }
    await Promise.all(runs);
    // One each: the streams and backoff waits of a session listen to a signal of its own.
    assert.equal(most, 3);
    assert.equal(getEventListeners(stop.signal, "abort").length, 0, "listeners left on the signal after the sessions ended");
  });
});
