export interface EventuallyOptions {
  /** How long to keep trying before failing. @default 30000 */
  ms?: number;
  /** Pause between tries. @default 100 */
  everyMs?: number;
  /**
   * Runs before each pause, for conditions that only move when something is driven (an in-process
   * server's background rounds under a manual clock, say).
   */
  between?: () => unknown;
}

/**
 * Polls `check` (sync or async) until it returns something truthy, then returns it; after the
 * timeout fails naming `what`, and the error of the last try if it threw (a throwing check counts as
 * "not yet"). For waiting on things that happen on their own (real sockets, processes, timers), where no
 * clock can be moved instead. `options` may be just the timeout in ms, and then `everyMs` follows.
 */
export async function eventually<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  options: EventuallyOptions | number = {},
  everyMs?: number,
): Promise<T> {
  const { ms = 30_000, everyMs: pause = everyMs ?? 100, between } = typeof options === "number" ? { ms: options } : options;
  const deadline = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      if (lastError === undefined) throw new Error(`${what}: not within ${ms} ms`);
      const reason = lastError instanceof Error ? lastError.message : String(lastError);
      throw new Error(`${what}: not within ${ms} ms (last try threw: ${reason})`, { cause: lastError });
    }
    await between?.();
    await new Promise((r) => setTimeout(r, pause));
  }
}
