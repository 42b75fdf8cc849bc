import { Migration } from "@mikro-orm/migrations";

export class Migration20261206000000_agent_runtime extends Migration {
  override async up(): Promise<void> {
    this.addSql(
      `alter table "environments" add column "storage_used_bytes" bigint not null default 0, add column "primary_port" int not null default 0;`,
    );
    // PORT keeps naming the first port of each environment, as it did.
    this.addSql(`update "environments" set "primary_port" = ("ports"->0->>'containerPort')::int where jsonb_array_length("ports") > 0;`);
    // The documented default size, which environments created without a size never got: their
    // volumes now count against the storage quota like the others.
    this.addSql(`update "environments" set "storage_bytes" = 10737418240 where "storage_bytes" = 0;`);
    this.addSql(
      `alter table "hosts" add column "containers_supported" boolean not null default false, add column "agent_connected_at" timestamptz null;`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "environments" drop column "storage_used_bytes", drop column "primary_port";`);
    this.addSql(`alter table "hosts" drop column "containers_supported", drop column "agent_connected_at";`);
  }
}
