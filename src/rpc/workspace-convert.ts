// Conversion of workspace-area messages: workspaces, quotas, usage, tokens, audit events.
import { QUOTA_UNITS_PER_GPU } from "../gpu/gpu.js";
import { create } from "@bufbuild/protobuf";
import {
  ApiTokenRole,
  ApiTokenSchema as ApiTokenMessageSchema,
  AuditEventSchema as AuditEventMessageSchema,
  ResourceQuotaSchema as ResourceQuotaMessageSchema,
  ResourceUsageSchema,
  WorkspaceSchema as WorkspaceMessageSchema,
  WorkspaceFileSchema as WorkspaceFileMessageSchema,
  type ResourceQuota as ResourceQuotaMessage,
} from "../../gen/remotegpu/v1/workspace_pb.js";
import type { AuditEvent } from "../audit/audit-event.js";
import type { WorkspaceFile } from "../storage/workspace-file.js";
import type { ApiToken, WorkspaceRole } from "../auth/api-token.js";
import type { QuotaLimits, Usage } from "../workspace/quota-ledger.js";
import type { ResourceQuota, Workspace } from "../workspace/workspace.js";
import { type Violations, toSafeNumber } from "../validation.js";
import { enumMap, ts } from "./convert.js";

export const tokenRole = enumMap<WorkspaceRole, ApiTokenRole>([
  ["admin", ApiTokenRole.ADMIN],
  ["member", ApiTokenRole.MEMBER],
  ["viewer", ApiTokenRole.VIEWER],
]);

export function workspaceToMessage(w: Workspace) {
  return create(WorkspaceMessageSchema, {
    id: w.id,
    name: w.name,
    displayName: w.displayName,
    labels: w.labels,
    createTime: ts(w.createdAt),
    updateTime: ts(w.updatedAt),
  });
}

const big = (n: number | null) => (n === null ? undefined : BigInt(n));

export function quotaToMessage(q: ResourceQuota) {
  return create(ResourceQuotaMessageSchema, {
    workspaceId: q.workspace.id,
    maxGpus: q.maxGpus ?? undefined,
    maxGpusPerModel: q.maxGpusPerModel,
    maxMigSlicesPerProfile: q.maxMigSlicesPerProfile,
    allowedGpuModels: q.allowedGpuModels,
    maxEnvironments: q.maxEnvironments ?? undefined,
    maxCpuMillicores: big(q.maxCpuMillicores),
    maxMemoryBytes: big(q.maxMemoryBytes),
    maxStorageBytes: big(q.maxStorageBytes),
    updateTime: ts(q.updatedAt),
  });
}

/** The limits of a SetResourceQuota request; an absent field is unlimited. */
export function quotaFromMessage(v: Violations, q: ResourceQuotaMessage): QuotaLimits {
  // The sign is checked with the other limits by the ledger; only what JavaScript cannot hold is refused here.
  const opt = (field: string, n: bigint | undefined) =>
    n === undefined ? null : toSafeNumber(v, `quota.${field}`, n, BigInt(Number.MIN_SAFE_INTEGER));
  return {
    maxGpus: q.maxGpus ?? null,
    maxGpusPerModel: { ...q.maxGpusPerModel },
    maxMigSlicesPerProfile: { ...q.maxMigSlicesPerProfile },
    allowedGpuModels: [...q.allowedGpuModels],
    maxEnvironments: q.maxEnvironments ?? null,
    maxCpuMillicores: opt("max_cpu_millicores", q.maxCpuMillicores),
    maxMemoryBytes: opt("max_memory_bytes", q.maxMemoryBytes),
    maxStorageBytes: opt("max_storage_bytes", q.maxStorageBytes),
  };
}

export function usageToMessage(u: Usage) {
  return create(ResourceUsageSchema, {
    gpus: u.gpus,
    gpusPerModel: u.gpusPerModel,
    gpuWeight: u.gpuUnits / QUOTA_UNITS_PER_GPU,
    migSlicesPerProfile: u.migSlicesPerProfile,
    environments: u.environments,
    cpuMillicores: BigInt(u.cpuMillicores),
    memoryBytes: BigInt(u.memoryBytes),
    storageBytes: BigInt(u.storageBytes),
    volumeUsedBytes: BigInt(u.volumeUsedBytes),
  });
}

export function tokenToMessage(t: ApiToken) {
  return create(ApiTokenMessageSchema, {
    id: t.id,
    workspaceId: t.workspace?.id ?? "",
    name: t.name,
    role: t.role ? tokenRole.toProto(t.role) : ApiTokenRole.UNSPECIFIED,
    createTime: ts(t.createdAt),
    expireTime: ts(t.expiresAt),
    lastUseTime: ts(t.lastUsedAt),
    revokeTime: ts(t.revokedAt),
    clusterAdmin: t.kind === "admin",
  });
}

export function auditEventToMessage(e: AuditEvent) {
  return create(AuditEventMessageSchema, {
    id: e.id,
    time: ts(e.time),
    actorId: e.actorId,
    actorKind: e.actorKind,
    workspaceId: e.workspaceId ?? "",
    method: e.method,
    targetId: e.targetId,
    code: e.code,
    requestId: e.requestId,
    detail: e.detail,
  });
}

export function fileToMessage(f: WorkspaceFile) {
  return create(WorkspaceFileMessageSchema, {
    path: f.path,
    sizeBytes: BigInt(f.sizeBytes),
    contentType: f.contentType,
    modifyTime: ts(f.updatedAt),
  });
}
