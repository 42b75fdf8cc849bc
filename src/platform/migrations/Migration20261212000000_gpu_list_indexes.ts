import { Migration } from "@mikro-orm/migrations";

export class Migration20261212000000_gpu_list_indexes extends Migration {
  override async up(): Promise<void> {
    // ListGpus: a page of a status or model filter starts at its key in host order, and total_size is
    // an index-only scan. Host ids repeat once per GPU, so these stay small (deduplicated) and quick to
    // count through; the free GPUs' index also serves placement's lookup of a host's free GPUs.
    this.addSql(`create index "gpus_status_host_index" on "gpus" ("status", "host_id");`);
    this.addSql(`create index "gpus_model_host_index" on "gpus" ("model", "host_id");`);
    this.addSql(`create index "gpus_free_index" on "gpus" ("host_id") where "status" = 'AVAILABLE' and "holder" is null;`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index "gpus_free_index";`);
    this.addSql(`drop index "gpus_model_host_index";`);
    this.addSql(`drop index "gpus_status_host_index";`);
  }
}
