import { randomUUID } from "node:crypto";
import { BigIntType, EntitySchema, OptionalProps } from "@mikro-orm/core";
import { Host } from "../host/host.js";
import { Environment } from "../environment/environment.js";
import type { GpuSampleRecord } from "../telemetry/latest-samples.js";

export type GpuStatus = "AVAILABLE" | "ALLOCATED" | "UNHEALTHY" | "OFFLINE";

export class Gpu {
  declare [OptionalProps]?:
    | "status"
    | "holder"
    | "environment"
    | "healthReasons"
    | "driverVersion"
    | "cudaVersion"
    | "allocatedAt"
    | "version"
    | "migEnabled"
    | "parent"
    | "migProfile"
    | "migPlacement";
  id: string = randomUUID();
  host!: Host;
  index!: number;
  uuid!: string;
  model!: string;
  memoryBytes!: number;
  status: GpuStatus = "AVAILABLE";
  /** Who holds the GPU; null when free. Kept apart from status so an UNHEALTHY GPU still shows its holder. */
  holder: string | null = null;
  environment: Environment | null = null;
  healthReasons: string[] = [];
  driverVersion = "";
  cudaVersion = "";
  allocatedAt: Date | null = null;
  createdAt!: Date;
  updatedAt!: Date;
  version = 1;
  /** In MIG mode: scheduled only through its slices, never free itself. */
  migEnabled = false;
  /** Set on a MIG slice: its physical GPU. */
  parent: Gpu | null = null;
  /** Set on a MIG slice: its profile, e.g. "1g.10gb"; "" for a whole GPU. */
  migProfile = "";
  /** Set on a MIG slice: where it sits on its parent. */
  migPlacement: MigPlacement | null = null;
}

/** Where a MIG slice sits on its parent, as nvidia-smi numbers it. */
export interface MigPlacement {
  deviceIndex: number;
  gpuInstanceId: number;
  computeInstanceId: number;
}

/**
 * A whole GPU counts this many units against max_gpus; a MIG slice its share of it, exactly: 420 is
 * divisible by every number of compute slices a GPU has (7 on A100/H100/H200, 4 on A30, ...).
 */
export const QUOTA_UNITS_PER_GPU = 420;

/**
 * What a view shows of a GPU: a loaded Gpu has all of it; a list page reads just these columns, with
 * the few host fields it needs, instead of hydrating two entities per row.
 */
export type ShownGpu = Pick<
  Gpu,
  | "id"
  | "index"
  | "uuid"
  | "model"
  | "memoryBytes"
  | "status"
  | "holder"
  | "healthReasons"
  | "driverVersion"
  | "cudaVersion"
  | "allocatedAt"
  | "createdAt"
  | "updatedAt"
  | "migEnabled"
  | "migProfile"
  | "migPlacement"
> & {
  host: Pick<Host, "id" | "name" | "status">;
  environment: Pick<Environment, "id"> | null;
  parent: Pick<Gpu, "id"> | null;
};

/** A GPU with the latest sample shown beside it. */
export interface GpuView {
  gpu: ShownGpu;
  latestSample?: GpuSampleRecord;
}

/**
 * What a GPU's status reads as: a GPU of an OFFLINE host is OFFLINE whatever its row says. The row
 * keeps the GPU's own state (AVAILABLE, ALLOCATED, UNHEALTHY, or OFFLINE when its agent stopped
 * reporting it), so a host that comes back needs no GPU writes.
 */
export function effectiveGpuStatus(g: { status: GpuStatus; host: Pick<Host, "status"> }): GpuStatus {
  return g.host.status === "OFFLINE" ? "OFFLINE" : g.status;
}

/** The status a GPU returns to when its host is reachable again: its health and holder decide. */
export function statusWhenOnline(g: Pick<Gpu, "healthReasons" | "holder">): GpuStatus {
  if (g.healthReasons.length > 0) return "UNHEALTHY";
  return g.holder ? "ALLOCATED" : "AVAILABLE";
}

export const GpuSchema = new EntitySchema<Gpu>({
  class: Gpu,
  tableName: "gpus",
  uniques: [
    { name: "gpus_host_index_unique", properties: ["host", "index"] },
    { name: "gpus_host_uuid_unique", properties: ["host", "uuid"] },
  ],
  indexes: [
    { name: "gpus_status_model_index", properties: ["status", "model"] },
    // An environment's GPUs: usage, views and release look them up by environment.
    { name: "gpus_environment_index", properties: ["environment"] },
    // ListGpus: its filters in host order, and what total_size counts, index-only.
    { name: "gpus_status_host_index", properties: ["status", "host"] },
    { name: "gpus_model_host_index", properties: ["model", "host"] },
    {
      name: "gpus_mig_profile_index",
      expression: `create index "gpus_mig_profile_index" on "gpus" ("mig_profile", "model") where mig_profile <> ''`,
    },
    {
      name: "gpus_mig_enabled_index",
      expression: `create index "gpus_mig_enabled_index" on "gpus" ("host_id") where mig_enabled`,
    },
    {
      name: "gpus_free_index",
      expression: `create index "gpus_free_index" on "gpus" ("host_id") where status = 'AVAILABLE' and holder is null and not mig_enabled`,
    },
    // ListGpuModels: each model's largest free GPU.
    {
      name: "gpus_free_model_memory_index",
      expression: `create index "gpus_free_model_memory_index" on "gpus" ("model", "memory_bytes") where status = 'AVAILABLE' and holder is null and not mig_enabled`,
    },
  ],
  properties: {
    id: { type: "uuid", primary: true },
    host: { kind: "m:1", entity: () => Host, deleteRule: "cascade" },
    index: { type: "integer" },
    uuid: { type: "string", length: 128 },
    model: { type: "string", length: 128 },
    memoryBytes: { type: new BigIntType("number") },
    status: { type: "string", length: 16 },
    holder: { type: "string", length: 128, nullable: true },
    environment: { kind: "m:1", entity: () => Environment, nullable: true, deleteRule: "set null" },
    healthReasons: { type: "json" },
    driverVersion: { type: "string", length: 64 },
    cudaVersion: { type: "string", length: 32 },
    allocatedAt: { type: "Date", columnType: "timestamptz", nullable: true },
    createdAt: { type: "Date", columnType: "timestamptz" },
    updatedAt: { type: "Date", columnType: "timestamptz" },
    version: { type: "integer", version: true },
    migEnabled: { type: "boolean", default: false },
    parent: { kind: "m:1", entity: () => Gpu, nullable: true, deleteRule: "cascade", index: "gpus_parent_id_index" },
    migProfile: { type: "string", length: 32, default: "" },
    migPlacement: { type: "json", nullable: true },
  },
});
