import { strict as assert } from "node:assert";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

/** Every sample line of a scrape: "name{labels}" → value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

async function scrape(server: TestServer, path = "/metrics"): Promise<{ status: number; text: string }> {
  const res = await fetch(`${server.baseUrl}${path}`);
  return { status: res.status, text: await res.text() };
}

describe("fleet metrics on /metrics (the DCGM-like view, from memory)", () => {
  let server: TestServer;
  let agent: FakeAgent;
  const gpu0 = 'host="metrics-host",uuid="GPU-m-0",index="0",model="NVIDIA H100 80GB HBM3"';

  // Replicas share latest samples through Redis: the last test checks that only the agent's holds them.
  const redisEnv = {
    REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_KEY_PREFIX: `fleet-metrics-${process.pid}-${Date.now()}:`,
  };

  before(async () => {
    server = await startTestServer({ env: redisEnv });
    const created = await server.client(HostService).createHost({ name: "metrics-host", address: "10.2.0.1" });
    agent = new FakeAgent(server, created.agentToken);
    await agent.hello(created.host!.id, [
      { index: 0, uuid: "GPU-m-0" },
      { index: 1, uuid: "GPU-m-1" },
    ]);
    await agent.beat([
      { uuid: "GPU-m-0", index: 0, util: 42, temp: 61, xid: 79, memUsed: 3n << 30n },
      { uuid: "GPU-m-1", index: 1, util: 7 },
    ]);
    const workspaces = server.client(WorkspaceService);
    const ws = (await workspaces.createWorkspace({ name: "metrics-team" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId: ws, maxGpus: 4, maxEnvironments: 3 } });
    await server.client(EnvironmentService).createEnvironment({ workspaceId: ws, name: "trainer", image: "python:3.12", gpuCount: 1 });
    await server.app.maintain();
  });
  after(async () => {
    agent.close();
    await server.close();
  });

  it("exports each GPU's latest sample with host, uuid, index and model, in Prometheus units", async () => {
    const { status, text } = await scrape(server);
    assert.equal(status, 200);
    const s = samples(text);
    assert.equal(s.get(`remotegpu_gpu_utilization_ratio{${gpu0}}`), 0.42);
    assert.equal(s.get(`remotegpu_gpu_temperature_celsius{${gpu0}}`), 61);
    assert.equal(s.get(`remotegpu_gpu_memory_used_bytes{${gpu0}}`), 3 * 2 ** 30);
    assert.equal(s.get(`remotegpu_gpu_last_xid{${gpu0}}`), 79);
    assert.equal(s.get(`remotegpu_gpu_utilization_ratio{${gpu0.replace("m-0", "m-1").replace('"0"', '"1"')}}`), 0.07);
    assert.ok((s.get(`remotegpu_gpu_sample_age_seconds{${gpu0}}`) ?? -1) >= 0);
    // Unreported fields make no series rather than a zero.
    assert.equal(s.get(`remotegpu_gpu_power_watts{${gpu0}}`), undefined);
    assert.match(text, /# TYPE remotegpu_gpu_ecc_errors_total counter/);
  });

  it("says which environment and workspace hold a GPU, and the workspace's usage against its quota", async () => {
    const s = samples((await scrape(server)).text);
    const allocated = [...s].filter(([k, v]) => k.startsWith("remotegpu_gpu_allocated{") && v === 1);
    assert.equal(allocated.length, 1, "one GPU is held");
    const info = [...s.keys()].filter((k) => k.startsWith("remotegpu_gpu_allocation{"));
    assert.equal(info.length, 1);
    assert.match(info[0]!, /environment="trainer",workspace="metrics-team"/);
    assert.equal(s.get('remotegpu_workspace_usage{workspace="metrics-team",resource="gpus"}'), 1);
    assert.equal(s.get('remotegpu_workspace_quota_limit{workspace="metrics-team",resource="gpus"}'), 4);
    assert.equal(s.get('remotegpu_workspace_usage{workspace="metrics-team",resource="environments"}'), 1);
    // No storage limit was set: no limit series, so a ratio alert cannot fire on it.
    assert.equal(s.get('remotegpu_workspace_quota_limit{workspace="metrics-team",resource="storage_bytes"}'), undefined);
    assert.equal(
      [...s].filter(([k]) => k.startsWith("remotegpu_environments{")).reduce((n, [, v]) => n + v, 0),
      1,
    );
  });

  it("exports hosts, agents and the control plane's own health", async () => {
    const s = samples((await scrape(server)).text);
    const host = [...s.keys()].find((k) => k.startsWith('remotegpu_host_up{host="metrics-host"'));
    assert.ok(host && s.get(host) === 1, "the host is up");
    assert.equal([...s].filter(([k]) => k.startsWith('remotegpu_host_agent_connected{host="metrics-host"')).length, 1);
    assert.equal(s.get("remotegpu_leader"), 1);
    assert.ok((s.get("remotegpu_reconciler_lag_seconds") ?? -1) >= 0, "the leader has finished a reconciler pass");
    assert.equal(s.get("remotegpu_bus_connected"), 1);
    assert.ok((s.get("remotegpu_agent_hellos_total") ?? 0) >= 1);
    assert.ok((s.get("remotegpu_heartbeat_ack_seconds_count") ?? 0) >= 1);
    assert.ok((s.get('remotegpu_flush_duration_seconds_count{batch="last_seen"}') ?? 0) >= 1);
  });

  it("METRICS_GPU_SERIES moves the per-GPU series to /metrics/gpus, or turns them off", async () => {
    const separate = await startTestServer({ db: server.db, env: { METRICS_GPU_SERIES: "separate" } });
    const off = await startTestServer({ db: server.db, env: { METRICS_GPU_SERIES: "off" } });
    try {
      assert.doesNotMatch((await scrape(separate)).text, /remotegpu_gpu_utilization_ratio/);
      assert.match((await scrape(separate, "/metrics/gpus")).text, /# TYPE remotegpu_gpu_utilization_ratio gauge/);
      assert.equal((await scrape(off, "/metrics/gpus")).status, 404);
      assert.doesNotMatch((await scrape(off)).text, /remotegpu_gpu_utilization_ratio/);
    } finally {
      await separate.close();
      await off.close();
    }
  });

  it("METRICS_TOKEN closes both paths to scrapers without it (they name tenants)", async () => {
    const token = "metrics-secret-0123456789";
    const guarded = await startTestServer({ db: server.db, env: { METRICS_TOKEN: token } });
    try {
      for (const path of ["/metrics", "/metrics/gpus"]) {
        assert.equal((await scrape(guarded, path)).status, 401);
        const wrong = await fetch(`${guarded.baseUrl}${path}`, { headers: { authorization: "Bearer metrics-secret-0123456780" } });
        assert.equal(wrong.status, 401);
        const right = await fetch(`${guarded.baseUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
        assert.equal(right.status, 200);
        await right.text();
      }
    } finally {
      await guarded.close();
    }
  });

  it("a replica exports only the GPUs whose agents it holds, and fleet series only when it leads", async () => {
    const other = await startTestServer({ db: server.db, env: redisEnv });
    try {
      await other.app.maintain();
      // It knows the sample (shared through Redis) but leaves it to the replica that holds the agent.
      const gpu = (await other.client(GpuService).listGpus({})).gpus.find((g) => g.uuid === "GPU-m-0")!;
      assert.equal(gpu.latestSample?.metrics?.gpuUtilizationPercent, 42);
      const s = samples((await scrape(other)).text);
      assert.equal(
        [...s.keys()].filter((k) => k.startsWith("remotegpu_gpu_utilization_ratio{")).length,
        0,
        "the agent is on the first replica",
      );
      assert.equal(s.get("remotegpu_leader"), 0);
      assert.equal([...s.keys()].filter((k) => k.startsWith("remotegpu_host_up{")).length, 0, "only the leader exports hosts");
    } finally {
      await other.close();
    }
  });
});
