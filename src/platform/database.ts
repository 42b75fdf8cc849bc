import { stripVTControlCharacters } from "node:util";
import { DefaultLogger, MikroORM, defineConfig, type LogContext, type LoggerOptions, type Options } from "@mikro-orm/postgresql";
import { Migrator } from "@mikro-orm/migrations";
import { EmbeddedPostgres } from "./embedded-postgres.js";
import { TransactionSpans } from "./tracing.js";
import type { Logger } from "./logger.js";
import { migrations } from "./migrations/index.js";

export { MikroORM };
export type { EntityManager } from "@mikro-orm/postgresql";

/** The entity schemas the database holds; the composition root names them (this layer knows none). */
export type Entities = NonNullable<Options["entities"]>;

// Any fixed number works: it only has to be the same for every replica.
const MIGRATION_LOCK_KEY = 7_315_482_901;

/**
 * `logger` receives what MikroORM and knex (its pool included) would otherwise print themselves as
 * plain, colored lines (a broken pooled connection, a deprecation), as JSON lines like the rest.
 */
export function ormOptions(clientUrl: string, entities: Entities, poolMax = 20, logger?: Logger): Options {
  return defineConfig({
    clientUrl,
    entities,
    extensions: [Migrator],
    subscribers: [new TransactionSpans()],
    forceUtcTimezone: true,
    allowGlobalContext: false,
    pool: { min: 0, max: poolMax },
    ...(logger
      ? { loggerFactory: (options: LoggerOptions) => new OrmLogger(options, logger), driverOptions: { log: knexLog(logger) } }
      : {}),
    migrations: { migrationsList: migrations, snapshot: false, transactional: true, allOrNothing: true, silent: true },
    // Connect at start-up, so an unreachable database stops the start with its own message.
    connect: true,
  });
}

/**
 * Connects and applies pending migrations. Replicas starting together serialise on an advisory lock,
 * so each migration runs exactly once.
 */
export async function openDatabase(clientUrl: string, entities: Entities, poolMax?: number, logger?: Logger): Promise<MikroORM> {
  const orm = await MikroORM.init(ormOptions(clientUrl, entities, poolMax, logger));
  try {
    const knex = orm.em.getConnection().getKnex();
    await knex.transaction(async (trx) => {
      await trx.raw("select pg_advisory_xact_lock(?)", [MIGRATION_LOCK_KEY]);
      await orm.getMigrator().up({ transaction: trx });
    });
  } catch (err) {
    await orm.close(true);
    throw err;
  }
  return orm;
}

/** Whether the database answers now, for readiness probes. */
export async function databaseAnswers(orm: MikroORM): Promise<boolean> {
  return orm.em
    .getConnection()
    .execute("select 1")
    .then(
      () => true,
      () => false,
    );
}

export interface DatabaseOptions {
  /** The PostgreSQL to use; unset: an embedded one, in `dataDir`, on `embeddedPort`. */
  url?: string;
  dataDir: string;
  embeddedPort: number;
  poolSize: number;
  entities: Entities;
}

/** An open, migrated database, and the embedded PostgreSQL under it when there is one. */
export interface Database {
  orm: MikroORM;
  url: string;
  close(): Promise<void>;
}

/** Opens the configured database, or starts the embedded PostgreSQL first; stops it again if opening fails. */
export async function startDatabase(options: DatabaseOptions, logger: Logger): Promise<Database> {
  const embedded = options.url ? undefined : await EmbeddedPostgres.start(options.dataDir, options.embeddedPort, logger);
  const url = options.url ?? embedded!.url;
  const orm = await openDatabase(url, options.entities, options.poolSize, logger).catch(async (err: unknown) => {
    await embedded?.stop();
    throw err;
  });
  return {
    orm,
    url,
    async close() {
      await orm.close();
      await embedded?.stop();
    },
  };
}

/** MikroORM's messages (only warnings and deprecations unless debugging is on), written by `target`. */
class OrmLogger extends DefaultLogger {
  constructor(
    options: LoggerOptions,
    private readonly target: Logger,
  ) {
    super(options);
  }

  override log(namespace: string, message: string, context?: LogContext): void {
    if (!this.isEnabled(namespace as Parameters<DefaultLogger["isEnabled"]>[0], context)) return;
    const level = context?.level === "error" ? "error" : context?.level === "warning" || namespace === "deprecated" ? "warn" : "info";
    this.target[level]({ component: "mikro-orm", namespace }, stripVTControlCharacters(message).trim());
  }
}

/** knex's log hooks; without them it prints to the console (e.g. "Connection Error: ..." when a pooled connection broke). */
function knexLog(target: Logger) {
  const write = (level: "warn" | "error" | "debug") => (message: unknown) => {
    if (typeof message === "string") target[level]({ component: "knex" }, stripVTControlCharacters(message));
    else target[level]({ component: "knex", detail: message }, "knex");
  };
  return { warn: write("warn"), error: write("error"), deprecate: write("warn"), debug: write("debug") };
}
