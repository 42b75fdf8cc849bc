import { Migration } from "@mikro-orm/migrations";

export class Migration20261201002000_storage extends Migration {
  override async up(): Promise<void> {
    this.addSql(
      `create table "environment_log_archives" ("environment_id" uuid not null, "workspace_id" uuid not null, "object_key" varchar(256) not null, "line_count" int not null, "created_at" timestamptz not null, constraint "environment_log_archives_pkey" primary key ("environment_id"));`,
    );
    this.addSql(
      `create table "workspace_files" ("id" uuid not null, "workspace_id" uuid not null, "path" varchar(1024) not null, "object_key" varchar(256) not null, "size_bytes" bigint not null, "content_type" varchar(255) not null default 'application/octet-stream', "pending" boolean not null default false, "created_at" timestamptz not null, "updated_at" timestamptz not null, constraint "workspace_files_pkey" primary key ("id"));`,
    );
    this.addSql(`alter table "workspace_files" add constraint "workspace_files_workspace_path_unique" unique ("workspace_id", "path");`);
    this.addSql(
      `alter table "environment_log_archives" add constraint "environment_log_archives_workspace_id_foreign" foreign key ("workspace_id") references "workspaces" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(
      `alter table "workspace_files" add constraint "workspace_files_workspace_id_foreign" foreign key ("workspace_id") references "workspaces" ("id") on update cascade on delete cascade;`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "environment_log_archives" cascade;`);
    this.addSql(`drop table if exists "workspace_files" cascade;`);
  }
}
