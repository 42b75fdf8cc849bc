import { BigIntType, EntitySchema } from "@mikro-orm/core";

/** One mutating call: who, what, on which object, and how it ended. */
export class AuditEvent {
  id!: string;
  time!: Date;
  actorId!: string;
  actorKind!: string;
  /** Not a foreign key: the record outlives a deleted workspace. */
  workspaceId: string | null = null;
  method!: string;
  targetId = "";
  code!: string;
  requestId = "";
  /** For events that are not one call (an SSH connection closing): what happened. */
  detail = "";
}

export const AuditEventSchema = new EntitySchema<AuditEvent>({
  class: AuditEvent,
  tableName: "audit_events",
  indexes: [
    { name: "audit_events_time_index", properties: ["time", "id"] },
    { name: "audit_events_workspace_time_index", properties: ["workspaceId", "time", "id"] },
  ],
  properties: {
    id: { type: new BigIntType("string"), primary: true, autoincrement: true },
    time: { type: "Date", columnType: "timestamptz" },
    actorId: { type: "string", length: 32 },
    actorKind: { type: "string", length: 16 },
    workspaceId: { type: "uuid", nullable: true },
    method: { type: "string", length: 128 },
    targetId: { type: "string", length: 128 },
    code: { type: "string", length: 32 },
    requestId: { type: "string", length: 128 },
    detail: { type: "string", length: 512, default: "" },
  },
});
