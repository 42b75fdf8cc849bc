import { isId } from "../ids.js";
/**
 * What replicas tell each other, by topic. `M` maps each topic to its payload; the domain modules
 * that use a topic define its payload and its decoder, so this layer knows none of them.
 */
export type EventMap = { [topic: string]: unknown };

/** Checks a payload that came from outside this process and returns it typed; throws MalformedEventError. */
export type Decoder<T> = (raw: unknown) => T;

/** One decoder per topic: the single place where a message's shape is checked. */
export type Decoders<M extends EventMap> = { [K in keyof M]: Decoder<M[K]> };

/** The event map that a set of decoders decodes. */
export type TopicsOf<D> = { [K in keyof D]: D[K] extends Decoder<infer T> ? T : never };

/**
 * The typed bus between replicas. Fire and forget: a message sent while the link is down is lost,
 * and `onGap` says when that may have happened, so that listeners can start over from the database.
 */
export interface ClusterEvents<M extends EventMap> {
  /** Whether other replicas may hear what this one publishes (false: this replica is all there is). */
  readonly clustered: boolean;
  /** Tells the other replicas (never this one). */
  publish<K extends keyof M & string>(topic: K, payload: M[K]): void;
  /** Messages of `topic` from other replicas, already decoded. */
  subscribe<K extends keyof M & string>(topic: K, handler: (payload: M[K]) => void): void;
  /** `handler` runs when messages between this replica and the others may have been lost. */
  onGap(handler: () => void): void;
}

/** A single replica: nobody to tell, nobody to hear from. */
export class LocalClusterEvents<M extends EventMap> implements ClusterEvents<M> {
  readonly clustered = false;

  publish(): void {}

  subscribe(): void {}

  onGap(): void {}

  async start(): Promise<void> {}

  close(): void {}
}

/** A message whose payload does not have the shape its topic promises. */
export class MalformedEventError extends Error {
  override name = "MalformedEventError";
}

// Small checks for writing decoders; each names what it expected.

export function record(raw: unknown, what = "payload"): Record<string, unknown> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new MalformedEventError(`${what}: not an object`);
  return raw as Record<string, unknown>;
}

export const anyString: Decoder<string> = (raw) => {
  if (typeof raw !== "string") throw new MalformedEventError("not a string");
  return raw;
};

export const anyInteger: Decoder<number> = (raw) => {
  if (typeof raw !== "number" || !Number.isSafeInteger(raw)) throw new MalformedEventError("not an integer");
  return raw;
};

/** The field `key` of `o`, decoded by `decode`; a failure names the field. */
export function field<T>(o: Record<string, unknown>, key: string, decode: Decoder<T>): T {
  try {
    return decode(o[key]);
  } catch (err) {
    throw new MalformedEventError(`${key}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

export function text(o: Record<string, unknown>, key: string, pattern?: RegExp): string {
  return field(o, key, (raw) => {
    const v = anyString(raw);
    if (pattern && !pattern.test(v)) throw new MalformedEventError(`not like ${pattern}`);
    return v;
  });
}

/** A resource id, lower-cased as the database writes it. */
export function uuid(o: Record<string, unknown>, key: string): string {
  return field(o, key, (raw) => {
    if (!isId(raw)) throw new MalformedEventError("not an id");
    return (raw as string).toLowerCase();
  });
}

/** An object of exactly these string fields (others are dropped). */
export function textFields<K extends string>(...keys: K[]): Decoder<Record<K, string>> {
  return (raw) => {
    const o = record(raw);
    return Object.fromEntries(keys.map((k) => [k, text(o, k)])) as Record<K, string>;
  };
}

export function integer(o: Record<string, unknown>, key: string): number {
  return field(o, key, anyInteger);
}

export function oneOf<T extends string>(o: Record<string, unknown>, key: string, values: readonly T[]): T {
  return field(o, key, (raw) => {
    if (!(values as readonly unknown[]).includes(raw)) throw new MalformedEventError(`not one of ${values.join(", ")}`);
    return raw as T;
  });
}

export function list<T>(o: Record<string, unknown>, key: string, item: Decoder<T>): T[] {
  return field(o, key, (raw) => {
    if (!Array.isArray(raw)) throw new MalformedEventError("not a list");
    return raw.map((v) => item(v));
  });
}
