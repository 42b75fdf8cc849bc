import type { Interceptor } from "@connectrpc/connect";

/** Where a bearer token comes from: a fixed string, or a function asked before every attempt (for rotating tokens). */
export type TokenSource = string | (() => string | Promise<string>);

/** How long to wait between retries: `min(maxMs, initialMs * multiplier^n)`, of which a random half is jitter. */
export interface RetryBackoff {
  /**
   * Upper bound of the first wait, in milliseconds.
   * @default 100
   */
  initialMs?: number;
  /**
   * Upper bound of any wait, in milliseconds.
   * @default 2000
   */
  maxMs?: number;
  /**
   * Growth of the bound from one retry to the next.
   * @default 2
   */
  multiplier?: number;
}

/** Options of `createRemoteGpuClient`, common to the Node and the browser entry. */
export interface CommonClientOptions {
  /** The server, e.g. `"https://remotegpu.example.com"` or `"http://localhost:8080"`. */
  baseUrl: string;
  /**
   * The token sent as `authorization: Bearer <token>` on every call: the cluster admin token, a
   * workspace API token (`CreateApiToken`) or a host's agent token.
   */
  token: TokenSource;
  /**
   * Deadline of each unary call, in milliseconds, retries included; a call's own
   * `{ timeoutMs }` wins. Streaming calls (watches, logs, uploads, downloads) get no default
   * deadline. `0` turns the default off.
   * @default 30000
   */
  timeoutMs?: number;
  /**
   * How many times an idempotent unary call is retried after `UNAVAILABLE` or `ABORTED`.
   * Idempotent are the methods the contract marks `NO_SIDE_EFFECTS` (Get*, List*, GetUsage, …)
   * and `CreateEnvironment` with a `requestId`. `0` turns retries off.
   * @default 3
   */
  retries?: number;
  /**
   * The waits between retries.
   * @default { initialMs: 100, maxMs: 2000, multiplier: 2 }
   */
  retryBackoff?: RetryBackoff;
  /**
   * Interceptors run on every attempt of every call, after the SDK's own (retries, then the
   * authorization header): use them to add headers, log, or measure.
   * @default []
   */
  interceptors?: Interceptor[];
  /**
   * Protobuf binary (`true`) or JSON (`false`) for the Connect and gRPC-Web protocols.
   * @default true
   */
  useBinaryFormat?: boolean;
}

/** CommonClientOptions with every default filled in. */
export interface ResolvedOptions {
  baseUrl: string;
  token: TokenSource;
  timeoutMs: number;
  retries: number;
  backoff: Required<RetryBackoff>;
  interceptors: Interceptor[];
  useBinaryFormat: boolean;
}

/** Checks the options and fills in the defaults. */
export function resolveOptions(options: CommonClientOptions): ResolvedOptions {
  if (typeof options.baseUrl !== "string" || !/^https?:\/\//.test(options.baseUrl))
    throw new TypeError(`baseUrl must be an http:// or https:// URL, got ${JSON.stringify(options.baseUrl)}`);
  if (typeof options.token !== "function" && (typeof options.token !== "string" || options.token === ""))
    throw new TypeError("token is required");
  const timeoutMs = options.timeoutMs ?? 30_000;
  if (!(timeoutMs >= 0)) throw new RangeError(`timeoutMs must be 0 or more, got ${timeoutMs}`);
  const retries = options.retries ?? 3;
  if (!Number.isInteger(retries) || retries < 0) throw new RangeError(`retries must be a whole number, 0 or more, got ${retries}`);
  const backoff = { initialMs: 100, maxMs: 2000, multiplier: 2, ...options.retryBackoff };
  if (!(backoff.initialMs >= 0 && backoff.maxMs >= 0 && backoff.multiplier >= 1))
    throw new RangeError("retryBackoff: initialMs and maxMs must be 0 or more, multiplier 1 or more");
  return {
    baseUrl: options.baseUrl,
    token: options.token,
    timeoutMs,
    retries,
    backoff,
    interceptors: options.interceptors ?? [],
    useBinaryFormat: options.useBinaryFormat ?? true,
  };
}
