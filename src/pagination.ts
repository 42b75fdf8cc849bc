import { createHash } from "node:crypto";
import { InvalidArgumentError } from "./errors.js";
import { isId } from "./ids.js";

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;

/** 0 means the default; anything above the maximum is lowered to it, as AIP-158 suggests. */
export function pageSize(requested: number, fallback = DEFAULT_PAGE_SIZE): number {
  if (requested < 0) throw InvalidArgumentError.field("page_size", "must be 0 or more");
  if (requested === 0) return fallback;
  return Math.min(requested, MAX_PAGE_SIZE);
}

// A page token carries the sort key of the last row served (keyset pagination: new rows never shift
// a page) and a fingerprint of the filters it was made for, so it cannot be replayed with others.
function fingerprint(filters: unknown): string {
  return createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 12);
}

export function encodePageToken(key: (string | number)[], filters: unknown): string {
  return Buffer.from(JSON.stringify({ k: key, f: fingerprint(filters) })).toString("base64url");
}

/** What a keyset value must be: anything else in a token (which a caller can forge) is refused. */
const VALID: Record<KeyKind, (v: unknown) => boolean> = {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this refuses
  string: (v) => typeof v === "string" && v.length <= 512 && !/[\x00-\x1f\x7f]/.test(v),
  uuid: isId,
  int: (v) => typeof v === "number" && Number.isSafeInteger(v),
};

export type KeyKind = "string" | "uuid" | "int";

/** Returns the keyset position of a token, or undefined for the first page. */
export function decodePageToken(token: string, filters: unknown, shape: KeyKind[]): (string | number)[] | undefined {
  if (token === "") return undefined;
  let parsed: { k?: unknown; f?: unknown };
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw InvalidArgumentError.field("page_token", "not a token returned by this list");
  }
  const key = parsed?.k;
  if (!Array.isArray(key) || key.length !== shape.length || key.some((v, i) => !VALID[shape[i]!](v))) {
    throw InvalidArgumentError.field("page_token", "not a token returned by this list");
  }
  if (parsed.f !== fingerprint(filters)) {
    throw InvalidArgumentError.field("page_token", "was issued for different filters; start again without page_token");
  }
  return key as (string | number)[];
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
  totalSize: number;
}
