import type { MikroORM } from "@mikro-orm/postgresql";

/** `select status, count(*) ... group by status` as {status: count}. */
export async function countByStatus(orm: MikroORM, table: "hosts" | "gpus"): Promise<Record<string, number>> {
  const knex = orm.em.getConnection().getKnex();
  const rows: { status: string; n: number }[] = await knex(table).select("status", knex.raw("count(*)::int as n")).groupBy("status");
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}
