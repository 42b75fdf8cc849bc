import { type EntityManager, LockMode, type FilterQuery } from "@mikro-orm/core";
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
  /**
   * Replace a live token of the same name rather than refuse: it keeps working this long (0: revoked
   * at once). Undefined: a live token of the name is a conflict.
   */
  replaceGraceMs?: number;
}

const MAX_TTL_MS = 3650 * 86_400_000;
/** The longest two secrets of one name (or one host) both work. */
export const MAX_GRACE_MS = 30 * 86_400_000;
const TOKEN_ID = /^[0-9a-f]{16}$/;
/** Serialises the creation of cluster admin tokens (their names are unique among live ones). */
const ADMIN_TOKENS_LOCK = 7315482902;

/**
 * Ends the live tokens matching `where` that a new one replaces: each keeps working for `graceMs`
 * more (never longer than it would have), or is revoked at once for 0. Returns when they stop.
 */
export async function retireTokens(em: EntityManager, where: FilterQuery<ApiToken>, graceMs: number, now: Date): Promise<Date> {
  const until = new Date(now.getTime() + graceMs);
  for (const old of await em.find(ApiToken, { $and: [where, liveAt(now)] })) {
    if (graceMs === 0) old.revokedAt = now;
    else if (!old.expiresAt || old.expiresAt > until) old.expiresAt = until;
  }
  return until;
}

/** Tokens neither revoked nor expired at `now`. */
export function liveAt(now: Date): FilterQuery<ApiToken> {
  return { revokedAt: null, $or: [{ expiresAt: null }, { expiresAt: { $gt: now } }] };
}

/** Workspace-scoped API tokens, and cluster admin ones. The secret is returned once at creation; only its hash is kept. */
export class WorkspaceTokens {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
  ) {}

  async create(workspaceId: string, input: WorkspaceTokenInput, note: AuditNote): Promise<{ token: ApiToken; secret: string }> {
    const id = checkId("workspace_id", workspaceId);
    const v = new Violations();
    v.check(input.role !== undefined, "role", "required: API_TOKEN_ROLE_ADMIN, _MEMBER or _VIEWER");
    checkInput(v, input);

    const now = this.clock.now();
    return this.orm.em.fork().transactional(async (em) => {
      // Locking the workspace serialises token creation in it, so the live-name check holds.
      const workspace = await em.findOne(Workspace, id, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!workspace) throw new NotFoundError("workspace", id);
      const issued = await this.issue(em, { workspace, kind: "workspace", role: input.role! }, input, now, "token", "in this workspace ");
      note(em, { workspaceId: id, targetId: issued.token.id });
      return issued;
    });
  }

  /** A cluster admin token (no workspace); as `create` otherwise. */
  async createAdmin(input: Omit<WorkspaceTokenInput, "role">, note: AuditNote): Promise<{ token: ApiToken; secret: string }> {
    const v = new Violations();
    checkInput(v, input);
    const now = this.clock.now();
    return this.orm.em.fork().transactional(async (em) => {
      await em.getConnection().execute(`select pg_advisory_xact_lock(${ADMIN_TOKENS_LOCK})`, [], "run", em.getTransactionContext());
      const issued = await this.issue(em, { kind: "admin" }, input, now, "admin token", "");
      note(em, { targetId: issued.token.id });
      return issued;
    });
  }

  /**
   * Mints a token of `owner` under `input.name`: a live one of that name is replaced (with
   * `replaceGraceMs`) or is a conflict. The caller holds the lock that serialises names of `owner`.
   */
  private async issue(
    em: EntityManager,
    owner: { kind: "workspace"; workspace: Workspace; role: WorkspaceRole } | { kind: "admin" },
    input: Omit<WorkspaceTokenInput, "role">,
    now: Date,
    what: string,
    where: string,
  ): Promise<{ token: ApiToken; secret: string }> {
    const sameName = { kind: owner.kind, ...(owner.kind === "workspace" && { workspace: owner.workspace }), name: input.name };
    if (input.replaceGraceMs !== undefined) await retireTokens(em, sameName, input.replaceGraceMs, now);
    else if ((await em.count(ApiToken, { $and: [sameName, liveAt(now)] })) > 0) {
      throw new AlreadyExistsError(what, `named "${input.name}" ${where}(revoke it first, or replace it)`);
    }
    const issued = issueToken();
    const token = em.create(ApiToken, {
      ...owner,
      id: issued.id,
      name: input.name,
      secretHash: issued.secretHash,
      createdAt: now,
      expiresAt: input.ttlMs === undefined ? null : new Date(now.getTime() + input.ttlMs),
    });
    return { token, secret: issued.token };
  }

  /** Newest first; revoked and expired tokens only with `showInactive`. */
  async list(workspaceId: string, showInactive: boolean, size: number, pageToken: string): Promise<Page<ApiToken>> {
    const id = checkId("workspace_id", workspaceId);
    if (!(await this.orm.em.fork().findOne(Workspace, id))) throw new NotFoundError("workspace", id);
    return this.page({ workspace: id, kind: "workspace" }, { workspaceId: id, showInactive }, showInactive, size, pageToken);
  }

  /** The cluster admin tokens, newest first; revoked and expired ones only with `showInactive`. */
  async listAdmin(showInactive: boolean, size: number, pageToken: string): Promise<Page<ApiToken>> {
    return this.page({ kind: "admin" }, { admin: true, showInactive }, showInactive, size, pageToken);
  }

  private async page(
    scope: FilterQuery<ApiToken>,
    filter: Record<string, unknown>,
    showInactive: boolean,
    size: number,
    pageToken: string,
  ): Promise<Page<ApiToken>> {
    const limit = pageSize(size);
    const after = decodePageToken(pageToken, filter, ["int", "string"]);
    const em = this.orm.em.fork();
    const where: FilterQuery<ApiToken>[] = [scope];
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

  /** Revokes a cluster admin token. Revoking twice changes nothing. */
  async revokeAdmin(tokenId: string, note: AuditNote): Promise<ApiToken> {
    if (!TOKEN_ID.test(tokenId)) throw new NotFoundError("admin token", tokenId.slice(0, 64));
    return this.orm.em.fork().transactional(async (em) => {
      const token = await em.findOne(ApiToken, { id: tokenId, kind: "admin" }, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!token) throw new NotFoundError("admin token", tokenId);
      token.revokedAt ??= this.clock.now();
      note(em, { targetId: token.id });
      return token;
    });
  }

  private live(): FilterQuery<ApiToken> {
    return liveAt(this.clock.now());
  }
}

function checkInput(v: Violations, input: Omit<WorkspaceTokenInput, "role">): void {
  checkString(v, "name", input.name, { required: true, max: 100 });
  if (input.ttlMs !== undefined) v.check(input.ttlMs > 0 && input.ttlMs <= MAX_TTL_MS, "ttl", "must be more than 0 and at most 3650 days");
  if (input.replaceGraceMs !== undefined)
    v.check(input.replaceGraceMs >= 0 && input.replaceGraceMs <= MAX_GRACE_MS, "replace_grace", "must be from 0 to 30 days");
  v.throwIfAny();
}
