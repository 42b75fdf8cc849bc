import { Migration } from "@mikro-orm/migrations";

export class Migration20261130214855_initial extends Migration {
  override async up(): Promise<void> {
    this.addSql(
      `create table "hosts" ("id" uuid not null, "name" varchar(253) not null, "address" varchar(255) not null, "labels" jsonb not null, "cpu_millicores" bigint not null default 0, "memory_bytes" bigint not null default 0, "disk_bytes" bigint not null default 0, "agent_version" varchar(64) not null default '', "status" varchar(16) not null default 'OFFLINE', "status_message" text not null default 'waiting for the first heartbeat', "schedulable" boolean not null default true, "last_heartbeat_at" timestamptz null, "runtime" varchar(16) not null default 'AGENT', "kubernetes_node_name" varchar(253) not null default '', "created_at" timestamptz not null, "updated_at" timestamptz not null, "version" int not null default 1, constraint "hosts_pkey" primary key ("id"));`,
    );
    this.addSql(`alter table "hosts" add constraint "hosts_name_unique" unique ("name");`);
    this.addSql(`create index "hosts_status_index" on "hosts" ("status");`);

    this.addSql(
      `create table "workspaces" ("id" uuid not null, "name" varchar(63) not null, "display_name" varchar(200) not null default '', "labels" jsonb not null, "created_at" timestamptz not null, "updated_at" timestamptz not null, constraint "workspaces_pkey" primary key ("id"));`,
    );
    this.addSql(`alter table "workspaces" add constraint "workspaces_name_unique" unique ("name");`);

    this.addSql(
      `create table "resource_quotas" ("workspace_id" uuid not null, "max_gpus" int null, "max_gpus_per_model" jsonb not null, "allowed_gpu_models" jsonb not null, "max_environments" int null, "max_cpu_millicores" bigint null, "max_memory_bytes" bigint null, "max_storage_bytes" bigint null, "updated_at" timestamptz not null, "version" int not null default 1, constraint "resource_quotas_pkey" primary key ("workspace_id"));`,
    );

    this.addSql(
      `create table "environments" ("id" uuid not null, "workspace_id" uuid not null, "name" varchar(63) not null, "image" varchar(512) not null, "command" jsonb not null, "args" jsonb not null, "env" jsonb not null, "gpu_count" int not null default 0, "gpu_model" varchar(128) not null default '', "cpu_millicores" bigint not null default 0, "memory_bytes" bigint not null default 0, "storage_bytes" bigint not null default 0, "ports" jsonb not null, "ssh_public_keys" jsonb not null, "idle_timeout_minutes" int not null default 0, "desired_state" varchar(16) not null default 'RUNNING', "status" varchar(16) not null default 'PENDING', "status_message" text not null default '', "host_id" uuid null, "request_id" varchar(128) null, "transitions" jsonb not null, "created_at" timestamptz not null, "updated_at" timestamptz not null, "version" int not null default 1, constraint "environments_pkey" primary key ("id"));`,
    );
    this.addSql(`create index "environments_status_index" on "environments" ("status");`);
    this.addSql(`alter table "environments" add constraint "environments_workspace_request_unique" unique ("workspace_id", "request_id");`);

    this.addSql(
      `create table "port_mappings" ("id" uuid not null, "environment_id" uuid not null, "host_id" uuid not null, "name" varchar(15) not null, "container_port" int not null, "protocol" varchar(8) not null default 'TCP', "host_port" int not null, "url" varchar(512) not null default '', "created_at" timestamptz not null, constraint "port_mappings_pkey" primary key ("id"));`,
    );
    this.addSql(`alter table "port_mappings" add constraint "port_mappings_host_port_unique" unique ("host_id", "host_port");`);
    this.addSql(`alter table "port_mappings" add constraint "port_mappings_environment_name_unique" unique ("environment_id", "name");`);

    this.addSql(
      `create table "gpus" ("id" uuid not null, "host_id" uuid not null, "index" int not null, "uuid" varchar(128) not null, "model" varchar(128) not null, "memory_bytes" bigint not null, "status" varchar(16) not null default 'AVAILABLE', "holder" varchar(128) null, "environment_id" uuid null, "health_reasons" jsonb not null, "driver_version" varchar(64) not null default '', "cuda_version" varchar(32) not null default '', "allocated_at" timestamptz null, "created_at" timestamptz not null, "updated_at" timestamptz not null, "version" int not null default 1, constraint "gpus_pkey" primary key ("id"));`,
    );
    this.addSql(`create index "gpus_status_model_index" on "gpus" ("status", "model");`);
    this.addSql(`alter table "gpus" add constraint "gpus_host_index_unique" unique ("host_id", "index");`);
    this.addSql(`alter table "gpus" add constraint "gpus_host_uuid_unique" unique ("host_id", "uuid");`);

    this.addSql(
      `create table "api_tokens" ("id" varchar(32) not null, "kind" varchar(16) not null, "name" varchar(100) not null, "secret_hash" varchar(64) not null, "host_id" uuid null, "workspace_id" uuid null, "role" varchar(16) null, "created_at" timestamptz not null, "expires_at" timestamptz null, "revoked_at" timestamptz null, "last_used_at" timestamptz null, constraint "api_tokens_pkey" primary key ("id"));`,
    );

    this.addSql(
      `alter table "resource_quotas" add constraint "resource_quotas_workspace_id_foreign" foreign key ("workspace_id") references "workspaces" ("id") on update cascade on delete cascade;`,
    );

    this.addSql(
      `alter table "environments" add constraint "environments_workspace_id_foreign" foreign key ("workspace_id") references "workspaces" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(
      `alter table "environments" add constraint "environments_host_id_foreign" foreign key ("host_id") references "hosts" ("id") on update cascade on delete set null;`,
    );

    this.addSql(
      `alter table "port_mappings" add constraint "port_mappings_environment_id_foreign" foreign key ("environment_id") references "environments" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(
      `alter table "port_mappings" add constraint "port_mappings_host_id_foreign" foreign key ("host_id") references "hosts" ("id") on update cascade on delete cascade;`,
    );

    this.addSql(
      `alter table "gpus" add constraint "gpus_host_id_foreign" foreign key ("host_id") references "hosts" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(
      `alter table "gpus" add constraint "gpus_environment_id_foreign" foreign key ("environment_id") references "environments" ("id") on update cascade on delete set null;`,
    );

    this.addSql(
      `alter table "api_tokens" add constraint "api_tokens_host_id_foreign" foreign key ("host_id") references "hosts" ("id") on update cascade on delete cascade;`,
    );
    this.addSql(
      `alter table "api_tokens" add constraint "api_tokens_workspace_id_foreign" foreign key ("workspace_id") references "workspaces" ("id") on update cascade on delete cascade;`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "environments" drop constraint "environments_host_id_foreign";`);

    this.addSql(`alter table "port_mappings" drop constraint "port_mappings_host_id_foreign";`);

    this.addSql(`alter table "gpus" drop constraint "gpus_host_id_foreign";`);

    this.addSql(`alter table "api_tokens" drop constraint "api_tokens_host_id_foreign";`);

    this.addSql(`alter table "resource_quotas" drop constraint "resource_quotas_workspace_id_foreign";`);

    this.addSql(`alter table "environments" drop constraint "environments_workspace_id_foreign";`);

    this.addSql(`alter table "api_tokens" drop constraint "api_tokens_workspace_id_foreign";`);

    this.addSql(`alter table "port_mappings" drop constraint "port_mappings_environment_id_foreign";`);

    this.addSql(`alter table "gpus" drop constraint "gpus_environment_id_foreign";`);

    this.addSql(`drop table if exists "hosts" cascade;`);

    this.addSql(`drop table if exists "workspaces" cascade;`);

    this.addSql(`drop table if exists "resource_quotas" cascade;`);

    this.addSql(`drop table if exists "environments" cascade;`);

    this.addSql(`drop table if exists "port_mappings" cascade;`);

    this.addSql(`drop table if exists "gpus" cascade;`);

    this.addSql(`drop table if exists "api_tokens" cascade;`);
  }
}
