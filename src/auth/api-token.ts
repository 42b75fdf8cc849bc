import { EntitySchema } from "@mikro-orm/core";
import { Host } from "../host/host.js";
import { Workspace } from "../workspace/workspace.js";

export type TokenKind = "admin" | "host" | "workspace";
export type WorkspaceRole = "admin" | "member" | "viewer";

/** A stored token: only the SHA-256 of its secret is kept. */
export class ApiToken {
  /** Public part of the token string; used to find the row without scanning. */
  id!: string;
  kind!: TokenKind;
  name!: string;
  secretHash!: string;
  host: Host | null = null;
  workspace: Workspace | null = null;
  role: WorkspaceRole | null = null;
  createdAt!: Date;
  expiresAt: Date | null = null;
  revokedAt: Date | null = null;
  lastUsedAt: Date | null = null;
}

export const ApiTokenSchema = new EntitySchema<ApiToken>({
  class: ApiToken,
  tableName: "api_tokens",
  properties: {
    id: { type: "string", length: 32, primary: true },
    kind: { type: "string", length: 16 },
    name: { type: "string", length: 100 },
    secretHash: { type: "string", length: 64 },
    host: { kind: "m:1", entity: () => Host, nullable: true, deleteRule: "cascade" },
    workspace: { kind: "m:1", entity: () => Workspace, nullable: true, deleteRule: "cascade" },
    role: { type: "string", length: 16, nullable: true },
    createdAt: { type: "Date", columnType: "timestamptz" },
    expiresAt: { type: "Date", columnType: "timestamptz", nullable: true },
    revokedAt: { type: "Date", columnType: "timestamptz", nullable: true },
    lastUsedAt: { type: "Date", columnType: "timestamptz", nullable: true },
  },
});
