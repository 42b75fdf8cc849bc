import type { MikroORM } from "@mikro-orm/postgresql";
import { PermissionDeniedError, UnauthenticatedError } from "../errors.js";
import type { Clock } from "../platform/clock.js";
import { Batcher } from "../platform/batcher.js";
import { bulkSql, pgArray } from "../platform/bulk-sql.js";
import { ApiToken, type TokenKind, type WorkspaceRole } from "./api-token.js";
import type { Principal } from "./principal.js";
import { hashSecret, issueToken, parseToken, sameHash } from "./token-secret.js";
import { liveAt } from "./workspace-tokens.js";

/** The columns of a stored token that authentication reads. */
interface TokenRow {
  id: string;
  kind: TokenKind;
  secret_hash: string;
  host_id: string | null;
  workspace_id: string | null;
  role: WorkspaceRole | null;
  /** Timestamps as PostgreSQL prints them (the ORM's connection keeps them as text). */
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
}

/** The id under which the configured admin token appears in logs and audit records. */
export const CONFIG_ADMIN_TOKEN_ID = "config-admin";

const LAST_USE_RESOLUTION_MS = 60_000;

/** Turns a bearer token into a Principal. Tokens are looked up on every call, so a revocation takes effect on the next one. */
export class Authenticator {
  private readonly configAdminHash?: string;

  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    configAdminToken?: string,
  ) {
    this.configAdminHash = configAdminToken ? hashSecret(configAdminToken) : undefined;
  }

  async authenticate(authorization: string | null): Promise<Principal> {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
    if (!match) throw new UnauthenticatedError('missing "authorization: Bearer <token>" header');
    const presented = match[1]!;

    if (this.configAdminHash && sameHash(hashSecret(presented), this.configAdminHash)) {
      return { kind: "admin", tokenId: CONFIG_ADMIN_TOKEN_ID };
    }
    const parsed = parseToken(presented);
    if (!parsed) throw new UnauthenticatedError("invalid token");
    const row = await this.lookups.add(parsed.id);
    // Hash even when the row is missing, so both paths take about the same time.
    const presentedHash = hashSecret(parsed.secret);
    if (!row || !sameHash(presentedHash, row.secret_hash)) throw new UnauthenticatedError("invalid token");
    if (row.revoked_at) throw new UnauthenticatedError("token revoked");
    const now = this.clock.now().getTime();
    if (row.expires_at && Date.parse(row.expires_at) <= now) throw new UnauthenticatedError("token expired");
    // Records when a token was last used, at most once a minute, so busy tokens do not write on every call.
    if (!row.last_used_at || now - Date.parse(row.last_used_at) >= LAST_USE_RESOLUTION_MS) await this.uses.add(row.id);

    switch (row.kind) {
      case "admin":
        return { kind: "admin", tokenId: row.id };
      case "host":
        return { kind: "host", tokenId: row.id, hostId: row.host_id! };
      case "workspace":
        return { kind: "workspace", tokenId: row.id, workspaceId: row.workspace_id!, role: row.role ?? "viewer" };
    }
  }

  // Every call is authenticated, and a fleet of agents reconnecting authenticates thousands of
  // streams at once: lookups and last-use writes made together share one statement each.
  private readonly lookups = new Batcher<string, TokenRow | undefined>(async (ids) => {
    const rows = await bulkSql<TokenRow>(
      this.orm,
      `select id, kind, secret_hash, host_id, workspace_id, role, expires_at, revoked_at, last_used_at
       from api_tokens where id = any(?::text[])`,
      [pgArray(ids)],
    );
    const byId = new Map(rows.map((r) => [r.id, r]));
    return ids.map((id) => byId.get(id));
  });

  private readonly uses = new Batcher<string, undefined>(async (ids) => {
    await bulkSql(this.orm, "update api_tokens set last_used_at = ? where id = any(?::text[])", [this.clock.now(), pgArray(ids)]);
    return ids.map(() => undefined);
  });

  /**
   * With no admin token configured, makes sure one exists: the first start creates it and returns
   * the token string (to print once); later starts return undefined.
   */
  async ensureAdminToken(): Promise<string | undefined> {
    if (this.configAdminHash) return undefined;
    const em = this.orm.em.fork();
    return em.transactional(async (tx) => {
      // Two replicas starting together must not both mint a token.
      await tx.getConnection().execute("select pg_advisory_xact_lock(7315482902)", [], "run", tx.getTransactionContext());
      if ((await tx.count(ApiToken, { $and: [{ kind: "admin" }, liveAt(this.clock.now())] })) > 0) return undefined;
      const issued = issueToken();
      tx.create(ApiToken, {
        id: issued.id,
        kind: "admin",
        name: "bootstrap admin",
        secretHash: issued.secretHash,
        createdAt: this.clock.now(),
      });
      return issued.token;
    });
  }
}

/** Host agents may only speak for their own host. */
export function assertMaySpeakForHost(principal: Principal, hostId: string): void {
  if (principal.kind === "admin") return;
  if (principal.kind === "host" && principal.hostId === hostId) return;
  throw new PermissionDeniedError(`this token may not report for host "${hostId}"`);
}
