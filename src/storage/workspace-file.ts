import { randomUUID } from "node:crypto";
import { BigIntType, EntitySchema, OptionalProps } from "@mikro-orm/core";
import { Workspace } from "../workspace/workspace.js";

/**
 * A file of a workspace: its path and metadata here, its content in the object store under
 * `objectKey`. Every write goes to a new key and the row is switched in one transaction, so readers
 * see the old content or the new, never a mix.
 */
export class WorkspaceFile {
  declare [OptionalProps]?: "contentType" | "pending";
  id: string = randomUUID();
  workspace!: Workspace;
  path!: string;
  objectKey!: string;
  sizeBytes!: number;
  contentType = "application/octet-stream";
  /** Issued a presigned PUT URL whose upload has not been seen yet: size unknown. */
  pending = false;
  createdAt!: Date;
  updatedAt!: Date;
}

export const WorkspaceFileSchema = new EntitySchema<WorkspaceFile>({
  class: WorkspaceFile,
  tableName: "workspace_files",
  uniques: [{ name: "workspace_files_workspace_path_unique", properties: ["workspace", "path"] }],
  properties: {
    id: { type: "uuid", primary: true },
    workspace: { kind: "m:1", entity: () => Workspace, deleteRule: "cascade" },
    path: { type: "string", length: 1024 },
    objectKey: { type: "string", length: 256 },
    sizeBytes: { type: new BigIntType("number") },
    contentType: { type: "string", length: 255 },
    pending: { type: "boolean" },
    createdAt: { type: "Date", columnType: "timestamptz" },
    updatedAt: { type: "Date", columnType: "timestamptz" },
  },
});

/** A deleted environment's log, gzipped in the object store; StreamLogs serves it after deletion. */
export class LogArchive {
  environmentId!: string;
  workspace!: Workspace;
  objectKey!: string;
  lineCount!: number;
  createdAt!: Date;
}

export const LogArchiveSchema = new EntitySchema<LogArchive>({
  class: LogArchive,
  tableName: "environment_log_archives",
  properties: {
    environmentId: { type: "uuid", primary: true },
    workspace: { kind: "m:1", entity: () => Workspace, deleteRule: "cascade" },
    objectKey: { type: "string", length: 256 },
    lineCount: { type: "integer" },
    createdAt: { type: "Date", columnType: "timestamptz" },
  },
});
