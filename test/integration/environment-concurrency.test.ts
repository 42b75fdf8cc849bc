import { strict as assert } from "node:assert";
import { Code, ConnectError } from "@connectrpc/connect";
import { EnvironmentService, type Environment } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

describe("200 concurrent CreateEnvironment calls (real PostgreSQL, real server)", () => {
  let server: TestServer;
  const agents: WorkloadAgent[] = [];

  before(async () => {
    server = await startTestServer({ env: { HOST_PORT_RANGE: "40000-40999" } });
    for (let h = 0; h < 3; h++) {
      const res = await server.client(HostService).createHost({ name: `busy-${h}`, address: `10.3.0.${h}` });
      const agent = new WorkloadAgent(
        server,
        res.agentToken,
        res.host!.id,
        Array.from({ length: 8 }, (_, i) => ({ index: i, uuid: `GPU-busy-${h}-${i}` })),
      );
      await agent.welcome;
      agents.push(agent);
    }
  });
  after(async () => {
    for (const a of agents) await a.close();
    await server.close();
  });

  it("never holds a GPU twice, never overruns a quota, never maps a port twice; every refusal says why", async () => {
    const workspaces = server.client(WorkspaceService);
    const envs = server.client(EnvironmentService);
    const gpuCapped = (await workspaces.createWorkspace({ name: "gpu-capped" })).workspace!.id;
    const envCapped = (await workspaces.createWorkspace({ name: "env-capped" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId: gpuCapped, maxGpus: 6 } });
    await workspaces.setResourceQuota({ quota: { workspaceId: envCapped, maxEnvironments: 5 } });

    const calls = Array.from({ length: 200 }, (_, i) => {
      const workspaceId = i % 2 === 0 ? gpuCapped : envCapped;
      const gpuCount = i % 4; // 0 to 3 GPUs
      const ports = Array.from({ length: 1 + (i % 3) }, (_, p) => ({ name: `p${p}`, containerPort: 8000 + p }));
      // ABORTED means "lost a race, retry": a client does, as this one.
      const attempt = (
        left: number,
      ): Promise<{ ok: true; env: Environment; gpuCount: number; ports: number; workspaceId: string } | { ok: false; err: ConnectError }> =>
        envs.createEnvironment({ workspaceId, name: `e${i}`, image: "img", command: ["x"], gpuCount, ports, requestId: `r${i}` }).then(
          (res) => ({ ok: true as const, env: res.environment!, gpuCount, ports: ports.length, workspaceId }),
          (err: unknown) => {
            const e = ConnectError.from(err);
            return e.code === Code.Aborted && left > 0 ? attempt(left - 1) : { ok: false as const, err: e };
          },
        );
      return attempt(5);
    });
    const results = await Promise.all(calls);
    const created = results.flatMap((r) => (r.ok ? [r] : []));
    const refused = results.flatMap((r) => (r.ok ? [] : [r.err]));

    for (const err of refused) {
      // The quotas allow 6 + at most 15 GPUs of the fleet's 24: every refusal is a quota's.
      assert.equal(Code[err.code], "ResourceExhausted", err.rawMessage);
      assert.match(err.rawMessage, /quota exceeded: (max_gpus|max_environments) is/);
    }
    // Both quotas were reached (the fleet has room for more than they allow).
    assert.ok(
      refused.some((e) => e.rawMessage.includes("max_gpus is 6")),
      "the GPU quota refused some",
    );
    assert.ok(
      refused.some((e) => e.rawMessage.includes("max_environments is 5")),
      "the environment quota refused some",
    );
    assert.ok(created.length > 0 && refused.length > 0, `${created.length} created, ${refused.length} refused`);

    // What each environment holds, from the server's answers.
    const gpuOwners = new Map<string, string>();
    for (const c of created) {
      assert.equal(c.env.gpuIds.length, c.gpuCount, "exactly the GPUs asked for");
      assert.equal(c.env.portMappings.length, c.ports);
      for (const g of c.env.gpuIds) {
        assert.ok(!gpuOwners.has(g), `GPU ${g} held by ${gpuOwners.get(g)} and ${c.env.id}`);
        gpuOwners.set(g, c.env.id);
      }
    }
    assert.ok(gpuOwners.size <= 24);
    const gpusOf = (ws: string) => created.filter((c) => c.workspaceId === ws).reduce((n, c) => n + c.gpuCount, 0);
    assert.ok(gpusOf(gpuCapped) <= 6, `gpu-capped holds ${gpusOf(gpuCapped)} GPUs`);
    assert.ok(created.filter((c) => c.workspaceId === envCapped).length <= 5);
    assert.equal((await workspaces.getUsage({ workspaceId: gpuCapped })).usage?.gpus, gpusOf(gpuCapped));

    // And from the database: one owner per GPU row, no host port twice.
    const knex = server.app.orm.em.getConnection().getKnex();
    const { rows: doubleGpus } = await knex.raw(
      "select environment_id, count(*) from gpus where environment_id is not null group by environment_id",
    );
    assert.equal(
      doubleGpus.reduce((n: number, r: { count: string }) => n + Number(r.count), 0),
      gpuOwners.size,
    );
    const { rows: doublePorts } = await knex.raw(
      "select host_id, host_port from port_mappings group by host_id, host_port having count(*) > 1",
    );
    assert.deepEqual(doublePorts, []);
    const { rows: mapped } = await knex.raw("select count(*)::int as n from port_mappings");
    assert.equal(
      mapped[0].n,
      created.reduce((n, c) => n + c.ports, 0),
    );
  });

  it("holds for MIG slices: no slice twice, max_gpus by weight and slices per profile never overrun", async () => {
    // Two hosts, each with two H100s in MIG mode: 3g.40gb and four 1g.10gb apiece (16 × 1g, 4 × 3g).
    for (let h = 0; h < 2; h++) {
      const res = await server.client(HostService).createHost({ name: `mig-busy-${h}`, address: `10.3.1.${h}` });
      const inventory = [0, 1].flatMap((p) => [
        { index: p, uuid: `GPU-mig-busy-${h}-${p}`, migEnabled: true },
        ...["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"].map((profile, d) => ({
          index: 1000 * (p + 1) + d,
          uuid: `MIG-mig-busy-${h}-${p}-${d}`,
          parentUuid: `GPU-mig-busy-${h}-${p}`,
          migProfile: profile,
          migDeviceIndex: d,
        })),
      ]);
      const agent = new WorkloadAgent(server, res.agentToken, res.host!.id, inventory);
      await agent.welcome;
      agents.push(agent);
    }
    const workspaces = server.client(WorkspaceService);
    const envs = server.client(EnvironmentService);
    const ws = (await workspaces.createWorkspace({ name: "mig-capped" })).workspace!.id;
    // Two GPUs' worth (14/7), and at most 9 slices of 1g.10gb: both bind before the fleet runs out.
    await workspaces.setResourceQuota({ quota: { workspaceId: ws, maxGpus: 2, maxMigSlicesPerProfile: { "1g.10gb": 9 } } });
    const calls = Array.from({ length: 60 }, (_, i) => {
      const migProfile = i % 3 === 0 ? "3g.40gb" : "1g.10gb";
      const gpuCount = migProfile === "3g.40gb" ? 1 : 1 + (i % 2);
      const attempt = (left: number): Promise<{ env?: Environment; err?: ConnectError; gpuCount: number; migProfile: string }> =>
        envs.createEnvironment({ workspaceId: ws, name: `m${i}`, image: "img", gpuCount, migProfile }).then(
          (res) => ({ env: res.environment!, gpuCount, migProfile }),
          (err: unknown) => {
            const e = ConnectError.from(err);
            return e.code === Code.Aborted && left > 0 ? attempt(left - 1) : { err: e, gpuCount, migProfile };
          },
        );
      return attempt(5);
    });
    const results = await Promise.all(calls);
    const created = results.filter((r) => r.env);
    for (const r of results.filter((r) => r.err))
      assert.match(r.err!.rawMessage, /quota exceeded: (max_gpus|max_mig_slices_per_profile\["1g\.10gb"\]) is/, r.err!.rawMessage);
    const owners = new Map<string, string>();
    for (const c of created) {
      assert.equal(c.env!.gpuIds.length, c.gpuCount);
      for (const g of c.env!.gpuIds) {
        assert.ok(!owners.has(g), `slice ${g} held twice`);
        owners.set(g, c.env!.id);
      }
    }
    const sevenths = created.reduce((n, c) => n + c.gpuCount * (c.migProfile === "3g.40gb" ? 3 : 1), 0);
    const small = created.filter((c) => c.migProfile === "1g.10gb").reduce((n, c) => n + c.gpuCount, 0);
    assert.ok(sevenths <= 14, `${sevenths}/7 GPUs held under max_gpus 2`);
    assert.ok(small <= 9, `${small} 1g.10gb slices held under a limit of 9`);
    assert.ok(
      results.some((r) => r.err),
      "the quota refused some",
    );
    const usage = (await workspaces.getUsage({ workspaceId: ws })).usage!;
    assert.equal(Math.round(usage.gpuWeight * 7), sevenths);
    assert.equal(usage.migSlicesPerProfile["1g.10gb"] ?? 0, small);
  });
});
