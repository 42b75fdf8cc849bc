import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";

/** What every command gets: the four service clients, the output mode and where output goes. */
export interface Cli {
  hosts: Client<typeof HostService>;
  gpus: Client<typeof GpuService>;
  workspaces: Client<typeof WorkspaceService>;
  environments: Client<typeof EnvironmentService>;
  json: boolean;
  out(text: string): void;
  /** Aborted on Ctrl-C: long-running commands (logs --follow, top) end cleanly. */
  signal: AbortSignal;
}

/** Unary calls give up after this long; streams run until the command ends them. */
const UNARY_TIMEOUT_MS = 30_000;

export function connect(opts: { url: string; token?: string; json: boolean; signal: AbortSignal }): Cli {
  const auth: Interceptor = (next) => async (req) => {
    if (opts.token) req.header.set("authorization", `Bearer ${opts.token}`);
    return next(req);
  };
  // Connect over HTTP/2 (h2c on http://): one connection, server streams for logs and telemetry.
  const transport = createConnectTransport({ baseUrl: opts.url, httpVersion: "2", interceptors: [auth], defaultTimeoutMs: UNARY_TIMEOUT_MS });
  return {
    hosts: createClient(HostService, transport),
    gpus: createClient(GpuService, transport),
    workspaces: createClient(WorkspaceService, transport),
    environments: createClient(EnvironmentService, transport),
    json: opts.json,
    out: (text) => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`),
    signal: opts.signal,
  };
}

/** Every item of a paginated list. */
export async function listAll<T>(page: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>): Promise<T[]> {
  const all: T[] = [];
  let token = "";
  do {
    const { items, nextPageToken } = await page(token);
    all.push(...items);
    token = nextPageToken;
  } while (token);
  return all;
}

/** A mistake on the command line: exit code 2 and a pointer to --help. */
export class UsageError extends Error {}

/** Ids are UUIDs; anything else names a host or workspace. */
export const isId = (ref: string) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(ref);
