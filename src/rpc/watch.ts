// What the Watch* and following streams share: the event types, and how much each kind of
// subscriber may fall behind before something gives.
import { WatchEventType } from "../../gen/remotegpu/v1/common_pb.js";
import type { Delivery, FeedOptions } from "../platform/feed.js";
import type { Change, ChangeType } from "../platform/replicated-feed.js";

/** The event type a watcher sees for a domain change. */
export const EVENT_TYPES: Record<ChangeType, WatchEventType> = {
  ADDED: WatchEventType.ADDED,
  MODIFIED: WatchEventType.MODIFIED,
  DELETED: WatchEventType.DELETED,
};

type SubscriberBuffer = Pick<FeedOptions<unknown>, "capacity" | "overflow">;

/** Per-subscriber buffers of the streaming handlers. */
export const BUFFERS = {
  /** Object changes (WatchHosts, WatchEnvironments): a gap would mislead, so a watcher this far behind is ended. */
  changes: { capacity: 1000, overflow: "fail" },
  /** Live GPU samples (WatchGpuTelemetry): a slow reader loses the oldest, counted; ingestion never waits. */
  samples: { capacity: 256, overflow: "drop-oldest" },
  /** New log lines, in batches (StreamLogs with follow). */
  logLines: { capacity: 1000, overflow: "drop-oldest" },
  /** An environment's changes while its log is followed, read only to see it end. */
  logEnd: { capacity: 100, overflow: "drop-oldest" },
} as const satisfies Record<string, SubscriberBuffer>;

/** A feed of changes to objects of one kind (hosts, environments), as the domain publishes them. */
export interface ChangeFeed<V> {
  subscribe(options: FeedOptions<Change<V>>, signal: AbortSignal): AsyncIterable<Delivery<Change<V>>>;
}

/**
 * An object watch: the objects as they are (INITIAL), then every accepted change, until `signal`
 * aborts or the watcher falls behind (RESOURCE_EXHAUSTED; it can watch again). It subscribes before
 * reading the current objects, so no change falls between the two.
 */
export async function* watchObjects<V, E>(options: {
  changes: ChangeFeed<V>;
  accept: (view: V) => boolean;
  current: () => AsyncIterable<V>;
  toEvent: (type: WatchEventType, view: V) => E;
  signal: AbortSignal;
}): AsyncGenerator<E> {
  const { changes, accept, current, toEvent, signal } = options;
  const subscription = changes.subscribe({ accept: (c) => accept(c.view), ...BUFFERS.changes }, signal);
  for await (const view of current()) yield toEvent(WatchEventType.INITIAL, view);
  for await (const { item } of subscription) yield toEvent(EVENT_TYPES[item.type], item.view);
}

/** Every item of a paged list, reading `pageSize` at a time. */
export async function* everyPage<V>(
  list: (pageSize: number, pageToken: string) => Promise<{ items: V[]; nextPageToken: string }>,
  pageSize = 1000,
): AsyncGenerator<V> {
  let token = "";
  do {
    const page = await list(pageSize, token);
    yield* page.items;
    token = page.nextPageToken;
  } while (token);
}
