import type { Principal } from "../auth/principal.js";
import { PermissionDeniedError } from "../errors.js";

/**
 * Who may call what. "public": no token (health, reflection). "admin": cluster admin tokens.
 * "host": a host agent token or an admin; the handler then checks the host is the token's own.
 */
export type Access = "public" | "admin" | "host";

const RULES: Record<string, Access> = {
  "remotegpu.v1.HostService/Heartbeat": "host",
  "remotegpu.v1.HostService/StreamHeartbeats": "host",
};

const PUBLIC_SERVICES = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

export function accessFor(service: string, method: string): Access {
  if (PUBLIC_SERVICES.has(service)) return "public";
  return RULES[`${service}/${method}`] ?? "admin";
}

export function authorize(access: Access, principal: Principal, rpc: string): void {
  if (principal.kind === "admin") return;
  if (access === "host" && principal.kind === "host") return;
  throw new PermissionDeniedError(`a ${principal.kind} token may not call ${rpc}`);
}
