import { Migration } from "@mikro-orm/migrations";

export class Migration20261207000000_runtime_unavailable extends Migration {
  override async up(): Promise<void> {
    // What each host's agent said in its last hello about not running environments; "" until one says so.
    this.addSql(`alter table "hosts" add column "runtime_unavailable_reason" text not null default '';`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "hosts" drop column "runtime_unavailable_reason";`);
  }
}
