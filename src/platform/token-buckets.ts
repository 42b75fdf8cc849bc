import type { Redis } from "ioredis";
import type { Logger } from "./logger.js";

/**
 * Token buckets by key: `rate` tokens a second, holding at most `burst`. take() spends one token and
 * answers 0, or spends nothing and answers how many milliseconds until one is free.
 */
export interface TokenBuckets {
  take(key: string, nowMs: number, rate: number, burst: number): Promise<number>;
}

/** In this process's memory: right for a single replica, and the fallback when Redis is away. */
export class MemoryTokenBuckets implements TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  take(key: string, nowMs: number, rate: number, burst: number): Promise<number> {
    const bucket = this.buckets.get(key) ?? { tokens: burst, at: nowMs };
    bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, nowMs - bucket.at) / 1000) * rate);
    bucket.at = nowMs;
    this.buckets.set(key, bucket);
    if (this.buckets.size > 100_000) this.buckets.clear(); // a flood of distinct keys cannot grow it without bound
    if (bucket.tokens < 1) return Promise.resolve(Math.ceil(((1 - bucket.tokens) / rate) * 1000));
    bucket.tokens -= 1;
    return Promise.resolve(0);
  }
}

// The same arithmetic as MemoryTokenBuckets, done inside Redis so that replicas share one bucket.
// The caller's clock is passed in; a replica whose clock lags another's never refills backwards.
const TAKE = `
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / rate * 1000) else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait`;

/** How long a call waits for Redis before it counts against this replica's own buckets instead. */
const REDIS_WAIT_MS = 50;
/** How long a replica then counts by itself before asking Redis again. */
const LOCAL_AFTER_FAILURE_MS = 1000;

/**
 * Buckets shared by every replica through Redis. When Redis does not answer (down, slow), calls are
 * counted in this replica's memory: the limit then holds per replica, and nothing waits on Redis.
 */
export class RedisTokenBuckets implements TokenBuckets {
  private readonly local = new MemoryTokenBuckets();
  private warned = false;
  /** After Redis failed to answer, calls are counted here for a while instead of each waiting for it. */
  private localUntil = 0;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly logger: Logger,
  ) {}

  async take(key: string, nowMs: number, rate: number, burst: number): Promise<number> {
    if (performance.now() < this.localUntil) return this.local.take(key, nowMs, rate, burst);
    let timer: NodeJS.Timeout | undefined;
    try {
      const wait = await Promise.race([
        this.redis.eval(TAKE, 1, `${this.prefix}rate:${key}`, nowMs, rate, burst),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${REDIS_WAIT_MS} ms`)), REDIS_WAIT_MS);
        }),
      ]);
      this.warned = false;
      return Number(wait);
    } catch (err) {
      if (!this.warned) this.logger.warn({ error: String(err) }, "rate limits are per replica until Redis answers");
      this.warned = true;
      this.localUntil = performance.now() + LOCAL_AFTER_FAILURE_MS;
      return this.local.take(key, nowMs, rate, burst);
    } finally {
      clearTimeout(timer);
    }
  }
}
