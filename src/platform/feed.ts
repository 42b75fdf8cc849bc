import { ResourceExhaustedError } from "../errors.js";

export interface FeedOptions<T> {
  /** Only items this accepts reach the subscriber. */
  accept: (item: T) => boolean;
  /** Most items held for a subscriber that reads slower than items arrive. */
  capacity: number;
  /**
   * What a full queue does: "drop-oldest" keeps the newest items and counts the lost ones (live
   * telemetry); "fail" ends the subscription, for feeds where a gap would mislead (object changes).
   */
  overflow: "drop-oldest" | "fail";
}

export interface Delivery<T> {
  item: T;
  /** Items lost to this subscriber since the previous delivery. */
  dropped: number;
}

class Subscription<T> {
  private readonly queue: T[] = [];
  private dropped = 0;
  private failed?: Error;
  private wake?: () => void;

  constructor(readonly options: FeedOptions<T>) {}

  offer(item: T): void {
    if (!this.options.accept(item)) return;
    if (this.queue.length >= this.options.capacity) {
      if (this.options.overflow === "fail") this.fail(new ResourceExhaustedError("this watcher fell too far behind; watch again"));
      else {
        this.queue.shift();
        this.dropped++;
      }
    }
    if (!this.failed) this.queue.push(item);
    this.wake?.();
  }

  /** Ends the subscription with `error` at the subscriber's next read. */
  fail(error: Error): void {
    this.failed ??= error;
    this.wake?.();
  }

  async *drain(signal: AbortSignal): AsyncGenerator<Delivery<T>> {
    const onAbort = () => this.wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      while (!signal.aborted) {
        if (this.failed) throw this.failed;
        const item = this.queue.shift();
        if (item === undefined) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          this.wake = undefined;
          continue;
        }
        const dropped = this.dropped;
        this.dropped = 0;
        yield { item, dropped };
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}

/**
 * In-process publish/subscribe with a bounded queue per subscriber: publishing never waits for a
 * reader, and memory per subscriber stays bounded however slow it reads.
 */
export class Feed<T> {
  private readonly subscriptions = new Set<Subscription<T>>();
  private readonly followers = new Set<(item: T) => void>();

  publish(item: T): void {
    for (const handle of this.followers) handle(item);
    for (const s of this.subscriptions) s.offer(item);
  }

  /** Items published from now on, until `signal` aborts. Subscribes at once, before the first read. */
  subscribe(options: FeedOptions<T>, signal: AbortSignal): AsyncIterable<Delivery<T>> {
    const sub = new Subscription(options);
    this.subscriptions.add(sub);
    const subscriptions = this.subscriptions;
    // Also on abort, in case the caller fails before it starts reading.
    signal.addEventListener("abort", () => subscriptions.delete(sub), { once: true });
    return {
      async *[Symbol.asyncIterator]() {
        try {
          yield* sub.drain(signal);
        } finally {
          subscriptions.delete(sub);
        }
      },
    };
  }

  /**
   * Calls `handle` with each item as it is published, from now on until `signal` aborts: for quick
   * bookkeeping, since the publisher waits for it. Each item reaches it without a queue, a promise or
   * a generator step (an agent's heartbeat publishes a sample per GPU).
   */
  follow(handle: (item: T) => void, signal: AbortSignal): void {
    this.followers.add(handle);
    signal.addEventListener("abort", () => this.followers.delete(handle), { once: true });
  }

  /**
   * Ends every current subscription with `error`: for when subscribers may have missed items and
   * must start over from the source of truth.
   */
  interrupt(error: Error): void {
    for (const s of this.subscriptions) s.fail(error);
  }

  get size(): number {
    return this.subscriptions.size;
  }
}
