import { Migration } from "@mikro-orm/migrations";

export class Migration20261214000000_audit_detail extends Migration {
  override async up(): Promise<void> {
    // What an event that is not one call says happened (an SSH connection closing); "" for calls.
    this.addSql(`alter table "audit_events" add column "detail" varchar(512) not null default '';`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "audit_events" drop column "detail";`);
  }
}
