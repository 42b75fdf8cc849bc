import type { ChainableCommander, Redis } from "ioredis";
import { UnavailableError } from "../errors.js";

/** One entry of a relayed tunnel: bytes, the fingerprint of the key the agent accepted, or the answer. */
export interface RelayEntry {
  data?: Buffer;
  fingerprint?: string;
  /** The first entry from the agent's replica: the agent called back. */
  answered?: true;
}

/** Entries either side may have sent and the other not yet read: the window, per direction. */
const WINDOW = 64;
/** The reader acknowledges after this many entries (a quarter of the window). */
const ACK_EVERY = 16;
/** An idle tunnel says it is alive this often; a side that hears nothing for IDLE_LIMIT_MS takes the other for gone. */
const KEEPALIVE_MS = 5_000;
const IDLE_LIMIT_MS = 20_000;
/** Keys expire this long after their last write, should both replicas die. */
const KEY_TTL_MS = 120_000;

type Side = "client" | "agent";

/** Runs a MULTI, failing if any command in it failed (ioredis resolves with the errors inside). */
async function transaction(multi: ChainableCommander): Promise<void> {
  for (const [err] of (await multi.exec()) ?? []) if (err) throw err;
}

/**
 * Carries an SSH tunnel between the replica holding the user's call and the one holding the
 * agent's, when they differ, through two Redis streams (one each way). Each reader acknowledges
 * what it has read in a stream of its own, and a writer stops at WINDOW entries unread, so a slow
 * end slows the other instead of filling Redis. Blocking reads take a connection each, so every
 * relayed tunnel holds one more Redis connection on each of the two replicas.
 */
export class SshRelay {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(tunnelId: string, name: string): string {
    return `${this.prefix}ssh:${tunnelId}:${name}`;
  }

  /** The client's replica, before asking the agent: which host may answer, and for how long. */
  async expect(tunnelId: string, hostId: string, ms: number): Promise<void> {
    await this.redis.set(this.key(tunnelId, "host"), hostId, "PX", ms);
  }

  /**
   * The agent's replica: whether this tunnel waits for `hostId`'s agent elsewhere (once: a second
   * claim fails; a claim for another host leaves it waiting).
   */
  async claim(tunnelId: string, hostId: string): Promise<boolean> {
    const taken = await this.redis
      .eval(
        `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`,
        1,
        this.key(tunnelId, "host"),
        hostId,
      )
      .catch(() => 0);
    return taken === 1;
  }

  /** Forgets a tunnel the agent did not answer, so a late answer finds nothing. */
  async forget(tunnelId: string): Promise<void> {
    await this.redis.del(this.key(tunnelId, "host")).catch(() => undefined);
  }

  /**
   * One end of a relayed tunnel: sends `out` to the other replica and yields what it sends, until
   * either ends or `signal` aborts. Ends with UNAVAILABLE when the other replica falls silent or
   * Redis goes away.
   */
  async *link(tunnelId: string, side: Side, out: AsyncIterable<RelayEntry>, signal: AbortSignal): AsyncGenerator<RelayEntry> {
    const other: Side = side === "client" ? "agent" : "client";
    const keys = {
      send: this.key(tunnelId, `from-${side}`),
      sendAcks: this.key(tunnelId, `acks-${other}`),
      receive: this.key(tunnelId, `from-${other}`),
      receiveAcks: this.key(tunnelId, `acks-${side}`),
    };
    const reader = this.redis.duplicate({ lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
    reader.on("error", () => undefined); // what matters surfaces as a failed read
    const hangUp = () => reader.disconnect();
    signal.addEventListener("abort", hangUp, { once: true });
    let sent = 0;
    let acked = 0;
    let ended = false;
    let theyEnded = false;
    let wake = () => {};
    // The reader trims what it has read (XTRIM MINID), so nothing unread is ever trimmed here.
    const add = (fields: (string | Buffer)[]) =>
      transaction(
        this.redis
          .multi()
          .xadd(keys.send, "*", ...fields)
          .pexpire(keys.send, KEY_TTL_MS),
      );
    const keepalive = setInterval(() => void add(["k", "1"]).catch(() => undefined), KEEPALIVE_MS);
    const pump = (async () => {
      try {
        for await (const entry of out) {
          while (sent - acked >= WINDOW && !ended) await new Promise<void>((resolve) => (wake = resolve));
          if (ended) return;
          const fields: (string | Buffer)[] = [];
          if (entry.data) fields.push("d", entry.data);
          if (entry.fingerprint) fields.push("f", entry.fingerprint);
          if (entry.answered) fields.push("a", "1");
          if (fields.length === 0) continue;
          await add(fields);
          sent++;
        }
        await add(["end", "1"]);
      } catch (err) {
        await add(["err", err instanceof Error ? err.message : String(err)]).catch(() => undefined);
      }
    })();
    try {
      if (signal.aborted) throw new UnavailableError("the tunnel was closed at this replica");
      await reader.connect();
      let position = { receive: "0", acks: "0" };
      let read = 0;
      let heard = Date.now();
      for (;;) {
        const got = await reader.xreadBuffer(
          "COUNT",
          WINDOW,
          "BLOCK",
          KEEPALIVE_MS,
          "STREAMS",
          keys.receive,
          keys.receiveAcks,
          position.receive,
          position.acks,
        );
        if (!got) {
          if (Date.now() - heard > IDLE_LIMIT_MS) throw new UnavailableError("the replica at the tunnel's other end went silent");
          continue;
        }
        heard = Date.now();
        const before = position.receive;
        for (const [name, entries] of got) {
          const isAcks = name.toString() === keys.receiveAcks;
          for (const [id, flat] of entries) {
            const fields = new Map<string, Buffer>();
            for (let i = 0; i + 1 < flat.length; i += 2) fields.set(flat[i]!.toString(), flat[i + 1]!);
            if (isAcks) {
              position = { ...position, acks: id.toString() };
              acked = Math.max(acked, Number(fields.get("n")));
              wake();
              continue;
            }
            position = { ...position, receive: id.toString() };
            if (fields.has("end")) {
              theyEnded = true;
              return;
            }
            if (fields.has("err")) {
              theyEnded = true;
              throw new UnavailableError(fields.get("err")!.toString());
            }
            if (fields.has("k")) continue;
            if (++read % ACK_EVERY === 0) {
              await transaction(
                this.redis.multi().xadd(keys.sendAcks, "MAXLEN", "~", "64", "*", "n", String(read)).pexpire(keys.sendAcks, KEY_TTL_MS),
              );
            }
            yield {
              data: fields.get("d"),
              fingerprint: fields.get("f")?.toString(),
              answered: fields.has("a") ? true : undefined,
            };
          }
        }
        // What this side has read (keepalives included) leaves the stream.
        if (position.receive !== before) await this.redis.xtrim(keys.receive, "MINID", position.receive);
      }
    } catch (err) {
      if (signal.aborted) throw new UnavailableError("the tunnel was closed at this replica");
      if (err instanceof UnavailableError) throw err;
      throw new UnavailableError(`the tunnel between replicas failed: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      ended = true;
      wake();
      signal.removeEventListener("abort", hangUp);
      clearInterval(keepalive);
      reader.disconnect();
      // The other side is told, rather than left to wait for silence.
      if (!theyEnded) await add(["err", "the tunnel ended at the other replica"]).catch(() => undefined);
      // What this side reads is done with; the other side's keys expire if it does not delete them.
      await this.redis.del(keys.receive, keys.receiveAcks).catch(() => undefined);
      void pump;
    }
  }
}
