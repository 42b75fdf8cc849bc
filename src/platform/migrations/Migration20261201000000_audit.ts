import { Migration } from "@mikro-orm/migrations";

export class Migration20261201000000_audit extends Migration {
  override async up(): Promise<void> {
    this.addSql(
      `create table "audit_events" ("id" bigserial primary key, "time" timestamptz not null, "actor_id" varchar(32) not null, "actor_kind" varchar(16) not null, "workspace_id" uuid null, "method" varchar(128) not null, "target_id" varchar(128) not null default '', "code" varchar(32) not null, "request_id" varchar(128) not null default '');`,
    );
    this.addSql(`create index "audit_events_time_index" on "audit_events" ("time", "id");`);
    this.addSql(`create index "audit_events_workspace_time_index" on "audit_events" ("workspace_id", "time", "id");`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "audit_events" cascade;`);
  }
}
