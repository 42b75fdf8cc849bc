import { MikroORM, defineConfig, type Options } from "@mikro-orm/postgresql";
import { Migrator } from "@mikro-orm/migrations";
import { HostSchema } from "../host/host.js";
import { GpuSchema } from "../gpu/gpu.js";
import { WorkspaceSchema, ResourceQuotaSchema } from "../workspace/workspace.js";
import { EnvironmentLogLineSchema, EnvironmentSchema, PortMappingSchema } from "../environment/environment.js";
import { ApiTokenSchema } from "../auth/api-token.js";
import { TelemetryBucketSchema } from "../telemetry/telemetry-bucket.js";
import { AuditEventSchema } from "../audit/audit-event.js";
import { LogArchiveSchema, WorkspaceFileSchema } from "../storage/workspace-file.js";
import { migrations } from "./migrations/index.js";

export { MikroORM };
export type { EntityManager } from "@mikro-orm/postgresql";

export const entities = [
  HostSchema,
  GpuSchema,
  WorkspaceSchema,
  ResourceQuotaSchema,
  EnvironmentSchema,
  PortMappingSchema,
  ApiTokenSchema,
  TelemetryBucketSchema,
  AuditEventSchema,
  EnvironmentLogLineSchema,
  WorkspaceFileSchema,
  LogArchiveSchema,
];

// Any fixed number works: it only has to be the same for every replica.
const MIGRATION_LOCK_KEY = 7_315_482_901;

export function ormOptions(clientUrl: string, poolMax = 20): Options {
  return defineConfig({
    clientUrl,
    entities,
    extensions: [Migrator],
    forceUtcTimezone: true,
    allowGlobalContext: false,
    pool: { min: 0, max: poolMax },
    migrations: { migrationsList: migrations, snapshot: false, transactional: true, allOrNothing: true, silent: true },
    // Connect at start-up, so an unreachable database stops the start with its own message.
    connect: true,
  });
}

/**
 * Connects and applies pending migrations. Replicas starting together serialise on an advisory lock,
 * so each migration runs exactly once.
 */
export async function openDatabase(clientUrl: string, poolMax?: number): Promise<MikroORM> {
  const orm = await MikroORM.init(ormOptions(clientUrl, poolMax));
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
