import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

describe("limits: request rate per token and message size", () => {
  let server: TestServer;
  let clock: ManualClock;

  before(async () => {
    clock = new ManualClock(new Date("2026-12-01T00:00:00Z"));
    server = await startTestServer({ clock, env: { RATE_LIMIT_PER_SECOND: "5", MAX_MESSAGE_BYTES: "65536" } });
  });
  after(() => server.close());

  it("lets a token burst to twice its rate, then answers RESOURCE_EXHAUSTED with retry-after, per token", async () => {
    const hosts = server.client(HostService);
    for (let i = 0; i < 10; i++) await hosts.listHosts({});
    const refused = await expectCode(hosts.listHosts({}), Code.ResourceExhausted, "rate limit of 5 calls per second");
    assert.equal(refused.metadata.get("retry-after"), "1");

    // Another token has its own allowance.
    const ws = (
      await server
        .client(WorkspaceService)
        .createWorkspace({ name: "limited" })
        .catch(() => undefined)
    )?.workspace;
    assert.equal(ws, undefined, "the admin token is still over its limit");
    clock.advance(1000);
    const created = await server.client(WorkspaceService).createWorkspace({ name: "limited" });
    const other = await server
      .client(WorkspaceService)
      .createApiToken({ workspaceId: created.workspace!.id, name: "t", role: ApiTokenRole.VIEWER });
    const viewer = server.client(WorkspaceService, { token: other.secret });
    for (let i = 0; i < 10; i++) await viewer.getWorkspace({ id: created.workspace!.id });

    // A second later there is room again.
    clock.advance(1000);
    await hosts.listHosts({});
  });

  it("refuses a request larger than MAX_MESSAGE_BYTES, and keeps serving", async () => {
    clock.advance(10_000);
    const labels = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, "v".repeat(63)]));
    const big = { name: "big", address: "10.0.0.1", labels, kubernetesNodeName: "n".repeat(70_000) };
    for (const protocol of ["grpc", "connect"] as const) {
      const err = await server
        .client(HostService, { protocol })
        .createHost(big)
        .then(
          () => assert.fail("accepted"),
          (e: unknown) => ConnectError.from(e),
        );
      assert.equal(Code[err.code], "ResourceExhausted", `${protocol}: ${err.rawMessage}`);
    }
    await server.client(HostService).listHosts({});
  });

  it("refuses a streamed message over MAX_MESSAGE_BYTES after those before it, and keeps serving", async () => {
    const created = await server.client(HostService).createHost({ name: "streaming-host", address: "10.0.0.9" });
    const agent = new FakeAgent(server, created.agentToken);
    try {
      // The messages before it are served: a hello and two heartbeats, each in its own piece.
      const welcome = await agent.hello(created.host!.id, [{ index: 0, uuid: "GPU-streaming-0" }]);
      assert.equal(welcome.message.case, "welcome");
      await agent.beat([{ uuid: "GPU-streaming-0", index: 0, util: 5 }]);
      await agent.beat([{ uuid: "GPU-streaming-0", index: 0, util: 6 }]);
      agent.requests.push({
        message: { case: "heartbeat", value: { sequence: 3n, gpus: [{ gpuUuid: "x".repeat(100_000), index: 0 }] } },
      });
      await expectCode(agent.next(), Code.ResourceExhausted, "larger than configured readMaxBytes");
    } finally {
      agent.close();
    }
    // The same token's next call on a fresh stream is served.
    const again = new FakeAgent(server, created.agentToken);
    try {
      assert.equal((await again.hello(created.host!.id, [{ index: 0, uuid: "GPU-streaming-0" }])).message.case, "welcome");
    } finally {
      again.close();
    }
    await server.client(HostService).deleteHost({ id: created.host!.id });
  });
});

describe("limits: a message far over the size limit", () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
  });
  after(() => server.close());

  for (const protocol of ["connect", "grpc"] as const) {
    it(`refuses a 50 MB ${protocol} request with RESOURCE_EXHAUSTED, and the same connection serves the next call`, async function () {
      this.timeout(60_000);
      // One client, so one HTTP/2 connection: the refused call and the next share it.
      const hosts = server.client(HostService, { protocol });
      await hosts.listHosts({});
      const huge = { name: "huge", address: "10.0.0.1", kubernetesNodeName: "n".repeat(50 * 1024 * 1024) };
      const err = await hosts.createHost(huge).then(
        () => assert.fail("accepted"),
        (e: unknown) => ConnectError.from(e),
      );
      assert.equal(Code[err.code], "ResourceExhausted", err.message);
      assert.match(err.rawMessage, /larger than configured readMaxBytes/);
      const after = await hosts.listHosts({});
      assert.equal(after.totalSize, 0);
    });
  }
});

describe("limits: the request rate of a token across replicas", () => {
  const clock = new ManualClock(new Date("2026-12-01T00:00:00Z"));
  const servers: TestServer[] = [];
  after(async () => {
    for (const s of servers.reverse()) await s.close();
  });

  it("is one allowance shared by replicas through Redis, and per replica while Redis does not answer", async () => {
    const env = {
      RATE_LIMIT_PER_SECOND: "5",
      REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
      REDIS_KEY_PREFIX: `limits-${randomBytes(4).toString("hex")}:`,
    };
    const a = await startTestServer({ clock, env });
    servers.push(a);
    const b = await startTestServer({ clock, env, db: a.db });
    servers.push(b);
    // Ten calls spread over both replicas spend the burst; the next is refused on either.
    for (let i = 0; i < 10; i++) await (i % 2 ? a : b).client(HostService).listHosts({});
    await expectCode(a.client(HostService).listHosts({}), Code.ResourceExhausted, "rate limit of 5 calls per second");
    await expectCode(b.client(HostService).listHosts({}), Code.ResourceExhausted, "rate limit of 5 calls per second");

    // A replica whose Redis does not answer still limits, by itself.
    const alone = await startTestServer({ clock, env: { ...env, REDIS_URL: "redis://127.0.0.1:1" }, db: a.db });
    servers.push(alone);
    for (let i = 0; i < 10; i++) await alone.client(HostService).listHosts({});
    await expectCode(alone.client(HostService).listHosts({}), Code.ResourceExhausted, "rate limit of 5 calls per second");
  });
});
