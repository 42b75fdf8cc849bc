import { EntitySchema } from "@mikro-orm/core";
import { Gpu } from "../gpu/gpu.js";

/** [sample count, sum, maximum] of one metric within one bucket. */
export type MetricStat = [number, number, number];

/**
 * Telemetry history: one row per GPU per resolution interval, holding count, sum and maximum of each
 * metric, so any coarser step can be served exactly (average = sum of sums / sum of counts).
 */
export class TelemetryBucket {
  id!: string;
  gpu!: Gpu;
  bucketStart!: Date;
  sampleCount!: number;
  stats!: Record<string, MetricStat>;
}

export const TelemetryBucketSchema = new EntitySchema<TelemetryBucket>({
  class: TelemetryBucket,
  tableName: "gpu_telemetry",
  indexes: [
    { name: "gpu_telemetry_gpu_time_index", properties: ["gpu", "bucketStart"] },
    { name: "gpu_telemetry_time_index", properties: ["bucketStart"] },
  ],
  properties: {
    id: { type: "bigint", primary: true, autoincrement: true },
    gpu: { kind: "m:1", entity: () => Gpu, deleteRule: "cascade" },
    bucketStart: { type: "Date", columnType: "timestamptz" },
    sampleCount: { type: "integer" },
    stats: { type: "json" },
  },
});
