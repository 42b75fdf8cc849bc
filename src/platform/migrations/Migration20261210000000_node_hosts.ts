import { Migration } from "@mikro-orm/migrations";

export class Migration20261210000000_node_hosts extends Migration {
  override async up(): Promise<void> {
    // What a host's Kubernetes Node last said; null for hosts registered through the API.
    this.addSql(`alter table "hosts" add column "node_state" jsonb null;`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "hosts" drop column "node_state";`);
  }
}
