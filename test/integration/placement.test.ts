import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import pg from "pg";
import { placeEnvironment, type Placement, type PlacementRequest } from "../../src/environment/placement.js";
import { entities } from "../../src/entities.js";
import { ConflictError, ResourceExhaustedError } from "../../src/errors.js";
import { openDatabase, type MikroORM } from "../../src/platform/database.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";

const H100 = "NVIDIA H100 80GB HBM3";
const A100 = "NVIDIA A100-SXM4-80GB";
/** Free, as placement counts it: a GPU in MIG mode never is (its slices are). */
const FREE = "status = 'AVAILABLE' and holder is null and not mig_enabled";

interface HostSpec {
  status?: string;
  schedulable?: boolean;
  runtimeUnavailableReason?: string;
  /** One model per GPU; each GPU free unless listed in `held` or `unhealthy` (by index). */
  gpus: string[];
  held?: number[];
  unhealthy?: number[];
}

describe("placement (real PostgreSQL)", () => {
  let db: TestDatabase;
  let orm: MikroORM;
  let sql: pg.Client;

  before(async () => {
    db = await createTestDatabase();
    orm = await openDatabase(db.url, entities, 10);
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
  });
  after(async () => {
    await sql.end();
    await orm.close();
    await db.drop();
  });
  beforeEach(() => sql.query("delete from hosts"));

  /** Hosts written straight into the tables, as an agent's hello and heartbeats would leave them. */
  async function addHost(spec: HostSpec): Promise<{ id: string; gpuIds: string[] }> {
    const id = randomUUID();
    await sql.query(
      `insert into hosts (id, name, address, labels, cpu_millicores, memory_bytes, disk_bytes, agent_version, status, status_message,
         schedulable, last_heartbeat_at, runtime, kubernetes_node_name, runtime_unavailable_reason, created_at, updated_at, version)
       values ($1, $2, '10.0.0.1', '{}', 0, 0, 0, 'test', $3, '', $4, now(), 'AGENT', '', $5, now(), now(), 1)`,
      [id, `host-${id.slice(0, 8)}`, spec.status ?? "ONLINE", spec.schedulable ?? true, spec.runtimeUnavailableReason ?? ""],
    );
    const gpuIds = spec.gpus.map(() => randomUUID());
    for (const [i, model] of spec.gpus.entries()) {
      const held = spec.held?.includes(i);
      const unhealthy = spec.unhealthy?.includes(i);
      await sql.query(
        `insert into gpus (id, host_id, index, uuid, model, memory_bytes, status, holder, health_reasons, created_at, updated_at, version)
         values ($1, $2, $3, $4, $5, 0, $6, $7, '[]', now(), now(), 1)`,
        [gpuIds[i], id, i, `GPU-${gpuIds[i]}`, model, unhealthy ? "UNHEALTHY" : held ? "ALLOCATED" : "AVAILABLE", held ? "someone" : null],
      );
    }
    return { id, gpuIds };
  }

  const gpus = (model: string, n: number) => Array.from({ length: n }, () => model);

  /**
   * A host with `parents` H100s in MIG mode, each with `profiles` as slices, and `whole` whole H100s
   * after them (indexes from `parents` on). Returns the ids of the slices, parents and whole GPUs.
   */
  async function addMigHost(
    parents: number,
    profiles: string[],
    whole = 0,
  ): Promise<{ id: string; slices: string[]; parents: string[]; whole: string[] }> {
    const host = await addHost({ gpus: gpus(H100, parents + whole) });
    const parentIds = host.gpuIds.slice(0, parents);
    await sql.query("update gpus set mig_enabled = true where id = any($1)", [parentIds]);
    const slices: string[] = [];
    for (const [p, parentId] of parentIds.entries())
      for (const [d, profile] of profiles.entries()) {
        const id = randomUUID();
        slices.push(id);
        await sql.query(
          `insert into gpus (id, host_id, index, uuid, model, memory_bytes, status, health_reasons, created_at, updated_at, version,
             parent_id, mig_profile, mig_placement)
           values ($1, $2, $3, $4, $5, 0, 'AVAILABLE', '[]', now(), now(), 1, $6, $7, '{"deviceIndex": 0, "gpuInstanceId": 0, "computeInstanceId": 0}')`,
          [id, host.id, 1000 * (p + 1) + d, `MIG-${id}`, `${H100} MIG ${profile}`, parentId, profile],
        );
      }
    return { id: host.id, slices, parents: parentIds, whole: host.gpuIds.slice(parents) };
  }

  function request(gpuCount: number, more: Partial<PlacementRequest> = {}): PlacementRequest {
    return { gpuCount, gpuModel: "", allowedModels: [], ...more };
  }

  /** Places in a transaction of its own, committed: the GPUs it picked are marked held, as CreateEnvironment marks them. */
  function place(req: PlacementRequest): Promise<Placement> {
    return orm.em.fork().transactional(async (em) => {
      const placement = await placeEnvironment(em, req);
      await em
        .getConnection()
        .execute(
          "update gpus set status = 'ALLOCATED', holder = 'test' where id in (select jsonb_array_elements_text(?::jsonb)::uuid)",
          [JSON.stringify(placement.gpus.map((g) => g.id))],
          "run",
          em.getTransactionContext(),
        );
      return placement;
    });
  }

  /** The kept counts next to a recount of the GPU rows, for comparing. */
  async function counts(): Promise<{ kept: string[]; recounted: string[] }> {
    const rows = async (q: string) => (await sql.query<{ row: string }>(q)).rows.map((r) => r.row).sort();
    return {
      kept: await rows("select host_id || ' ' || model || ' ' || free as row from free_gpu_counts where free <> 0"),
      recounted: await rows(
        `select host_id || ' ' || model || ' ' || n as row from (
           select host_id, model, count(*) as n from gpus where ${FREE} and model <> '' group by host_id, model
           union all select host_id, '', count(*) from gpus where ${FREE} and mig_profile = '' group by host_id) c`,
      ),
    };
  }

  it("keeps each host's free GPU counts, per model and in all, in step with every kind of GPU write", async () => {
    const a = await addHost({ gpus: [H100, H100, A100, A100], held: [1] });
    const b = await addHost({ gpus: gpus(H100, 4), unhealthy: [0] });
    let c = await counts();
    assert.deepEqual(c.kept, c.recounted);
    assert.ok(c.kept.includes(`${a.id}  3`) && c.kept.includes(`${a.id} ${H100} 1`) && c.kept.includes(`${b.id}  3`), c.kept.join("\n"));

    // One statement over two hosts, taking and freeing; health; a model that changes; a GPU removed.
    await sql.query(
      `update gpus set holder = case when holder is null then 'x' end, status = case when holder is null then 'ALLOCATED' else 'AVAILABLE' end
        where id = any($1)`,
      [[a.gpuIds[0], a.gpuIds[1], b.gpuIds[3]]],
    );
    await sql.query("update gpus set status = 'AVAILABLE' where id = $1", [b.gpuIds[0]]);
    await sql.query("update gpus set status = 'UNHEALTHY' where id = $1", [a.gpuIds[2]]);
    await sql.query("update gpus set model = $1 where id = $2", [A100, a.gpuIds[1]]);
    await sql.query("delete from gpus where id = $1", [a.gpuIds[3]]);
    await sql.query("update gpus set updated_at = now()"); // frees and takes nothing
    c = await counts();
    assert.deepEqual(c.kept, c.recounted);
    assert.ok(c.kept.includes(`${a.id}  1`) && c.kept.includes(`${a.id} ${A100} 1`) && c.kept.includes(`${b.id}  3`), c.kept.join("\n"));

    // A rolled-back change leaves the counts as they were; a deleted host takes its counts along.
    await sql.query("begin");
    await sql.query("update gpus set holder = 'y' where host_id = $1", [b.id]);
    await sql.query("rollback");
    await sql.query("delete from hosts where id = $1", [a.id]);
    c = await counts();
    assert.deepEqual(c.kept, c.recounted);
    assert.equal((await sql.query("select 1 from free_gpu_counts where host_id = $1", [a.id])).rowCount, 0);
  });

  it("picks the best fit: the host with the fewest free GPUs that are enough, and its lowest indexes", async () => {
    const one = await addHost({ gpus: gpus(H100, 4), held: [0, 1, 2] });
    const three = await addHost({ gpus: gpus(H100, 4), held: [1] });
    const five = await addHost({ gpus: gpus(H100, 8), held: [0, 1, 2] });
    await addHost({ gpus: gpus(H100, 8) });

    const two = await place(request(2));
    assert.equal(two.hostId, three.id);
    assert.deepEqual(
      two.gpus.map((g) => g.index),
      [0, 2],
    );
    assert.deepEqual(
      two.gpus.map((g) => g.id),
      [three.gpuIds[0], three.gpuIds[2]],
    );
    assert.equal((await place(request(4))).hostId, five.id);
    // The three-GPU and five-GPU hosts have one left now, as the one-GPU host: the lowest id of the three wins.
    const single = await place(request(1));
    assert.equal(single.hostId, [one.id, three.id, five.id].sort()[0]);
  });

  it("skips hosts that take no new work, and GPUs that are held or unhealthy", async () => {
    await addHost({ gpus: gpus(H100, 2), status: "OFFLINE" });
    await addHost({ gpus: gpus(H100, 2), status: "DRAINING" });
    await addHost({ gpus: gpus(H100, 2), schedulable: false });
    await addHost({ gpus: gpus(H100, 2), runtimeUnavailableReason: "no container engine answers" });
    await addHost({ gpus: gpus(H100, 4), held: [0, 1], unhealthy: [2] });
    const open = await addHost({ gpus: gpus(H100, 8), unhealthy: [0] });

    const placed = await place(request(2));
    assert.equal(placed.hostId, open.id);
    assert.deepEqual(
      placed.gpus.map((g) => g.index),
      [1, 2],
    );
    await sql.query("update hosts set schedulable = false where id = $1", [open.id]);
    await assert.rejects(place(request(2)), (err: unknown) => {
      assert.ok(err instanceof ResourceExhaustedError, String(err));
      assert.match(
        err.message,
        /no host with 2 free healthy GPU\(s\) on any online, schedulable host: the most free on one host is 1, 1 free in all; 1 host cannot run environments: no container engine answers/,
      );
      return true;
    });
  });

  it("takes only the model asked for, or the workspace's allowed models, also from hosts with several models", async () => {
    const mixed = await addHost({ gpus: [A100, H100, A100, H100, H100] });
    const h100s = await addHost({ gpus: gpus(H100, 8) });
    const a100s = await addHost({ gpus: gpus(A100, 8) });

    const exact = await place(request(2, { gpuModel: A100 }));
    assert.equal(exact.hostId, mixed.id);
    assert.deepEqual(
      exact.gpus.map((g) => [g.index, g.model]),
      [
        [0, A100],
        [2, A100],
      ],
    );
    // Three H100s left on the mixed host: four go to the H100 host.
    const four = await place(request(4, { allowedModels: [H100] }));
    assert.equal(four.hostId, h100s.id);
    assert.ok(four.gpus.every((g) => g.model === H100));
    // Allowed models together: the mixed host's three H100s fit three GPUs best.
    assert.equal((await place(request(3, { allowedModels: [H100, A100] }))).hostId, mixed.id);
    // Any model: the host with fewest free that fit (H100 host: 4 left, A100 host: 8).
    assert.equal((await place(request(4))).hostId, h100s.id);
    assert.equal((await place(request(8))).hostId, a100s.id);
    await assert.rejects(place(request(1, { gpuModel: "NVIDIA L4" })), /no host with 1 free healthy GPU\(s\) of model "NVIDIA L4"/);
    // A model name that needs quoting in an array literal is just a name.
    await assert.rejects(place(request(1, { allowedModels: ['a "quoted", {odd} \\ model'] })), ResourceExhaustedError);
  });

  it("places an environment without GPUs on an open host, and one that must stay on its host only there", async () => {
    await addHost({ gpus: [], schedulable: false });
    const empty = await addHost({ gpus: [] });
    const full = await addHost({ gpus: gpus(H100, 2) });
    const none = await place(request(0));
    assert.equal(none.hostId, empty.id);
    assert.deepEqual(none.gpus, []);

    assert.equal((await place(request(2, { onlyHost: full.id }))).hostId, full.id);
    await assert.rejects(
      place(request(1, { onlyHost: full.id })),
      /on host .*, where the environment's volume is: the most free on one host is 0/,
    );
  });

  /** A placement whose transaction stays open (its locks held) until `end` is called; it then commits or rolls back. */
  async function openPlacement(req: PlacementRequest, outcome: "commit" | "rollback" = "commit") {
    let end!: () => void;
    const ended = new Promise<void>((resolve) => (end = resolve));
    let placed!: (p: Placement) => void;
    const placement = new Promise<Placement>((resolve) => (placed = resolve));
    const done = orm.em
      .fork()
      .transactional(async (em) => {
        placed(await placeEnvironment(em, req));
        await ended;
        if (outcome === "rollback") throw new Error("rolled back");
      })
      .catch(() => undefined);
    return {
      placement: await placement,
      end: async () => {
        end();
        await done;
      },
    };
  }

  it("spreads concurrent placements over the hosts that fit, and shares a host when no other fits", async () => {
    const best = await addHost({ gpus: gpus(H100, 8), held: [0, 1, 2, 3, 4, 5] });
    const next = await addHost({ gpus: gpus(H100, 8), held: [0, 1, 2, 3] });

    // An open placement holds the best-fit host: another goes to the next best at once, though one
    // GPU of the best-fit host is still free.
    const first = await openPlacement(request(1));
    assert.equal(first.placement.hostId, best.id);
    assert.equal((await place(request(1))).hostId, next.id);
    // Where no other host will do, the host is shared: the other free GPU, without waiting.
    const shared = await place(request(1, { onlyHost: best.id }));
    assert.equal(shared.hostId, best.id);
    assert.notEqual(shared.gpus[0]!.id, first.placement.gpus[0]!.id);
    await first.end();
  });

  it("says a host whose free GPUs are being taken is contended (ABORTED, retry), not full", async () => {
    await addHost({ gpus: gpus(H100, 2) });
    const holding = await openPlacement(request(2), "rollback");
    await assert.rejects(place(request(2)), ConflictError);
    await holding.end();
    assert.equal((await place(request(2))).gpus.length, 2);
  });

  it("places MIG slices like a model, never their parent, and never gives a slice for any whole GPU", async () => {
    const mig = await addMigHost(1, ["3g.40gb", "1g.10gb", "1g.10gb"], 1);
    let c = await counts();
    assert.deepEqual(c.kept, c.recounted);
    assert.ok(c.kept.includes(`${mig.id}  1`) && c.kept.includes(`${mig.id} ${H100} MIG 1g.10gb 2`), c.kept.join("\n"));
    // Any GPU, or two of the parents' model: whole GPUs only (one here), never the parent.
    assert.deepEqual(
      (await place(request(1))).gpus.map((g) => g.id),
      mig.whole,
    );
    await assert.rejects(place(request(1)), ResourceExhaustedError);
    await assert.rejects(place(request(1, { gpuModel: H100 })), ResourceExhaustedError);
    // A profile: its slices, of the parent model asked for or any.
    const two = await place(request(2, { migProfile: "1g.10gb", gpuModel: H100 }));
    assert.deepEqual(
      two.gpus.map((g) => g.model),
      [`${H100} MIG 1g.10gb`, `${H100} MIG 1g.10gb`],
    );
    assert.deepEqual(
      (await place(request(1, { migProfile: "3g.40gb" }))).gpus.map((g) => g.id),
      [mig.slices[0]],
    );
    await assert.rejects(place(request(1, { migProfile: "1g.10gb" })), ResourceExhaustedError);
    // A slice model in the allowed list is no way to get slices without asking for a profile.
    await assert.rejects(place(request(1, { allowedModels: [`${H100} MIG 1g.10gb`] })), /ask for them with mig_profile/);
    // Leaving MIG mode makes the parent a free whole GPU again; its slices, gone, count for nothing.
    await sql.query("update gpus set status = 'OFFLINE' where parent_id = $1", [mig.parents[0]]);
    await sql.query("update gpus set mig_enabled = false where id = $1", [mig.parents[0]]);
    c = await counts();
    assert.deepEqual(c.kept, c.recounted);
    assert.deepEqual(
      (await place(request(1))).gpus.map((g) => g.id),
      mig.parents,
    );
  });

  it("never hands one MIG slice to two of many concurrent placements", async () => {
    // 8 hosts × 2 GPUs × 7 slices of 1g.10gb, and a whole GPU each: room for every request.
    for (let h = 0; h < 8; h++) await addMigHost(2, gpus("1g.10gb", 7), 1);
    const results = await Promise.allSettled(
      Array.from({ length: 48 }, (_, i) => place(i % 6 === 0 ? request(1) : request(1 + (i % 3), { migProfile: "1g.10gb" }))),
    );
    const placed = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    for (const r of results)
      if (r.status === "rejected")
        assert.ok(r.reason instanceof ConflictError || r.reason instanceof ResourceExhaustedError, String(r.reason));
    const ids = placed.flatMap((p) => p.gpus.map((g) => g.id));
    assert.equal(new Set(ids).size, ids.length, "a slice placed twice");
    for (const p of placed) {
      const slices = p.gpus.filter((g) => g.model.endsWith(" MIG 1g.10gb")).length;
      assert.ok(slices === 0 || slices === p.gpus.length, "slices and whole GPUs mixed");
    }
    assert.ok(placed.length >= 36, `${placed.length} of 48 placed`);
    const c = await counts();
    assert.deepEqual(c.kept, c.recounted);
  });

  it("never hands one GPU to two of many concurrent placements", async () => {
    // Room for all of them (up to 80 GPUs of 96), so every refusal is a lost race.
    for (let h = 0; h < 12; h++) await addHost({ gpus: gpus(h % 2 ? H100 : A100, 8) });
    const results = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => place(request(1 + (i % 3)))));
    const placed = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    for (const r of results)
      if (r.status === "rejected")
        assert.ok(r.reason instanceof ConflictError || r.reason instanceof ResourceExhaustedError, String(r.reason));
    const ids = placed.flatMap((p) => p.gpus.map((g) => g.id));
    assert.equal(new Set(ids).size, ids.length, "a GPU placed twice");
    assert.ok(placed.length >= 30, `${placed.length} of 40 placed`);
    const c = await counts();
    assert.deepEqual(c.kept, c.recounted);
  });
});
