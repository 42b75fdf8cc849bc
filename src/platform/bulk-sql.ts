import type { MikroORM } from "@mikro-orm/postgresql";

/**
 * Runs SQL with its parameters sent separately (knex to pg), for the batched writes of the heartbeat
 * path. MikroORM's execute() inlines parameters into the SQL text, which for a batch of thousands of
 * rows means escaping megabytes of JSON on the event loop.
 */
export async function bulkSql<T = Record<string, unknown>>(orm: MikroORM, sql: string, params: unknown[]): Promise<T[]> {
  const result = (await orm.em
    .getConnection()
    .getKnex()
    .raw(sql, params as never[])) as { rows: T[] };
  return result.rows;
}

/** A PostgreSQL array literal, passed as one parameter (knex would spread a JavaScript array). */
export function pgArray(values: string[]): string {
  // Inside the quotes of an element only a backslash and a double quote need escaping.
  return `{${values.map((v) => `"${v.replace(/[\\"]/g, "\\$&")}"`).join(",")}}`;
}
