import type { DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type { WorkspaceRole } from "../auth/api-token.js";
import type { Principal } from "../auth/principal.js";
import { roleAtLeast } from "../auth/workspace-access.js";
import { PermissionDeniedError } from "../errors.js";

/**
 * Who may call an RPC. Cluster admins may call everything.
 * - "public": anyone, no token (health, reflection).
 * - "cluster-admin": cluster admins only (hosts, GPUs, creating workspaces, quotas).
 * - "host": a host's agent token too; the handler checks the host is the token's own.
 * - "workspace-admin" | "member" | "viewer": a workspace token with at least that role; the handler
 *   checks the workspace or object is the token's own.
 */
export type Access = "public" | "cluster-admin" | "host" | "workspace-admin" | "member" | "viewer";

const RULES: Record<string, Access> = {
  "remotegpu.v1.HostService/Heartbeat": "host",
  "remotegpu.v1.HostService/StreamHeartbeats": "host",
  "remotegpu.v1.HostService/AcceptSshTunnel": "host",

  "remotegpu.v1.WorkspaceService/GetWorkspace": "viewer",
  "remotegpu.v1.WorkspaceService/ListWorkspaces": "viewer",
  "remotegpu.v1.WorkspaceService/UpdateWorkspace": "workspace-admin",
  "remotegpu.v1.WorkspaceService/GetResourceQuota": "viewer",
  "remotegpu.v1.WorkspaceService/GetUsage": "viewer",
  "remotegpu.v1.WorkspaceService/CreateApiToken": "workspace-admin",
  "remotegpu.v1.WorkspaceService/ListApiTokens": "workspace-admin",
  "remotegpu.v1.WorkspaceService/RevokeApiToken": "workspace-admin",
  "remotegpu.v1.WorkspaceService/ListAuditEvents": "workspace-admin",
  "remotegpu.v1.WorkspaceService/GetCaller": "viewer",
  "remotegpu.v1.WorkspaceService/UploadFile": "member",
  "remotegpu.v1.WorkspaceService/DownloadFile": "viewer",
  "remotegpu.v1.WorkspaceService/ListFiles": "viewer",
  "remotegpu.v1.WorkspaceService/DeleteFile": "member",
  // A GET URL is a read; the handler asks for "member" when a PUT URL is requested.
  "remotegpu.v1.WorkspaceService/GetFileUrl": "viewer",

  "remotegpu.v1.EnvironmentService/CreateEnvironment": "member",
  "remotegpu.v1.EnvironmentService/GetEnvironment": "viewer",
  "remotegpu.v1.EnvironmentService/ListEnvironments": "viewer",
  "remotegpu.v1.EnvironmentService/StartEnvironment": "member",
  "remotegpu.v1.EnvironmentService/StopEnvironment": "member",
  "remotegpu.v1.EnvironmentService/RestartEnvironment": "member",
  "remotegpu.v1.EnvironmentService/DeleteEnvironment": "member",
  "remotegpu.v1.EnvironmentService/AddPortMapping": "member",
  "remotegpu.v1.EnvironmentService/RemovePortMapping": "member",
  "remotegpu.v1.EnvironmentService/ListPortMappings": "viewer",
  "remotegpu.v1.EnvironmentService/StreamLogs": "viewer",
  "remotegpu.v1.EnvironmentService/WatchEnvironments": "viewer",
  "remotegpu.v1.EnvironmentService/ListGpuModels": "member",
  "remotegpu.v1.EnvironmentService/OpenSshTunnel": "member",
  "remotegpu.v1.EnvironmentService/AddSshKey": "member",
  "remotegpu.v1.EnvironmentService/RemoveSshKey": "member",
};

const PUBLIC_SERVICES = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

const ROLE_OF: Partial<Record<Access, WorkspaceRole>> = { "workspace-admin": "admin", member: "member", viewer: "viewer" };

/** Anything not listed is for cluster admins: a new RPC is closed until someone opens it here. */
export function accessFor(service: string, method: string): Access {
  if (PUBLIC_SERVICES.has(service)) return "public";
  return RULES[`${service}/${method}`] ?? "cluster-admin";
}

export function authorize(access: Access, principal: Principal, rpc: string): void {
  if (principal.kind === "admin" || access === "public") return;
  if (access === "host" && principal.kind === "host") return;
  const role = ROLE_OF[access];
  if (principal.kind === "workspace" && role) {
    if (roleAtLeast(principal.role, role)) return;
    throw new PermissionDeniedError(`${rpc} needs the workspace role "${role}"; this token has "${principal.role}"`);
  }
  if (access === "cluster-admin") throw new PermissionDeniedError(`${rpc} needs a cluster admin token`);
  throw new PermissionDeniedError(`a ${principal.kind} token may not call ${rpc}`);
}

// Agent reports are telemetry, not operator actions: recording every heartbeat would bury the trail.
const UNAUDITED = new Set(["remotegpu.v1.HostService/Heartbeat", "remotegpu.v1.HostService/StreamHeartbeats"]);
// Streams that are audited anyway: the interceptor records a refusal before the handler (a viewer's
// token), the handler every other outcome of an SSH connection.
const AUDITED_STREAMS = new Set(["remotegpu.v1.EnvironmentService/OpenSshTunnel"]);

/** Mutating calls get an audit event: every unary or upload RPC that is not marked free of side effects. */
export function isAudited(service: string, method: DescMethod): boolean {
  if (PUBLIC_SERVICES.has(service) || UNAUDITED.has(`${service}/${method.name}`)) return false;
  if (AUDITED_STREAMS.has(`${service}/${method.name}`)) return true;
  if (method.methodKind !== "unary" && method.methodKind !== "client_streaming") return false;
  return method.idempotency !== MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
}
