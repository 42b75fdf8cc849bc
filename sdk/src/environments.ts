import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { RemoteGpuClient } from "./client.js";
import { AbortedError, CanceledError, DeadlineExceededError, EnvironmentFailedError, NotFoundError, UnavailableError } from "./errors.js";
import { EnvironmentStatus, WatchEventType, type Environment, type LogLine } from "./generated.js";

/** Options of {@link waitForEnvironment}. */
export interface WaitForEnvironmentOptions {
  /**
   * How long to wait, in milliseconds, before rejecting with `DeadlineExceededError`; `0` waits
   * for ever. The default matches the server's default start timeout, after which it marks an
   * environment that is not RUNNING as FAILED.
   * @default 600000
   */
  timeoutMs?: number;
  /**
   * Stops waiting; the promise then rejects with `CanceledError`.
   * @default none
   */
  signal?: AbortSignal;
}

/**
 * Waits until an environment has `status` and resolves with it, as seen at that moment:
 *
 * ```ts
 * const env = await waitForEnvironment(client, created.id, EnvironmentStatus.RUNNING, { timeoutMs: 120_000 });
 * ```
 *
 * Built on WatchEnvironments, so it reacts at once and polls nothing; a watch broken by
 * `UNAVAILABLE` or `ABORTED` (a server restart) is opened again. Rejects with
 * `EnvironmentFailedError` when the environment reaches FAILED instead (its `statusMessage` says
 * why), `NotFoundError` when it does not exist or is deleted meanwhile, `DeadlineExceededError`
 * after `timeoutMs`, and `CanceledError` when `signal` aborts.
 *
 * @param client A client, or anything with its `environments` sub-client.
 * @param environmentId The environment's id.
 * @param status The status to wait for, e.g. `EnvironmentStatus.RUNNING`.
 */
export async function waitForEnvironment(
  client: Pick<RemoteGpuClient, "environments">,
  environmentId: string,
  status: EnvironmentStatus,
  options: WaitForEnvironmentOptions = {},
): Promise<Environment> {
  const timeoutMs = options.timeoutMs ?? 600_000;
  const wanted = EnvironmentStatus[status] ?? String(status);
  const stop = new AbortController();
  let timedOut = false;
  const timer =
    timeoutMs > 0
      ? setTimeout(() => {
          timedOut = true;
          stop.abort();
        }, timeoutMs)
      : undefined;
  const cancel = () => stop.abort();
  options.signal?.addEventListener("abort", cancel, { once: true });
  if (options.signal?.aborted) stop.abort();
  let last: Environment | undefined;
  try {
    for (let failures = 0; !stop.signal.aborted; failures++) {
      try {
        for await (const event of client.environments.watchEnvironments({ environmentId }, { signal: stop.signal })) {
          const env = event.environment;
          if (!env) continue;
          last = env;
          failures = 0;
          if (env.status === status || (status === EnvironmentStatus.DELETED && event.type === WatchEventType.DELETED)) return env;
          if (event.type === WatchEventType.DELETED || env.status === EnvironmentStatus.DELETED) {
            throw new NotFoundError(`environment ${environmentId} was deleted while waiting for ${wanted}`);
          }
          if (env.status === EnvironmentStatus.FAILED) throw new EnvironmentFailedError(env, wanted);
        }
      } catch (err) {
        if (stop.signal.aborted) break;
        if (!(err instanceof UnavailableError || err instanceof AbortedError)) throw err;
      }
      // The watch ended or broke: open it again after a pause that grows with repeated failures.
      await pause(Math.min(5000, 100 * 2 ** failures), stop.signal);
    }
    if (timedOut) {
      const seen = last ? `last seen ${EnvironmentStatus[last.status]}` : "never seen";
      throw new DeadlineExceededError(`environment ${environmentId} did not reach ${wanted} within ${timeoutMs} ms (${seen})`);
    }
    throw new CanceledError(`waiting for environment ${environmentId} to reach ${wanted} was cancelled`);
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", cancel);
    stop.abort();
  }
}

/** Options of {@link followLogs}. */
export interface FollowLogsOptions {
  /**
   * How many of the latest lines to start with (at most 10,000).
   * @default 100
   */
  tailLines?: number;
  /**
   * Keep streaming new lines until the environment ends or `signal` aborts; `false` returns the
   * tail only.
   * @default true
   */
  follow?: boolean;
  /**
   * Only lines written at or after this time.
   * @default none: the last `tailLines` lines, whenever written
   */
  sinceTime?: Date;
  /**
   * Stops following; the loop then ends without an error.
   * @default none
   */
  signal?: AbortSignal;
  /**
   * Follow on by itself when the stream breaks with `UNAVAILABLE` or `ABORTED` (the server was
   * restarted or deployed, a replica went away): the log is opened again from the time of the last
   * line seen, after a pause that grows with repeated failures, and no line is given twice.
   * @default false
   */
  resume?: boolean;
}

/** The most lines one StreamLogs call starts with (the server's limit). */
const MAX_TAIL_LINES = 10_000;

/**
 * Iterates over an environment's output, oldest line first: the last `tailLines` lines, then every
 * new line as the agent reports it, until the environment stops, fails or is deleted (the loop then
 * ends) or `signal` aborts (the loop ends too). A deleted environment's archived log is served as
 * well.
 *
 * ```ts
 * for await (const line of followLogs(client, env.id, { tailLines: 20, signal, resume: true })) console.log(line.text);
 * ```
 *
 * With `resume`, a server restart does not end the loop: it follows on where it was.
 *
 * @param client A client, or anything with its `environments` sub-client.
 * @param environmentId The environment's id.
 * @returns The lines with their time and stream (stdout, stderr, or RemoteGPU's own `SYSTEM` lines).
 */
export async function* followLogs(
  client: Pick<RemoteGpuClient, "environments">,
  environmentId: string,
  options: FollowLogsOptions = {},
): AsyncGenerator<LogLine, void, undefined> {
  const request = {
    environmentId,
    tailLines: options.tailLines ?? 100,
    follow: options.follow ?? true,
    sinceTime: options.sinceTime && timestampFromDate(options.sinceTime),
  };
  // The newest time seen and how many lines had it: a resumed stream (since that time) repeats them.
  let lastTime: LogLine["time"];
  let atLastTime = 0;
  for (let failures = 0; ; failures++) {
    try {
      const resumedFrom = lastTime;
      let repeats = atLastTime;
      const resumed = resumedFrom ? { ...request, sinceTime: resumedFrom, tailLines: MAX_TAIL_LINES } : request;
      for await (const res of client.environments.streamLogs(resumed, { signal: options.signal })) {
        for (const line of res.lines) {
          if (resumedFrom && line.time) {
            const order = compareTimes(line.time, resumedFrom);
            if (order < 0) continue;
            if (order === 0 && repeats > 0) {
              repeats--;
              continue;
            }
          }
          if (line.time && lastTime && compareTimes(line.time, lastTime) === 0) atLastTime++;
          else atLastTime = 1;
          lastTime = line.time ?? lastTime;
          failures = 0;
          yield line;
        }
      }
      return;
    } catch (err) {
      if (options.signal?.aborted && err instanceof CanceledError) return;
      if (!options.resume || !(err instanceof UnavailableError || err instanceof AbortedError)) throw err;
    }
    await pause(Math.min(5000, 100 * 2 ** failures), options.signal ?? new AbortController().signal);
    if (options.signal?.aborted) return;
  }
}

function compareTimes(a: NonNullable<LogLine["time"]>, b: NonNullable<LogLine["time"]>): number {
  return a.seconds === b.seconds ? a.nanos - b.nanos : a.seconds < b.seconds ? -1 : 1;
}

/** Waits `ms`; returns early (without error) when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
