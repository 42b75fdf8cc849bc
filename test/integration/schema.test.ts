import { strict as assert } from "node:assert";
import { entities } from "../../src/entities.js";
import { openDatabase } from "../../src/platform/database.js";
import { migrations } from "../../src/platform/migrations/index.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";

describe("database schema", () => {
  let db: TestDatabase;
  before(async () => {
    db = await createTestDatabase();
  });
  after(() => db.drop());

  it("is what the committed migrations make, and matches the entities exactly", async () => {
    // Two replicas starting at once: the advisory lock lets each migration run exactly once.
    const [a, b] = await Promise.all([openDatabase(db.url, entities, 2), openDatabase(db.url, entities, 2)]);
    try {
      const pending = await a.getMigrator().getPendingMigrations();
      assert.deepEqual(pending, []);
      const drift = await a.schema.getUpdateSchemaSQL({ wrap: false });
      assert.equal(drift.trim(), "", `entities and migrations disagree; add a migration:\n${drift}`);
      const executed = await b.getMigrator().getExecutedMigrations();
      assert.equal(executed.length, migrations.length, "each migration ran once");
    } finally {
      await a.close();
      await b.close();
    }
  });
});
