import { UnavailableError } from "../errors.js";
import { MalformedEventError, oneOf, record, uuid, type ClusterEvents, type Decoder } from "./cluster-events.js";
import { Feed, type Delivery, type FeedOptions } from "./feed.js";

export type ChangeType = "ADDED" | "MODIFIED" | "DELETED";

/** A committed change of one entity, as watchers see it. */
export interface Change<V> {
  type: ChangeType;
  view: V;
}

/**
 * A change on its way to the other replicas: only the id, since they read the entity back from the
 * database; a deleted one is gone from there, so its `remains` (what watchers are shown of it) travel along.
 */
export interface ChangeMessage<R> {
  type: ChangeType;
  id: string;
  deleted?: R;
}

/** The one topic a replicated feed travels on. */
export type ChangeTopic<T extends string, R> = { [K in T]: ChangeMessage<R> };

/** What a replicated feed needs to know of the entity it carries. */
export interface ReplicatedEntity<V, R> {
  idOf(view: V): string;
  /** The current state of these entities; those that are gone are left out. */
  read(ids: string[]): Promise<V[]>;
  /** What watchers on other replicas are shown of an entity deleted here. */
  remains(view: V): R;
  /** The view of an entity another replica deleted, made of its remains. */
  tombstone(id: string, remains: R): V;
  /** Told of each entity another replica deleted, before its watchers here are. */
  deletedElsewhere?(id: string): void;
}

const readFailed = () => new UnavailableError("could not read a change another replica made; watch again");
const CHANGE_TYPES: readonly ChangeType[] = ["ADDED", "MODIFIED", "DELETED"];

/** The decoder of a feed's messages, given the decoder of a deleted entity's remains. */
export function changeMessage<R>(remains: Decoder<R>): Decoder<ChangeMessage<R>> {
  return (raw) => {
    const o = record(raw);
    const type = oneOf(o, "type", CHANGE_TYPES);
    const id = uuid(o, "id");
    if (o.deleted === undefined) {
      if (type === "DELETED") throw new MalformedEventError("deleted: required with DELETED");
      return { type, id };
    }
    return { type, id, deleted: remains(o.deleted) };
  };
}

/**
 * The changes of one kind of entity, for the watchers of every replica. A change made here reaches
 * this replica's watchers at once and the others through ClusterEvents; a change another replica
 * made is read back from the database (the source of truth) before watchers here see it. When the
 * replicas may have missed each other's messages, or a read-back fails, every watcher is told to
 * watch again (UNAVAILABLE), since it would otherwise miss a change.
 */
export class ReplicatedFeed<V, R, T extends string> {
  private readonly local = new Feed<Change<V>>();
  /** Changes waiting to be read back: the latest per id, in the order they last changed. */
  private pending = new Map<string, ChangeMessage<R>>();
  private reading = false;

  constructor(
    private readonly events: ClusterEvents<ChangeTopic<T, R>>,
    private readonly topic: T,
    private readonly entity: ReplicatedEntity<V, R>,
  ) {
    events.subscribe(topic, (message) => {
      if (message.type === "DELETED") entity.deletedElsewhere?.(message.id);
      this.readBack(message);
    });
    events.onGap(() =>
      this.interrupt(
        new UnavailableError("replicas lost contact with each other for a while and watchers may have missed changes; watch again"),
      ),
    );
  }

  /** A change committed here: to this replica's watchers now, and to the other replicas'. */
  publish(type: ChangeType, view: V): void {
    this.local.publish({ type, view });
    const id = this.entity.idOf(view);
    this.events.publish(this.topic, type === "DELETED" ? { type, id, deleted: this.entity.remains(view) } : { type, id });
  }

  /** Entities changed here without a view at hand (by agents, by lease expiry): read back for every replica. */
  announce(ids: string[]): void {
    for (const id of ids) {
      this.events.publish(this.topic, { type: "MODIFIED", id });
      this.readBack({ type: "MODIFIED", id });
    }
  }

  /** Changes from now on, until `signal` aborts (see Feed.subscribe). */
  subscribe(options: FeedOptions<Change<V>>, signal: AbortSignal): AsyncIterable<Delivery<Change<V>>> {
    return this.local.subscribe(options, signal);
  }

  /** Ends every current subscription with `error`: its subscriber must start over. */
  interrupt(error: Error): void {
    this.local.interrupt(error);
  }

  /** How many subscribe here. */
  get size(): number {
    return this.local.size;
  }

  /**
   * Reads changes back one batch at a time, each batch the newest state of every id in it, so a slow
   * read can never publish an older state after a newer one.
   */
  private readBack(message: ChangeMessage<R>): void {
    // A deletion is final (ids are never reused): a later change of the same id must not replace it,
    // or the read would find no row and watchers would never hear of the deletion.
    if (this.pending.get(message.id)?.deleted && !message.deleted) return;
    this.pending.delete(message.id); // set again at the end: a batch keeps the order of the latest changes
    this.pending.set(message.id, message);
    if (this.reading) return;
    this.reading = true;
    void (async () => {
      while (this.pending.size > 0) {
        const batch = this.pending;
        this.pending = new Map();
        await this.publishRead(batch).catch(() => this.interrupt(readFailed()));
      }
      this.reading = false;
    })();
  }

  private async publishRead(batch: Map<string, ChangeMessage<R>>): Promise<void> {
    if (this.local.size === 0) return; // nobody watches here: reading would cost for nothing
    const ids = [...batch.values()].filter((m) => !m.deleted).map((m) => m.id);
    const current = new Map((ids.length > 0 ? await this.entity.read(ids) : []).map((v) => [this.entity.idOf(v), v]));
    for (const { type, id, deleted } of batch.values()) {
      // One gone without a DELETED here was deleted after this change; that DELETED follows.
      const view = deleted ? this.entity.tombstone(id, deleted) : current.get(id);
      if (view) this.local.publish({ type, view });
    }
  }
}
