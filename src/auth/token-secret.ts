import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

// Token strings look like "rgpu_<16 hex id>_<43 base64url secret>". The id finds the row; only the
// SHA-256 of the secret is stored. The secret has 256 random bits, so a fast hash is enough: there
// is nothing to brute-force the way there is with a password.
const PREFIX = "rgpu_";
const TOKEN_PATTERN = /^rgpu_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export interface IssuedToken {
  id: string;
  secretHash: string;
  /** The full token string, to show once. */
  token: string;
}

export function issueToken(): IssuedToken {
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return { id, secretHash: hashSecret(secret), token: `${PREFIX}${id}_${secret}` };
}

export function parseToken(token: string): { id: string; secret: string } | undefined {
  const m = TOKEN_PATTERN.exec(token);
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

/** Compares two hex digests in constant time. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && timingSafeEqual(x, y);
}
