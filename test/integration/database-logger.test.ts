// The database pool's own messages (knex's "Connection Error: ..." when a pooled connection broke,
// MikroORM's warnings) go through the project's logger as JSON lines, not to the console.
import { strict as assert } from "node:assert";
import { stripVTControlCharacters } from "node:util";
import pg from "pg";
import { entities } from "../../src/entities.js";
import { openDatabase, type MikroORM } from "../../src/platform/database.js";
import { createLogger } from "../../src/platform/logger.js";
import { eventually } from "../support/eventually.js";
import { ADMIN_URL, createTestDatabase, type TestDatabase } from "../support/database.js";

describe("database pool messages", () => {
  let db: TestDatabase;
  let orm: MikroORM | undefined;
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger("debug", { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });

  before(async () => {
    db = await createTestDatabase();
  });
  after(async () => {
    await orm?.close(true);
    await db.drop();
  });

  it("reports a broken pooled connection through the logger", async () => {
    orm = await openDatabase(db.url, entities, 2, logger);
    const knex = orm.em.getConnection().getKnex();
    await knex.raw("select 1");

    // The server ends the pooled connection, as a restart or failover does.
    const admin = new pg.Client({ connectionString: ADMIN_URL });
    await admin.connect();
    try {
      const name = new URL(db.url).pathname.slice(1);
      await admin.query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()", [name]);
    } finally {
      await admin.end();
    }

    // The pool notices at its next checkout, says so, and carries on with a new connection.
    await eventually("the pool to reconnect", () =>
      knex.raw("select 1").then(
        () => true,
        () => false,
      ),
    );
    const warning = lines.find((l) => l.component === "knex");
    assert.ok(warning, `a knex line among ${JSON.stringify(lines)}`);
    assert.equal(warning.level, 40, "warn");
    assert.match(String(warning.msg), /Connection Error/);
    assert.equal(stripVTControlCharacters(String(warning.msg)), warning.msg, "no terminal colours");
  });
});
