import { EntitySchema } from "@mikro-orm/core";
import type { MikroORM } from "@mikro-orm/postgresql";

/**
 * The control plane's SSH host key, for the environments it serves SSH for itself (Kubernetes):
 * made by the first replica that needs it and shared by all, so a client's known_hosts holds
 * whichever replica it reaches and across restarts.
 */
export class SshHostKey {
  name!: string;
  privateKey!: string;
  createdAt!: Date;
}

export const SshHostKeySchema = new EntitySchema<SshHostKey>({
  class: SshHostKey,
  tableName: "ssh_host_keys",
  properties: {
    name: { type: "string", length: 64, primary: true },
    privateKey: { type: "text" },
    createdAt: { type: "Date", columnType: "timestamptz", defaultRaw: "now()" },
  },
});

/** The shared host key named `name`: the one kept, or `make()`'s, stored when no replica stored one first. */
export async function sharedHostKey(orm: MikroORM, name: string, make: () => string): Promise<string> {
  const knex = orm.em.getConnection().getKnex();
  await knex("ssh_host_keys").insert({ name, private_key: make() }).onConflict("name").ignore();
  const row = await knex("ssh_host_keys").where({ name }).first("private_key");
  return row.private_key as string;
}
