import type { MikroORM } from "@mikro-orm/postgresql";
import { PermissionDeniedError, UnauthenticatedError } from "../errors.js";
import type { Clock } from "../platform/clock.js";
import { ApiToken } from "./api-token.js";
import type { Principal } from "./principal.js";
import { hashSecret, issueToken, parseToken, sameHash } from "./token-secret.js";
import { liveAt } from "./workspace-tokens.js";

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
    const row = await this.orm.em.fork().findOne(ApiToken, parsed.id);
    // Hash even when the row is missing, so both paths take about the same time.
    const presentedHash = hashSecret(parsed.secret);
    if (!row || !sameHash(presentedHash, row.secretHash)) throw new UnauthenticatedError("invalid token");
    if (row.revokedAt) throw new UnauthenticatedError("token revoked");
    const now = this.clock.now();
    if (row.expiresAt && row.expiresAt <= now) throw new UnauthenticatedError("token expired");
    await this.touch(row, now);

    switch (row.kind) {
      case "admin":
        return { kind: "admin", tokenId: row.id };
      case "host":
        return { kind: "host", tokenId: row.id, hostId: row.host!.id };
      case "workspace":
        return { kind: "workspace", tokenId: row.id, workspaceId: row.workspace!.id, role: row.role ?? "viewer" };
    }
  }

  /** Records when a token was last used, at most once a minute, so busy tokens do not write on every call. */
  private async touch(row: ApiToken, now: Date): Promise<void> {
    if (row.lastUsedAt && now.getTime() - row.lastUsedAt.getTime() < LAST_USE_RESOLUTION_MS) return;
    await this.orm.em.fork().nativeUpdate(ApiToken, { id: row.id }, { lastUsedAt: now });
  }

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
