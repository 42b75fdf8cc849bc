import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { AuditNote } from "../audit/audit-trail.js";
import type { Principal } from "../auth/principal.js";
import { UnauthenticatedError } from "../errors.js";

export const principalKey = createContextKey<Principal | undefined>(undefined, { description: "the authenticated caller" });
export const requestIdKey = createContextKey<string>("", { description: "id of the call, echoed as x-request-id" });
export const auditNoteKey = createContextKey<AuditNote>(() => undefined, {
  description: "records the call's audit event inside a transaction",
});

/** The caller of an RPC that requires authentication (the auth interceptor set it). */
export function callerOf(ctx: HandlerContext): Principal {
  const principal = ctx.values.get(principalKey);
  if (!principal) throw new UnauthenticatedError("no authenticated caller");
  return principal;
}

/** What a handler passes to a domain mutation so its audit event commits with the change. */
export function auditNote(ctx: HandlerContext): AuditNote {
  return ctx.values.get(auditNoteKey);
}
