/** A byte range, both ends included (as in HTTP Range). */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Where workspace files and archived logs live: the local filesystem or any S3-compatible service.
 * Keys are chosen by the server (never by users), so implementations need not defend against
 * hostile keys.
 */
export interface ObjectStore {
  /**
   * Writes an object from a stream without holding it in memory. It appears whole or not at all:
   * if `body` throws (a cancelled upload, a quota refusal), nothing is left behind.
   */
  put(key: string, body: AsyncIterable<Uint8Array>, contentType: string): Promise<{ size: number }>;
  /** Reads an object, or one range of it. */
  get(key: string, range?: ByteRange): Promise<AsyncIterable<Uint8Array>>;
  /** The object's size, or undefined when it does not exist. */
  head(key: string): Promise<{ size: number } | undefined>;
  /** Copies an object within the store (server-side where the store can). */
  copy(from: string, to: string): Promise<void>;
  /** Removes an object; removing a missing one is not an error. */
  delete(key: string): Promise<void>;
  /** A URL to GET or PUT the object directly, or undefined when this store cannot presign. */
  presign(key: string, method: "GET" | "PUT", expiresInSeconds: number): Promise<string | undefined>;
}
