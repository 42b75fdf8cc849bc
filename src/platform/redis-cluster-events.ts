import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { ClusterEvents, Decoders, EventMap } from "./cluster-events.js";
import type { Logger } from "./logger.js";

/** The topic on which a replica whose subscription came back tells the others they may have missed its messages. */
const GAP = "gap";

/**
 * ClusterEvents over one Redis pub/sub channel. Each message is decoded once, here, by its topic's
 * decoder: one that does not fit is logged and dropped, and handlers only ever see typed payloads.
 * When the subscription comes back after Redis was away, messages may have been lost both ways: this
 * replica's gap handlers run, and it tells the others, whose gap handlers run too.
 */
export class RedisClusterEvents<M extends EventMap> implements ClusterEvents<M> {
  readonly clustered = true;
  private readonly replica = randomUUID();
  private readonly subscriber: Redis;
  private readonly handlers = new Map<string, ((payload: never) => void)[]>();
  private readonly gapHandlers: (() => void)[] = [];
  private lost = false;
  /** A message of this replica's was lost: the others are told of a gap as soon as it can publish again. */
  private owesGap = false;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly decoders: Decoders<M>,
    private readonly logger: Logger,
  ) {
    // Re-subscribing is done here rather than by ioredis, so that a replica that started while Redis
    // was down joins when it answers, and so that the moment it is back is known.
    this.subscriber = redis.duplicate({ autoResubscribe: false, lazyConnect: true });
    this.subscriber.on("error", (err: Error) => logger.warn({ error: err.message }, "redis bus subscriber"));
    this.subscriber.on("close", () => (this.lost = true));
    this.subscriber.on("ready", () => {
      if (!this.lost) return; // the first connection: start() subscribes
      this.subscriber.subscribe(this.channel).then(
        () => {
          this.lost = false;
          logger.info("Redis bus back; messages sent while it was away are lost");
          this.gap();
          this.send(GAP, {});
        },
        (err: unknown) => logger.warn({ error: String(err) }, "subscribing to the Redis bus failed"),
      );
    });
    this.subscriber.on("message", (_channel: string, message: string) => this.receive(message));
    // The publishing connection comes back on its own time, often after the subscription did (whose
    // return already told the others of a gap): what it failed to send meanwhile is a gap too.
    redis.on("ready", () => this.owesGap && this.send(GAP, {}));
  }

  /** Whether the bus is subscribed now (messages sent while it is not are lost to this replica). */
  get connected(): boolean {
    return this.subscriber.status === "ready" && !this.lost;
  }

  private get channel(): string {
    return `${this.prefix}bus`;
  }

  /** Subscribes; never throws: without Redis this replica works alone until it answers. */
  async start(): Promise<void> {
    try {
      await this.subscriber.connect();
      await this.subscriber.subscribe(this.channel);
    } catch (err) {
      this.logger.warn({ error: String(err) }, "Redis bus unavailable at start; replicas will not hear each other until it answers");
    }
  }

  publish<K extends keyof M & string>(topic: K, payload: M[K]): void {
    this.send(topic, payload);
  }

  subscribe<K extends keyof M & string>(topic: K, handler: (payload: M[K]) => void): void {
    this.handlers.set(topic, [...(this.handlers.get(topic) ?? []), handler]);
  }

  onGap(handler: () => void): void {
    this.gapHandlers.push(handler);
  }

  close(): void {
    this.subscriber.disconnect();
  }

  private send(topic: string, payload: unknown): void {
    if (this.owesGap && topic !== GAP) this.send(GAP, {});
    if (topic === GAP) this.owesGap = false;
    this.redis.publish(this.channel, JSON.stringify({ from: this.replica, topic, payload })).catch((err: unknown) => {
      this.owesGap = true;
      this.logger.warn({ topic, error: String(err) }, "publishing on the Redis bus failed");
    });
  }

  private receive(message: string): void {
    let envelope: { from?: unknown; topic?: unknown; payload?: unknown };
    try {
      envelope = JSON.parse(message) as typeof envelope;
    } catch (err) {
      this.logger.warn({ error: String(err) }, "ignoring a message from the Redis bus that is not JSON");
      return;
    }
    const { from, topic, payload } = envelope ?? {};
    if (from === this.replica) return;
    if (topic === GAP) {
      this.gap();
      return;
    }
    if (typeof topic !== "string" || !Object.hasOwn(this.decoders, topic)) {
      this.logger.warn({ topic }, "ignoring a message of an unknown topic from the Redis bus");
      return;
    }
    let decoded: M[keyof M];
    try {
      decoded = this.decoders[topic as keyof M](payload);
    } catch (err) {
      this.logger.warn(
        { topic, error: err instanceof Error ? err.message : String(err) },
        "ignoring a malformed message from the Redis bus",
      );
      return;
    }
    for (const handler of this.handlers.get(topic) ?? []) this.run(topic, () => (handler as (p: M[keyof M]) => void)(decoded));
  }

  private gap(): void {
    for (const handler of this.gapHandlers) this.run(GAP, handler);
  }

  /** One handler's failure neither stops the others nor reaches ioredis. */
  private run(topic: string, handler: () => void): void {
    try {
      handler();
    } catch (err) {
      this.logger.error({ err, topic }, "a handler of a Redis bus message failed");
    }
  }
}
