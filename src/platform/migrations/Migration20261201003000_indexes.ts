import { Migration } from "@mikro-orm/migrations";

export class Migration20261201003000_indexes extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create index "gpus_environment_index" on "gpus" ("environment_id");`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index "gpus_environment_index";`);
  }
}
