import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

describe("latest samples across replicas (Redis)", () => {
  const prefix = `remotegpu-test-${randomBytes(4).toString("hex")}:`;
  const env = { REDIS_URL, REDIS_KEY_PREFIX: prefix };
  let a: TestServer;
  let b: TestServer;
  let late: TestServer | undefined;
  let agent: FakeAgent;

  before(async () => {
    a = await startTestServer({ env });
    b = await startTestServer({ env, db: a.db });
  });
  after(async () => {
    agent?.close();
    await late?.close();
    await b.close();
    await a.close();
    const redis = new Redis(REDIS_URL);
    await redis.del(`${prefix}latest`);
    redis.disconnect();
  });

  it("a sample an agent sends to replica A is served by replica B, and by a replica started later", async () => {
    const { host, agentToken } = await a.client(HostService).createHost({ name: "relay-host", address: "h" });
    agent = new FakeAgent(a, agentToken);
    await agent.hello(host!.id, [{ index: 0, uuid: "GPU-relay-0" }]);
    await agent.beat([{ uuid: "GPU-relay-0", index: 0, util: 64 }]);
    await a.app.maintain(); // A's flush publishes to Redis

    const gpuId = (await b.client(GpuService).listGpus({ hostId: host!.id })).gpus[0]!.id;
    let seen: number | undefined;
    for (let i = 0; i < 50 && seen === undefined; i++) {
      seen = (await b.client(GpuService).getGpu({ id: gpuId })).gpu?.latestSample?.metrics?.gpuUtilizationPercent;
      if (seen === undefined) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(seen, 64);

    late = await startTestServer({ env, db: a.db });
    assert.equal((await late.client(GpuService).getGpu({ id: gpuId })).gpu?.latestSample?.metrics?.gpuUtilizationPercent, 64);
  });
});

describe("without a reachable Redis", () => {
  it("starts and ingests heartbeats all the same", async () => {
    const server = await startTestServer({ env: { REDIS_URL: "redis://127.0.0.1:1" } });
    try {
      const { host, agentToken } = await server.client(HostService).createHost({ name: "no-redis", address: "h" });
      const agent = new FakeAgent(server, agentToken);
      await agent.hello(host!.id, [{ index: 0, uuid: "GPU-nr-0" }]);
      await agent.beat([{ uuid: "GPU-nr-0", index: 0, util: 7 }]);
      await server.app.maintain();
      const [gpu] = (await server.client(GpuService).listGpus({ hostId: host!.id })).gpus;
      assert.equal(gpu!.latestSample?.metrics?.gpuUtilizationPercent, 7);
      agent.close();
    } finally {
      await server.close();
    }
  });
});
