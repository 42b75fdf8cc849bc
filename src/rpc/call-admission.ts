/**
 * Fairness between callers. One event loop and one database pool serve every client, so a client
 * that starts thousands of calls at once would put everyone else's calls behind its own. Each
 * caller (its credentials) on each connection may have at most `perConnection` calls being worked
 * on; the rest of its calls wait in its own queue, and other callers pass them by. Keyed by the
 * credentials too, because one connection may carry many callers: a proxy in front of the servers,
 * or many agents' streams multiplexed onto one connection, each under its own host's token.
 *
 * A call holds its place until its answer is ready (a unary call's response, a stream's first
 * message) or for `holdMs` at most: a watch that waits for a change is not work, and must not
 * keep the connection's other calls waiting.
 */
export class CallAdmission {
  private readonly queues = new WeakMap<object, Map<string, CallerQueue>>();

  constructor(
    private readonly perConnection: number,
    private readonly holdMs = 1000,
  ) {}

  /**
   * Waits for a place among the calls `caller` (its authorization header, "" without one) has on
   * `connection`; call the returned function once the answer is ready.
   */
  async enter(connection: object, caller: string, signal: AbortSignal): Promise<() => void> {
    let callers = this.queues.get(connection);
    if (!callers) {
      callers = new Map();
      this.queues.set(connection, callers);
    }
    let queue = callers.get(caller);
    if (!queue) {
      queue = { active: 0, waiting: [] };
      callers.set(caller, queue);
    }
    const handOff = () => {
      const next = queue!.waiting.shift();
      // The place passes on, after the event loop has looked at other callers' input.
      if (next) setImmediate(next);
      else if (--queue!.active === 0) callers.delete(caller);
    };
    if (queue.active >= this.perConnection) {
      await new Promise<void>((resolve, reject) => {
        const entry = () => {
          signal.removeEventListener("abort", onAbort);
          // Given the place after giving up (between the hand-off and now): it goes to the next.
          if (signal.aborted) handOff();
          else resolve();
        };
        const onAbort = () => {
          const at = queue!.waiting.indexOf(entry);
          if (at >= 0) queue!.waiting.splice(at, 1);
          reject(signal.reason);
        };
        queue!.waiting.push(entry);
        signal.addEventListener("abort", onAbort, { once: true });
      });
    } else {
      queue.active++;
    }
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      clearTimeout(timer);
      handOff();
    };
    const timer = setTimeout(leave, this.holdMs);
    timer.unref();
    return leave;
  }
}

interface CallerQueue {
  active: number;
  waiting: (() => void)[];
}
