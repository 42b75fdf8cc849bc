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
});
