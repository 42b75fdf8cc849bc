import { createRemoteGpuClient, type RemoteGpuClient } from "@remotegpu/sdk";

/** What every command gets: the SDK's client, the output mode and where output goes. */
export interface Cli {
  client: RemoteGpuClient;
  json: boolean;
  out(text: string): void;
  /** Aborted on Ctrl-C: long-running commands (logs --follow, top) end cleanly. */
  signal: AbortSignal;
  /** The server and the token, for commands that run another program (ssh) that calls back. */
  url: string;
  token: string;
}

export function connect(opts: { url: string; token: string; json: boolean; signal: AbortSignal }): Cli {
  // The SDK's defaults suit a terminal: Connect over HTTP/2 (h2c on http://), a 30 s deadline on
  // unary calls and none on streams, retries of idempotent calls while a server restarts.
  const client = createRemoteGpuClient({ baseUrl: opts.url, token: opts.token });
  return {
    client,
    json: opts.json,
    out: (text) => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`),
    signal: opts.signal,
    url: opts.url,
    token: opts.token,
  };
}

/** The server's largest page: the fewest round trips for a whole list. */
export const PAGE_SIZE = 1000;

/** Every item of a list the SDK's `listAll` iterates over (Node 20 has no `Array.fromAsync`). */
export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

/** A mistake on the command line: exit code 2 and a pointer to --help. */
export class UsageError extends Error {}

/** Ids are UUIDs; anything else names a host or workspace. */
export const isId = (ref: string) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(ref);
