import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import pg from "pg";
import { entities } from "../../src/entities.js";
import type { GpuStatus } from "../../src/gpu/gpu.js";
import { GpuInventory, type GpuFilter } from "../../src/gpu/gpu-inventory.js";
import { systemClock } from "../../src/platform/clock.js";
import { openDatabase, type MikroORM } from "../../src/platform/database.js";
import { LatestSamples } from "../../src/telemetry/latest-samples.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";

const H100 = "NVIDIA H100 80GB HBM3";
const L4 = "NVIDIA L4";

describe("ListGpus total_size (real PostgreSQL)", () => {
  let db: TestDatabase;
  let orm: MikroORM;
  let sql: pg.Client;
  let inventory: GpuInventory;

  before(async () => {
    db = await createTestDatabase();
    orm = await openDatabase(db.url, entities, 4);
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    inventory = new GpuInventory(orm, systemClock, new LatestSamples());
  });
  after(async () => {
    await sql.end();
    await orm.close();
    await db.drop();
  });

  async function addHost(
    status: string,
    schedulable: boolean,
    labels: Record<string, string>,
    models: string[],
  ): Promise<{ id: string; gpuIds: string[] }> {
    const id = randomUUID();
    await sql.query(
      `insert into hosts (id, name, address, labels, cpu_millicores, memory_bytes, disk_bytes, agent_version, status, status_message,
         schedulable, last_heartbeat_at, runtime, kubernetes_node_name, runtime_unavailable_reason, created_at, updated_at, version)
       values ($1, $2, '10.0.0.1', $3, 0, 0, 0, 'test', $4, '', $5, now(), 'AGENT', '', '', now(), now(), 1)`,
      [id, `host-${id.slice(0, 8)}`, JSON.stringify(labels), status, schedulable],
    );
    const gpuIds = models.map(() => randomUUID());
    // One statement for all, as a hello's inventory is written.
    await sql.query(
      `insert into gpus (id, host_id, index, uuid, model, memory_bytes, status, health_reasons, created_at, updated_at, version)
       select g.id, $1, g.i - 1, 'GPU-' || g.id, g.model, 0, 'AVAILABLE', '[]', now(), now(), 1
         from unnest($2::uuid[], $3::text[]) with ordinality g(id, model, i)`,
      [id, gpuIds, models],
    );
    return { id, gpuIds };
  }

  const FILTERS: [string, Partial<GpuFilter>][] = [
    ["none", {}],
    ["model", { model: H100 }],
    ["free only", { freeOnly: true }],
    ["free only, model", { freeOnly: true, model: L4 }],
    ["label", { labels: { zone: "a" } }],
    ["label, free only", { labels: { zone: "a" }, freeOnly: true }],
    ["MIG profile", { migProfile: "1g.10gb" }],
    ...(["AVAILABLE", "ALLOCATED", "UNHEALTHY", "OFFLINE"] as GpuStatus[]).flatMap((status): [string, Partial<GpuFilter>][] => [
      [status, { status }],
      [`${status}, label`, { status, labels: { zone: "a" } }],
    ]),
  ];

  /** For every filter, its total_size and the GPUs its pages hold (3 to a page). */
  async function listAll(extra: [string, Partial<GpuFilter>][] = []): Promise<Record<string, { total: number; listed: number }>> {
    const out: Record<string, { total: number; listed: number }> = {};
    for (const [name, partial] of [...FILTERS, ...extra]) {
      const filter: GpuFilter = { freeOnly: false, labels: {}, ...partial };
      const seen = new Set<string>();
      let token = "";
      let total = -1;
      do {
        const page = await inventory.list(filter, 3, token);
        if (total !== -1) assert.equal(page.totalSize, total, `${name}: total_size changed between pages`);
        total = page.totalSize;
        for (const item of page.items) seen.add(item.gpu.id);
        token = page.nextPageToken;
      } while (token);
      out[name] = { total, listed: seen.size };
    }
    return out;
  }

  function assertTotalsMatch(listed: Record<string, { total: number; listed: number }>): void {
    for (const [name, { total, listed: n }] of Object.entries(listed)) assert.equal(total, n, `${name}: total_size ${total}, listed ${n}`);
  }

  /** The kept counts next to a recount of the GPU rows. */
  async function counts(): Promise<{ kept: string[]; recounted: string[] }> {
    const rows = async (q: string) => (await sql.query<{ row: string }>(q)).rows.map((r) => r.row).sort();
    const key = "concat_ws(' ', host_id, model, mig_profile, status, free)";
    return {
      kept: await rows(`select ${key} || ' ' || n as row from gpu_list_counts where n <> 0`),
      recounted: await rows(
        `select ${key} || ' ' || count(*) as row
           from (select *, status = 'AVAILABLE' and holder is null and not mig_enabled as free from gpus) g
          group by host_id, model, mig_profile, status, free`,
      ),
    };
  }

  it("counts what the pages list, for every filter, through every kind of GPU write", async () => {
    const a = await addHost("ONLINE", true, { zone: "a" }, [H100, H100, L4, L4]);
    const b = await addHost("ONLINE", false, { zone: "a" }, [H100, H100]); // cordoned
    const c = await addHost("OFFLINE", true, { zone: "a" }, [L4, L4, L4]);
    const d = await addHost("ONLINE", true, { zone: "b" }, [H100, H100, H100]);
    await sql.query("update gpus set holder = 'x', status = 'ALLOCATED' where id = any($1)", [[a.gpuIds[0], d.gpuIds[0]]]);
    await sql.query("update gpus set status = 'UNHEALTHY' where id = $1", [a.gpuIds[3]]);
    await sql.query("update gpus set status = 'OFFLINE' where id = $1", [d.gpuIds[2]]); // gone from its host's report

    let listed = await listAll([["host", { hostId: a.id }]]);
    assertTotalsMatch(listed);
    // What a user reads: 12 GPUs; free means AVAILABLE on an open host (a: 2, d: 1).
    assert.equal(listed.none!.total, 12);
    assert.equal(listed["free only"]!.total, 3);
    assert.equal(listed["label, free only"]!.total, 2);
    assert.equal(listed.OFFLINE!.total, 4); // c's three and d's one
    assert.equal(listed["OFFLINE, label"]!.total, 3);
    assert.equal(listed.host!.total, 4);
    let kept = await counts();
    assert.deepEqual(kept.kept, kept.recounted);

    // One statement over two hosts that takes and frees; health back; a model that changes; MIG mode
    // with slices; a GPU removed; an update that moves nothing; a host going OFFLINE and one cordoned.
    await sql.query(
      `update gpus set holder = case when holder is null then 'y' end, status = case when holder is null then 'ALLOCATED' else 'AVAILABLE' end
        where id = any($1)`,
      [[a.gpuIds[0], a.gpuIds[1], d.gpuIds[1]]],
    );
    await sql.query("update gpus set status = 'AVAILABLE' where id = $1", [a.gpuIds[3]]);
    await sql.query("update gpus set model = $1 where id = $2", [L4, b.gpuIds[0]]);
    await sql.query("update gpus set mig_enabled = true where id = $1", [d.gpuIds[2]]);
    await sql.query("update gpus set status = 'AVAILABLE' where id = $1", [d.gpuIds[2]]);
    await sql.query(
      `insert into gpus (id, host_id, index, uuid, model, memory_bytes, status, health_reasons, created_at, updated_at, version, parent_id, mig_profile)
       select gen_random_uuid(), $1, 1000 + i, 'MIG-' || i, $2, 0, 'AVAILABLE', '[]', now(), now(), 1, $3, '1g.10gb' from generate_series(0, 2) i`,
      [d.id, `${H100} MIG 1g.10gb`, d.gpuIds[2]],
    );
    await sql.query("delete from gpus where id = $1", [c.gpuIds[0]]);
    await sql.query("update gpus set updated_at = now(), version = version + 1");
    await sql.query("update hosts set status = 'OFFLINE' where id = $1", [d.id]);
    await sql.query("update hosts set schedulable = false where id = $1", [a.id]);

    listed = await listAll();
    assertTotalsMatch(listed);
    assert.equal(listed.none!.total, 14);
    assert.equal(listed["MIG profile"]!.total, 3);
    assert.equal(listed["free only"]!.total, 0, "every host is cordoned or OFFLINE");
    kept = await counts();
    assert.deepEqual(kept.kept, kept.recounted);

    // A rolled-back change leaves the counts as they were; a deleted host takes its counts along.
    await sql.query("begin");
    await sql.query("update gpus set holder = 'z', status = 'ALLOCATED' where host_id = $1", [b.id]);
    await sql.query("rollback");
    await sql.query("delete from hosts where id = $1", [d.id]);
    listed = await listAll();
    assertTotalsMatch(listed);
    assert.equal(listed.none!.total, 8);
    kept = await counts();
    assert.deepEqual(kept.kept, kept.recounted);
    assert.equal((await sql.query("select 1 from gpu_list_counts where host_id = $1", [d.id])).rowCount, 0);
  });
});
