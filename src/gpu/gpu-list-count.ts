import { EntitySchema, PrimaryKeyProp } from "@mikro-orm/core";
import { Host } from "../host/host.js";

/**
 * How many GPUs of a host have one combination of the values ListGpus filters on (model, MIG profile,
 * status, free). Database triggers on the GPU table keep it in step with the GPU rows, in the same
 * transaction (migration `gpu_list_counts`); nothing in the application writes it. ListGpus' total_size
 * adds these up: about one row per host instead of one per GPU.
 */
export class GpuListCount {
  declare [PrimaryKeyProp]?: ["host", "model", "migProfile", "status", "free"];
  host!: Host;
  model!: string;
  migProfile!: string;
  status!: string;
  free!: boolean;
  n!: number;
}

export const GpuListCountSchema = new EntitySchema<GpuListCount>({
  class: GpuListCount,
  tableName: "gpu_list_counts",
  properties: {
    host: { kind: "m:1", entity: () => Host, primary: true, deleteRule: "cascade" },
    model: { type: "string", length: 128, primary: true },
    migProfile: { type: "string", length: 32, primary: true },
    status: { type: "string", length: 16, primary: true },
    free: { type: "boolean", primary: true },
    n: { type: "integer" },
  },
});
