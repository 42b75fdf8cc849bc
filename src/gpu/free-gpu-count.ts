import { EntitySchema, PrimaryKeyProp } from "@mikro-orm/core";
import { Host } from "../host/host.js";

/**
 * How many GPUs of a host are free (AVAILABLE, held by nobody), per model and, under model "", of
 * any model. Database triggers on the GPU table keep it in step with the GPU rows, in the same
 * transaction (migration `free_gpu_counts`); nothing in the application writes it. Placement reads it
 * to find the best-fit host without counting the fleet's GPUs.
 */
export class FreeGpuCount {
  declare [PrimaryKeyProp]?: ["host", "model"];
  host!: Host;
  model!: string;
  free!: number;
}

export const FreeGpuCountSchema = new EntitySchema<FreeGpuCount>({
  class: FreeGpuCount,
  tableName: "free_gpu_counts",
  indexes: [{ name: "free_gpu_counts_best_fit_index", properties: ["model", "free", "host"] }],
  properties: {
    host: { kind: "m:1", entity: () => Host, primary: true, deleteRule: "cascade" },
    model: { type: "string", length: 128, primary: true },
    free: { type: "integer" },
  },
});
