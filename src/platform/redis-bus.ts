import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { Logger } from "./logger.js";

/**
 * Messages between replicas over one Redis pub/sub channel: what one replica changed or must hand to
 * another (a command for an agent whose stream another replica holds). Fire and forget: messages
 * sent while Redis is away are lost, so when the subscription comes back `onResume` runs, for this
 * replica to tell its watchers to start over from PostgreSQL, the source of truth.
 */
export class RedisBus {
  private readonly replica = randomUUID();
  private readonly subscriber: Redis;
  private readonly handlers = new Map<string, (payload: unknown) => void>();
  private lost = false;
  /** Called when the subscription is back after Redis was away: messages may have been missed. */
  onResume?: () => void;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly logger: Logger,
  ) {
    // Re-subscribing is done here rather than by ioredis, so that a replica that started while Redis
    // was down joins when it answers, and so that the moment it is back is known.
    this.subscriber = redis.duplicate({ autoResubscribe: false });
    this.subscriber.on("error", (err: Error) => logger.warn({ error: err.message }, "redis bus subscriber"));
    this.subscriber.on("close", () => (this.lost = true));
    this.subscriber.on("ready", () => {
      if (!this.lost) return; // the first connection: start() subscribes
      this.subscriber.subscribe(this.channel).then(
        () => {
          this.lost = false;
          logger.info("Redis bus back; messages sent while it was away are lost");
          this.onResume?.();
        },
        (err: unknown) => logger.warn({ error: String(err) }, "subscribing to the Redis bus failed"),
      );
    });
  }

  private get channel(): string {
    return `${this.prefix}bus`;
  }

  async start(): Promise<void> {
    this.subscriber.on("message", (_channel: string, message: string) => {
      try {
        const { from, topic, payload } = JSON.parse(message) as { from: string; topic: string; payload: unknown };
        if (from !== this.replica) this.handlers.get(topic)?.(payload);
      } catch (err) {
        this.logger.warn({ err }, "ignoring a malformed message from the Redis bus");
      }
    });
    await this.subscriber.connect();
    await this.subscriber.subscribe(this.channel);
  }

  /** Messages of `topic` from other replicas. */
  on(topic: string, handler: (payload: unknown) => void): void {
    this.handlers.set(topic, handler);
  }

  publish(topic: string, payload: unknown): void {
    this.redis.publish(this.channel, JSON.stringify({ from: this.replica, topic, payload })).catch((err: unknown) => this.logger.warn({ topic, error: String(err) }, "publishing on the Redis bus failed"));
  }

  close(): void {
    this.subscriber.disconnect();
  }
}
