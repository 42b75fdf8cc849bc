import type { Redis } from "ioredis";
import type { Logger } from "./logger.js";

/**
 * A Redis client for `url`, connected if Redis answers. Never throws: a replica keeps working without
 * Redis, and ioredis keeps trying, so sharing resumes when Redis answers again. Commands fail at once
 * while it is away (no offline queue), so no caller waits on it.
 */
export async function openRedis(url: string, logger: Logger): Promise<Redis> {
  // Loaded here: a server without REDIS_URL does not load the client at all.
  const { Redis: Client } = await import("ioredis");
  const redis = new Client(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1 });
  redis.on("error", (err: Error) => logger.warn({ error: err.message }, "redis"));
  await redis.connect().catch((err: unknown) => logger.warn({ error: String(err) }, "Redis unreachable at start; continuing without it"));
  return redis;
}
