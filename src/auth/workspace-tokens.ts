import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { MikroORM } from "@mikro-orm/postgresql";
import type { AuditNote } from "../audit/audit-trail.js";
import { AlreadyExistsError, NotFoundError } from "../errors.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { Violations, checkString } from "../validation.js";
import { Workspace } from "../workspace/workspace.js";
import { ApiToken, type WorkspaceRole } from "./api-token.js";
import { issueToken } from "./token-secret.js";

export interface WorkspaceTokenInput {
  name: string;
  role?: WorkspaceRole;
  /** Lifetime; undefined for a token that does not expire. */
  ttlMs?: number;
}

const MAX_TTL_MS = 3650 * 86_400_000;
const TOKEN_ID = /^[0-9a-f]{16}$/;

/** Workspace-scoped API tokens. The secret is returned once at creation; only its hash is kept. */
export class WorkspaceTokens {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
  ) {}

  async create(workspaceId: string, input: WorkspaceTokenInput, note: AuditNote): Promise<{ token: ApiToken; secret: string }> {
    const id = checkId("workspace_id", workspaceId);
    const v = new Violations();
    checkString(v, "name", input.name, { required: true, max: 100 });
    v.check(input.role !== undefined, "role", "required: API_TOKEN_ROLE_ADMIN, _MEMBER or _VIEWER");
    if (input.ttlMs !== undefined)
      v.check(input.ttlMs > 0 && input.ttlMs <= MAX_TTL_MS, "ttl", "must be more than 0 and at most 3650 days");
    v.throwIfAny();

    const now = this.clock.now();
    return this.orm.em.fork().transactional(async (em) => {
      // Locking the workspace serialises token creation in it, so the live-name check holds.
      const workspace = await em.findOne(Workspace, id, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!workspace) throw new NotFoundError("workspace", id);
      if ((await em.count(ApiToken, { $and: [{ workspace, name: input.name }, this.live()] })) > 0) {
        throw new AlreadyExistsError("token", `named "${input.name}" in this workspace (revoke it first)`);
      }
      const issued = issueToken();
      const token = em.create(ApiToken, {
        id: issued.id,
        kind: "workspace",
        name: input.name,
        secretHash: issued.secretHash,
        workspace,
        role: input.role!,
        createdAt: now,
        expiresAt: input.ttlMs === undefined ? null : new Date(now.getTime() + input.ttlMs),
      });
      note(em, { workspaceId: id, targetId: token.id });
      return { token, secret: issued.token };
    });
  }

  /** Newest first; revoked and expired tokens only with `showInactive`. */
  async list(workspaceId: string, showInactive: boolean, size: number, pageToken: string): Promise<Page<ApiToken>> {
    const id = checkId("workspace_id", workspaceId);
    const limit = pageSize(size);
    const filter = { workspaceId: id, showInactive };
    const after = decodePageToken(pageToken, filter, ["int", "string"]);
    const em = this.orm.em.fork();
    if (!(await em.findOne(Workspace, id))) throw new NotFoundError("workspace", id);
    const where: FilterQuery<ApiToken>[] = [{ workspace: id, kind: "workspace" }];
    if (!showInactive) where.push(this.live());
    const matching = [...where];
    if (after) {
      const createdAt = new Date(after[0] as number);
      where.push({ $or: [{ createdAt: { $lt: createdAt } }, { createdAt, id: { $lt: after[1] as string } }] });
    }
    const [rows, totalSize] = await Promise.all([
      em.find(ApiToken, { $and: where }, { orderBy: [{ createdAt: "desc" }, { id: "desc" }], limit: limit + 1 }),
      em.count(ApiToken, { $and: matching }),
    ]);
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    const nextPageToken = rows.length > limit && last ? encodePageToken([last.createdAt.getTime(), last.id], filter) : "";
    return { items, nextPageToken, totalSize };
  }

  /** Revokes a token of the workspace; it is refused from the next call on. Revoking twice changes nothing. */
  async revoke(workspaceId: string, tokenId: string, note: AuditNote): Promise<ApiToken> {
    const id = checkId("workspace_id", workspaceId);
    if (!TOKEN_ID.test(tokenId)) throw new NotFoundError("token", tokenId.slice(0, 64));
    return this.orm.em.fork().transactional(async (em) => {
      const token = await em.findOne(ApiToken, { id: tokenId, workspace: id, kind: "workspace" }, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!token) throw new NotFoundError("token", tokenId);
      token.revokedAt ??= this.clock.now();
      note(em, { workspaceId: id, targetId: token.id });
      return token;
    });
  }

  private live(): FilterQuery<ApiToken> {
    return { revokedAt: null, $or: [{ expiresAt: null }, { expiresAt: { $gt: this.clock.now() } }] };
  }
}
