import { Migration } from "@mikro-orm/migrations";

export class Migration20261216000000_ssh_host_keys extends Migration {
  override async up(): Promise<void> {
    // The control plane's SSH host keys (src/platform/ssh-host-key.ts), shared by its replicas.
    this.addSql(
      `create table "ssh_host_keys" ("name" varchar(64) not null, "private_key" text not null, "created_at" timestamptz not null default now(), constraint "ssh_host_keys_pkey" primary key ("name"));`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`drop table "ssh_host_keys";`);
  }
}
