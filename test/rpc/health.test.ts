import { strict as assert } from "node:assert";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../gen/health/v1/health_pb.js";
import { HealthStatus, registerHealth, type HealthListener } from "../../src/rpc/health.js";
import { eventually } from "../support/eventually.js";

// Counts live subscriptions so the tests can see Watch cleaning up after itself.
class CountingHealth extends HealthStatus {
  active = 0;
  override subscribe(listener: HealthListener): () => void {
    this.active++;
    const unsubscribe = super.subscribe(listener);
    return () => {
      this.active--;
      unsubscribe();
    };
  }
}

describe("HealthStatus", () => {
  it("starts with the overall service SERVING and reports only real changes", () => {
    const health = new HealthStatus();
    assert.equal(health.get(""), "SERVING");
    assert.equal(health.get("x"), undefined);
    const seen: string[] = [];
    const stop = health.subscribe((service, status) => seen.push(`${service}=${status}`));
    health.set("x", "SERVING");
    health.set("x", "SERVING");
    health.set("x", "NOT_SERVING");
    stop();
    health.set("x", "SERVING");
    assert.deepEqual(seen, ["x=SERVING", "x=NOT_SERVING"]);
  });

  it("shutdown marks everything NOT_SERVING and ignores later updates", () => {
    const health = new HealthStatus();
    health.set("a", "SERVING");
    health.shutdown();
    assert.equal(health.get(""), "NOT_SERVING");
    assert.equal(health.get("a"), "NOT_SERVING");
    health.set("a", "SERVING");
    assert.equal(health.get("a"), "NOT_SERVING");
  });
});

describe("grpc.health.v1.Health", () => {
  const sessions = new Set<http2.ServerHttp2Session>();
  const health = new CountingHealth();
  let server: http2.Http2Server;
  let client: Client<typeof Health>;

  before(async () => {
    server = http2.createServer(connectNodeAdapter({ routes: (router) => registerHealth(router, health) }));
    // Open sessions keep close() from ever finishing, so they are destroyed in after().
    server.on("session", (s) => {
      sessions.add(s);
      s.on("close", () => sessions.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    client = createClient(Health, createGrpcTransport({ baseUrl }));
  });

  after(async () => {
    for (const s of sessions) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("Check answers for known services and NOT_FOUND for unknown ones", async () => {
    health.set("remotegpu.v1.HostService", "NOT_SERVING");
    assert.equal((await client.check({})).status, S.SERVING);
    assert.equal((await client.check({ service: "remotegpu.v1.HostService" })).status, S.NOT_SERVING);
    await assert.rejects(client.check({ service: "nope" }), (err) => ConnectError.from(err).code === Code.NotFound);
  });

  it("List returns every known service", async () => {
    const { statuses } = await client.list({});
    assert.equal(statuses[""]?.status, S.SERVING);
    assert.equal(statuses["remotegpu.v1.HostService"]?.status, S.NOT_SERVING);
  });

  it("Watch sends the current status, then changes, until the client cancels", async () => {
    health.set("watched", "SERVING");
    const abort = new AbortController();
    const received: S[] = [];
    for await (const res of client.watch({ service: "watched" }, { signal: abort.signal })) {
      received.push(res.status);
      if (received.length === 1) health.set("watched", "NOT_SERVING");
      else break; // leaving the loop cancels the call
    }
    abort.abort();
    assert.deepEqual(received, [S.SERVING, S.NOT_SERVING]);
    await eventually("the Watch subscription released", () => health.active === 0, { ms: 2000, everyMs: 10 });
  });

  it("Watch reports SERVICE_UNKNOWN, keeps the call open, and ends cleanly on abort", async () => {
    const abort = new AbortController();
    const received: S[] = [];
    const watching = (async () => {
      for await (const res of client.watch({ service: "later" }, { signal: abort.signal })) {
        received.push(res.status);
        if (received.length === 1) health.set("later", "SERVING");
        if (received.length === 2) abort.abort();
      }
    })();
    await assert.rejects(watching, (err) => ConnectError.from(err).code === Code.Canceled);
    assert.deepEqual(received, [S.SERVICE_UNKNOWN, S.SERVING]);
    await eventually("the Watch subscription released", () => health.active === 0, { ms: 2000, everyMs: 10 });
  });
});
