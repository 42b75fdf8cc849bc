import { randomUUID } from "node:crypto";
import { BigIntType, EntitySchema, OptionalProps } from "@mikro-orm/core";

export class Workspace {
  id: string = randomUUID();
  name!: string;
  displayName = "";
  labels: Record<string, string> = {};
  createdAt!: Date;
  updatedAt!: Date;
}

export const WorkspaceSchema = new EntitySchema<Workspace>({
  class: Workspace,
  tableName: "workspaces",
  properties: {
    id: { type: "uuid", primary: true },
    name: { type: "string", length: 63, unique: "workspaces_name_unique" },
    displayName: { type: "string", length: 200 },
    labels: { type: "json" },
    createdAt: { type: "Date", columnType: "timestamptz" },
    updatedAt: { type: "Date", columnType: "timestamptz" },
  },
});

/** One row per workspace; a null limit is unlimited. The row is locked while reserving. */
export class ResourceQuota {
  declare [OptionalProps]?:
    | "maxGpus"
    | "maxGpusPerModel"
    | "maxMigSlicesPerProfile"
    | "allowedGpuModels"
    | "maxEnvironments"
    | "maxCpuMillicores"
    | "maxMemoryBytes"
    | "maxStorageBytes"
    | "version";
  workspace!: Workspace;
  maxGpus: number | null = null;
  maxGpusPerModel: Record<string, number> = {};
  /** Most MIG slices held at once per profile ("1g.10gb"), over all parent models. */
  maxMigSlicesPerProfile: Record<string, number> = {};
  allowedGpuModels: string[] = [];
  maxEnvironments: number | null = null;
  maxCpuMillicores: number | null = null;
  maxMemoryBytes: number | null = null;
  maxStorageBytes: number | null = null;
  updatedAt!: Date;
  version = 1;
}

export const ResourceQuotaSchema = new EntitySchema<ResourceQuota>({
  class: ResourceQuota,
  tableName: "resource_quotas",
  properties: {
    workspace: { kind: "1:1", entity: () => Workspace, primary: true, owner: true, deleteRule: "cascade" },
    maxGpus: { type: "integer", nullable: true },
    maxGpusPerModel: { type: "json" },
    maxMigSlicesPerProfile: { type: "json", default: "{}" },
    allowedGpuModels: { type: "json" },
    maxEnvironments: { type: "integer", nullable: true },
    maxCpuMillicores: { type: new BigIntType("number"), nullable: true },
    maxMemoryBytes: { type: new BigIntType("number"), nullable: true },
    maxStorageBytes: { type: new BigIntType("number"), nullable: true },
    updatedAt: { type: "Date", columnType: "timestamptz" },
    version: { type: "integer", version: true },
  },
});
