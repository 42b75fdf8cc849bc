import { Migration } from "@mikro-orm/migrations";

export class Migration20261130222022_telemetry extends Migration {
  override async up(): Promise<void> {
    this.addSql(
      `create table "gpu_telemetry" ("id" bigserial primary key, "gpu_id" uuid not null, "bucket_start" timestamptz not null, "sample_count" int not null, "stats" jsonb not null);`,
    );
    this.addSql(`create index "gpu_telemetry_gpu_time_index" on "gpu_telemetry" ("gpu_id", "bucket_start");`);
    this.addSql(`create index "gpu_telemetry_time_index" on "gpu_telemetry" ("bucket_start");`);

    this.addSql(
      `alter table "gpu_telemetry" add constraint "gpu_telemetry_gpu_id_foreign" foreign key ("gpu_id") references "gpus" ("id") on update cascade on delete cascade;`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists "gpu_telemetry" cascade;`);
  }
}
