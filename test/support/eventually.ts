/**
 * Polls `check` until it returns something truthy (a failing check counts as "not yet"), then
 * returns it; after `ms` fails naming `what`. For waiting on real processes, where no clock can be
 * moved instead.
 */
export async function eventually<T>(what: string, check: () => Promise<T | undefined | false>, ms = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
