import { strict as assert } from "node:assert";
import { Environment } from "../../src/environment/environment.js";
import { QuotaExceededError } from "../../src/errors.js";
import { ManualClock } from "../../src/platform/clock.js";
import { openDatabase, type MikroORM } from "../../src/platform/database.js";
import { entities } from "../../src/entities.js";
import { QuotaLedger, type Demand } from "../../src/workspace/quota-ledger.js";
import { WorkspaceRegistry } from "../../src/workspace/workspace-registry.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";

const unaudited = () => undefined;

describe("QuotaLedger under concurrency (real PostgreSQL)", () => {
  let db: TestDatabase;
  let orm: MikroORM;
  let ledger: QuotaLedger;
  let workspaces: WorkspaceRegistry;
  const clock = new ManualClock();

  before(async () => {
    db = await createTestDatabase();
    orm = await openDatabase(db.url, entities, 30);
    ledger = new QuotaLedger(orm, clock);
    workspaces = new WorkspaceRegistry(orm, clock);
  });
  after(async () => {
    await orm.close();
    await db.drop();
  });

  /** Reserves `demand` and records an environment holding it, in one transaction, as CreateEnvironment does. */
  function reserveEnvironment(workspaceId: string, demand: Demand) {
    return orm.em.fork().transactional(async (em) => {
      await ledger.reserve(em, workspaceId, demand);
      const now = clock.now();
      em.create(Environment, {
        workspace: workspaceId,
        name: `env-${Math.random().toString(36).slice(2, 10)}`,
        image: "img",
        cpuMillicores: demand.cpuMillicores ?? 0,
        memoryBytes: demand.memoryBytes ?? 0,
        createdAt: now,
        updatedAt: now,
      });
    });
  }

  async function race(limits: Parameters<QuotaLedger["set"]>[1], demand: Demand, dimension: string) {
    const ws = await workspaces.create({ name: `race-${Math.random().toString(36).slice(2, 10)}`, displayName: "", labels: {} }, unaudited);
    await ledger.set(ws.id, limits, unaudited);
    const results = await Promise.allSettled(Array.from({ length: 100 }, () => reserveEnvironment(ws.id, demand)));
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    for (const r of refused) {
      assert.ok(r.reason instanceof QuotaExceededError, `refused with ${String(r.reason)}`);
      assert.equal(r.reason.dimension, dimension);
    }
    return { succeeded: results.length - refused.length, usage: (await ledger.usage(ws.id)).usage };
  }

  const none = {
    maxGpus: null,
    maxGpusPerModel: {},
    maxMigSlicesPerProfile: {},
    allowedGpuModels: [],
    maxEnvironments: null,
    maxCpuMillicores: null,
    maxMemoryBytes: null,
    maxStorageBytes: null,
  };

  it("lets exactly 10 of 100 concurrent reservations through a quota of 10 environments, every time", async () => {
    for (let round = 0; round < 5; round++) {
      const { succeeded, usage } = await race({ ...none, maxEnvironments: 10 }, { environments: 1 }, "max_environments");
      assert.equal(succeeded, 10, `round ${round}`);
      assert.equal(usage.environments, 10);
    }
  });

  it("holds a CPU quota the same way when each request takes a different share of it", async () => {
    const { succeeded, usage } = await race(
      { ...none, maxCpuMillicores: 10_000 },
      { environments: 1, cpuMillicores: 1000 },
      "max_cpu_millicores",
    );
    assert.equal(succeeded, 10);
    assert.equal(usage.cpuMillicores, 10_000);
  });

  it("refuses new requests once a quota is lowered below usage, and keeps what runs", async () => {
    const ws = await workspaces.create({ name: "lowered", displayName: "", labels: {} }, unaudited);
    for (let i = 0; i < 3; i++) await reserveEnvironment(ws.id, { environments: 1 });
    await ledger.set(ws.id, { ...none, maxEnvironments: 1 }, unaudited);
    await assert.rejects(
      reserveEnvironment(ws.id, { environments: 1 }),
      (err: unknown) => err instanceof QuotaExceededError && /max_environments is 1, 3 in use/.test(err.message),
    );
    assert.equal((await ledger.usage(ws.id)).usage.environments, 3);
  });
});
