import { strict as assert } from "node:assert";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { gunzipSync } from "node:zlib";
import { Code } from "@connectrpc/connect";
import { EnvironmentService, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import type { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

// What the web console asks of the API (who a token is, which GPUs could be had, where a port is
// reached) and how the server serves the console's files.
describe("the API the web console uses, and its files", () => {
  let server: TestServer;
  let consoleDir: string;
  const agents: WorkloadAgent[] = [];
  const H100 = "NVIDIA H100 80GB HBM3";
  const A10 = "NVIDIA A10";

  async function newHost(name: string, models: string[], runtimeUnavailableReason = "", memoryBytes = 80n << 30n): Promise<string> {
    const { host, agentToken } = await server.client(HostService).createHost({ name, address: "10.9.0.1:7000" });
    const agent = new WorkloadAgent(
      server,
      agentToken,
      host!.id,
      models.map((model, index) => ({ index, uuid: `GPU-${name}-${index}`, model, memoryBytes })),
      new Map(),
      { runtimeUnavailableReason },
    );
    agents.push(agent);
    await agent.welcome;
    return host!.id;
  }

  before(async () => {
    consoleDir = await mkdtemp(path.join(tmpdir(), "remotegpu-console-files-"));
    await writeFile(path.join(consoleDir, "index.html"), "<!doctype html><title>console</title>");
    await writeFile(path.join(consoleDir, "app.js"), `console.log(${JSON.stringify("x".repeat(5000))});`);
    await writeFile(path.join(consoleDir, "notes.txt"), "not served: no known type");
    server = await startTestServer({ env: { CONSOLE_DIR: consoleDir, HOST_PORT_RANGE: "32000-32099" } });
  });
  after(async () => {
    for (const a of agents) await a.close();
    await server.close();
    await rm(consoleDir, { recursive: true, force: true });
  });

  it("GetCaller says who each token is", async () => {
    const workspaces = server.client(WorkspaceService);
    const admin = await workspaces.getCaller({});
    assert.equal(admin.clusterAdmin, true);
    assert.equal(admin.tokenId, "config-admin");
    assert.equal(admin.workspaceId, "");

    const workspaceId = (await workspaces.createWorkspace({ name: "caller-team" })).workspace!.id;
    for (const role of [ApiTokenRole.ADMIN, ApiTokenRole.MEMBER, ApiTokenRole.VIEWER]) {
      const { apiToken, secret } = await workspaces.createApiToken({ workspaceId, name: `t-${role}`, role });
      const caller = await server.client(WorkspaceService, { token: secret }).getCaller({});
      assert.deepEqual(
        { clusterAdmin: caller.clusterAdmin, workspaceId: caller.workspaceId, role: caller.role, tokenId: caller.tokenId },
        { clusterAdmin: false, workspaceId, role, tokenId: apiToken!.id },
      );
    }
    await expectCode(server.client(WorkspaceService, { token: "rgpu_nonsense" }).getCaller({}), Code.Unauthenticated, "invalid token");
  });

  it("ListGpuModels counts free healthy GPUs per model on hosts that take environments, within the quota's models", async () => {
    const workspaces = server.client(WorkspaceService);
    const workspaceId = (await workspaces.createWorkspace({ name: "models-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const big = await newHost("models-big", [H100, H100, H100, A10]);
    // Memory is the largest of the free GPUs that count: the small host's, not the closed hosts' below.
    await newHost("models-small", [H100, H100], "", 81n << 30n);
    const cordoned = await newHost("models-cordoned", [H100, H100, H100, H100, H100], "", 96n << 30n);
    await server.client(HostService).cordonHost({ id: cordoned });
    // Neither a host whose agent cannot run environments nor one that went OFFLINE counts (nor its memory).
    await newHost("models-unable", [H100, H100, H100, H100, H100, H100], "no container engine", 97n << 30n);
    await newHost("models-gone", [H100, H100, H100, H100, H100, H100, H100], "", 98n << 30n);
    const goneAgent = agents.pop()!;
    await goneAgent.close();
    (server.clock as ManualClock).advance(120_000); // past the grace: hosts whose agent is silent go OFFLINE
    for (const a of agents) await a.beat();
    await server.app.maintain();
    const models = async () => (await envs.listGpuModels({ workspaceId })).models.map((m) => [m.model, m.freeGpus, m.maxPerHost]);

    assert.deepEqual(await models(), [
      [A10, 1, 1],
      [H100, 5, 3],
    ]);
    assert.equal((await envs.listGpuModels({ workspaceId })).models[1]!.memoryBytes, 81n << 30n);

    // A held GPU and an unhealthy one are not free. Best fit fills the small host.
    await envs.createEnvironment({ workspaceId, name: "holds-two", image: "x", gpuCount: 2, gpuModel: H100 });
    const gpus = server.client(GpuService);
    const a10 = (await gpus.listGpus({ hostId: big, model: A10 })).gpus[0]!;
    await gpus.updateGpu({ gpu: { id: a10.id, status: GpuStatus.UNHEALTHY }, updateMask: { paths: ["status"] } });
    assert.deepEqual(await models(), [[H100, 3, 3]]);
    assert.equal((await envs.listGpuModels({ workspaceId })).models[0]!.memoryBytes, 80n << 30n, "the small host's are held");

    // Capped by what the quota leaves: 2 of max_gpus 3 are held.
    await workspaces.setResourceQuota({ quota: { workspaceId, maxGpus: 3 } });
    assert.deepEqual(await models(), [[H100, 1, 1]]);
    await workspaces.setResourceQuota({ quota: { workspaceId, maxGpusPerModel: { [H100]: 2 } } });
    assert.deepEqual(await models(), [], "the model's own limit is used up");
    await workspaces.setResourceQuota({ quota: { workspaceId, allowedGpuModels: [A10] } });
    assert.deepEqual(await models(), [], "only models the quota allows");

    const other = (await workspaces.createWorkspace({ name: "models-other" })).workspace!.id;
    const { secret } = await workspaces.createApiToken({ workspaceId: other, name: "m", role: ApiTokenRole.MEMBER });
    await expectCode(server.client(EnvironmentService, { token: secret }).listGpuModels({ workspaceId }), Code.PermissionDenied);
    await expectCode(envs.listGpuModels({ workspaceId: "" }), Code.InvalidArgument, "workspace_id");
  });

  it("gives every mapped port the address to connect to, in every answer that lists it", async () => {
    const workspaceId = (await server.client(WorkspaceService).createWorkspace({ name: "ports-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    const { environment } = await envs.createEnvironment({
      workspaceId,
      name: "with-ports",
      image: "x",
      ports: [
        { name: "ssh", containerPort: 22 },
        { name: "web", containerPort: 8080, protocol: PortProtocol.HTTP },
      ],
    });
    const byName = (list: { name: string; address: string; hostPort: number }[]) => Object.fromEntries(list.map((p) => [p.name, p]));
    for (const mappings of [
      environment!.portMappings,
      (await envs.getEnvironment({ id: environment!.id })).environment!.portMappings,
      (await envs.listEnvironments({ workspaceId })).environments[0]!.portMappings,
      (await envs.listPortMappings({ environmentId: environment!.id })).portMappings,
    ]) {
      const { ssh, web } = byName(mappings);
      assert.equal(ssh!.address, `10.9.0.1:${ssh!.hostPort}`);
      assert.equal(web!.address, `10.9.0.1:${web!.hostPort}`);
    }
  });

  it("serves the console under /ui/ with its security headers, gzipped when asked, and sends a browser at / there", async () => {
    const root = await fetch(`${server.baseUrl}/`, { redirect: "manual", headers: { accept: "text/html,*/*" } });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get("location"), "/ui/");
    assert.equal(
      (await fetch(`${server.baseUrl}/`, { redirect: "manual" })).status,
      404,
      "a client that is not a browser gets no redirect",
    );

    const page = await fetch(`${server.baseUrl}/ui/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type")!, /^text\/html/);
    assert.match(page.headers.get("content-security-policy")!, /default-src 'self'.*frame-ancestors 'none'/);
    assert.equal(page.headers.get("x-content-type-options"), "nosniff");
    assert.equal(await page.text(), "<!doctype html><title>console</title>");

    // Node's fetch asks for gzip and unpacks it; a raw request shows what was sent.
    const http = await import("node:http");
    const get = (acceptEncoding: string) =>
      new Promise<{ encoding?: string; body: Buffer }>((resolve, reject) => {
        http
          .get(`${server.baseUrl}/ui/app.js`, { headers: { "accept-encoding": acceptEncoding } }, (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => resolve({ encoding: res.headers["content-encoding"], body: Buffer.concat(chunks) }));
          })
          .on("error", reject);
      });
    assert.equal((await get("gzip;q=0, identity")).encoding, undefined, "q=0 refuses gzip");
    const raw = await get("br, gzip;q=0.8");
    assert.equal(raw.encoding, "gzip");
    assert.ok(raw.body.length < 1000, `gzipped: ${raw.body.length} bytes`);
    assert.match(gunzipSync(raw.body).toString(), /^console\.log\("x{5000}"\);$/);

    assert.equal((await fetch(`${server.baseUrl}/ui/notes.txt`)).status, 404);
    assert.equal((await fetch(`${server.baseUrl}/ui/sub/app.js`)).status, 404, "no directories");
    const bare = await fetch(`${server.baseUrl}/ui`, { redirect: "manual" });
    assert.equal(bare.status, 301);
    assert.equal(bare.headers.get("location"), "/ui/");
    assert.equal((await fetch(`${server.baseUrl}/ui/app.js`, { method: "POST" })).status, 404);
    assert.equal((await fetch(`${server.baseUrl}/metrics`)).status, 200, "other paths still reach /metrics");
  });

  it("says how to build the console when it is not built", async () => {
    const empty = await mkdtemp(path.join(tmpdir(), "remotegpu-console-empty-"));
    const bare = await startTestServer({ env: { CONSOLE_DIR: empty } });
    try {
      const res = await fetch(`${bare.baseUrl}/ui/`);
      assert.equal(res.status, 503);
      assert.match(await res.text(), /npm run build/);
    } finally {
      await bare.close();
      await rm(empty, { recursive: true, force: true });
    }
  });
});
