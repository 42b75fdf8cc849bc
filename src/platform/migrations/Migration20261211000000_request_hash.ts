import { Migration } from "@mikro-orm/migrations";

export class Migration20261211000000_request_hash extends Migration {
  override async up(): Promise<void> {
    // A digest of the request that created an environment with a request id; null for older rows,
    // whose request id then answers any request as before.
    this.addSql(`alter table "environments" add column "request_hash" varchar(64) null;`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table "environments" drop column "request_hash";`);
  }
}
