import { Migration } from "@mikro-orm/migrations";

export class Migration20261201001000_environments extends Migration {
  override async up(): Promise<void> {
    this.addSql(
      `create table "environment_logs" ("id" bigserial primary key, "environment_id" uuid not null, "time" timestamptz not null, "stream" varchar(8) not null, "text" text not null);`,
    );
    this.addSql(`create index "environment_logs_environment_index" on "environment_logs" ("environment_id", "id");`);
    this.addSql(
      `alter table "environment_logs" add constraint "environment_logs_environment_id_foreign" foreign key ("environment_id") references "environments" ("id") on update cascade on delete cascade;`,
    );

    this.addSql(
      `alter table "environments" add column "generation" int not null default 0, add column "workload_state" varchar(16) not null default '', add column "workload_message" text not null default '', add column "workload_generation" int not null default 0, add column "acted_at" timestamptz null, add column "attempts" int not null default 0;`,
    );
    this.addSql(`alter table "environments" add constraint "environments_workspace_name_unique" unique ("workspace_id", "name");`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "environment_logs" cascade;`);
    this.addSql(`alter table "environments" drop constraint "environments_workspace_name_unique";`);
    this.addSql(
      `alter table "environments" drop column "generation", drop column "workload_state", drop column "workload_message", drop column "workload_generation", drop column "acted_at", drop column "attempts";`,
    );
  }
}
