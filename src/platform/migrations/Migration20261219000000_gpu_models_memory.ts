import { Migration } from "@mikro-orm/migrations";

export class Migration20261219000000_gpu_models_memory extends Migration {
  override async up(): Promise<void> {
    // ListGpuModels: the largest free GPU of a model is the first entry of its range, read backwards,
    // instead of the most of every free GPU of the fleet (its counts come from free_gpu_counts).
    this.addSql(
      `create index "gpus_free_model_memory_index" on "gpus" ("model", "memory_bytes") where status = 'AVAILABLE' and holder is null and not mig_enabled;`,
    );
  }

  override async down(): Promise<void> {
    this.addSql(`drop index "gpus_free_model_memory_index";`);
  }
}
