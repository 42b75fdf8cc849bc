import { PermissionDeniedError } from "../errors.js";
import { checkId } from "../ids.js";
import type { WorkspaceRole } from "./api-token.js";
import type { Principal } from "./principal.js";

const RANK: Record<WorkspaceRole, number> = { viewer: 1, member: 2, admin: 3 };

/** Whether a workspace token's role is at least `role`. */
export function roleAtLeast(have: WorkspaceRole, role: WorkspaceRole): boolean {
  return RANK[have] >= RANK[role];
}

/**
 * The one workspace a caller is confined to; undefined for cluster admins, who see all. Lists use it
 * as a filter, so a workspace token never learns what other workspaces hold.
 */
export function confinedTo(principal: Principal): string | undefined {
  if (principal.kind === "admin") return undefined;
  if (principal.kind === "workspace") return principal.workspaceId;
  throw new PermissionDeniedError("a host token may only run its agent stream");
}

/**
 * For calls naming a workspace: a workspace token may only name its own (PERMISSION_DENIED
 * otherwise, decided without looking the workspace up, so it reveals nothing about it).
 */
export function assertInWorkspace(principal: Principal, workspaceId: string, role?: WorkspaceRole, field = "workspace_id"): void {
  checkId(field, workspaceId); // missing or malformed: INVALID_ARGUMENT naming the field, for everyone
  const own = confinedTo(principal);
  if (own === undefined) return;
  if (own !== workspaceId) throw new PermissionDeniedError("this token belongs to another workspace");
  if (role && principal.kind === "workspace" && !roleAtLeast(principal.role, role)) {
    throw new PermissionDeniedError(`this needs the workspace role "${role}"; the token has "${principal.role}"`);
  }
}

/** For objects found by id: one in another workspace is treated as absent (NOT_FOUND), not forbidden. */
export function canSee(principal: Principal, objectWorkspaceId: string): boolean {
  const own = confinedTo(principal);
  return own === undefined || own === objectWorkspaceId;
}
