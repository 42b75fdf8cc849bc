/**
 * `@remotegpu/sdk`: the typed client of RemoteGPU for Node.js.
 *
 * ```ts
 * import { createRemoteGpuClient, waitForEnvironment, EnvironmentStatus } from "@remotegpu/sdk";
 *
 * const client = createRemoteGpuClient({ baseUrl: "http://localhost:8080", token: process.env.REMOTEGPU_TOKEN! });
 * const { workspace } = await client.workspaces.createWorkspace({ name: "research" });
 * ```
 *
 * For browsers, import `@remotegpu/sdk/web`.
 * @module
 */

import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, type Http2SessionManager } from "@connectrpc/connect-node";
import { createConnectTransport as createFetchConnectTransport } from "@connectrpc/connect-web";
import { buildClient, clientInterceptors, type RemoteGpuClient } from "./client.js";
import { resolveOptions, type CommonClientOptions } from "./options.js";
import { fetchNetworkErrors } from "./web-errors.js";
import { WideWindowSessions } from "./wide-window-sessions.js";

export * from "./common.js";
export { uploadFile, UPLOAD_CHUNK_BYTES, type UploadData, type UploadFileOptions } from "./upload.js";
export { Channel } from "./channel.js";
export { AgentSession, type AgentSessionOptions, type AgentReading, type AgentWorkloads, type AgentLogger } from "./agent-session.js";

/** Options of the Node `createRemoteGpuClient`. */
export interface RemoteGpuClientOptions extends CommonClientOptions {
  /**
   * The protocol: `"connect"` (Connect over HTTP/2, or HTTP/1.1 with `httpVersion`) or `"grpc"`
   * (gRPC over HTTP/2). The server speaks both on one port; both carry every call, streams included.
   * @default "connect"
   */
  transport?: "grpc" | "connect";
  /**
   * HTTP version of the Connect protocol. HTTP/1.1 carries unary calls, server streams and
   * uploads, but no bidirectional stream (the agent's StreamHeartbeats). Ignored for gRPC.
   * @default "2"
   */
  httpVersion?: "1.1" | "2";
  /**
   * Send Connect calls through this `fetch` instead of Node's HTTP/2 client (to go through a proxy
   * or a test double). Only with `transport: "connect"`; carries no upload (fetch cannot stream a
   * request body).
   * @default none: Node's http2 module
   */
  fetch?: typeof globalThis.fetch;
}

/**
 * Creates a RemoteGPU client for Node.js: `{ hosts, gpus, workspaces, environments }`, one typed
 * sub-client per service over one connection.
 *
 * Every call sends `authorization: Bearer <token>`; unary calls get a deadline of `timeoutMs`
 * (unless they pass their own); idempotent unary calls are retried `retries` times after
 * `UNAVAILABLE` or `ABORTED`, with exponential backoff and jitter; every failure rejects with a
 * named `RemoteGpuError` subclass (`NotFoundError`, `QuotaExceededError`, …).
 *
 * ```ts
 * const client = createRemoteGpuClient({ baseUrl: "http://localhost:8080", token, transport: "grpc" });
 * for await (const gpu of listAll(client.gpus.listGpus, { freeOnly: true })) console.log(gpu.model);
 * ```
 *
 * @param options Where and how to call. Only `baseUrl` and `token` are required.
 */
export function createRemoteGpuClient(options: RemoteGpuClientOptions): RemoteGpuClient {
  const resolved = resolveOptions(options);
  const { baseUrl, useBinaryFormat } = resolved;
  const protocol = options.transport ?? "connect";
  if (protocol !== "connect" && protocol !== "grpc")
    throw new TypeError(`transport must be "connect" or "grpc", got ${JSON.stringify(protocol)}`);
  let sessions: Http2SessionManager | undefined;
  let transport: Transport;
  if (options.fetch) {
    if (protocol !== "connect") throw new TypeError('fetch needs transport "connect"');
    const interceptors = clientInterceptors(resolved, [fetchNetworkErrors()]);
    transport = createFetchConnectTransport({ baseUrl, fetch: options.fetch, interceptors, useBinaryFormat });
  } else if (protocol === "grpc") {
    sessions = new WideWindowSessions(baseUrl);
    transport = createGrpcTransport({ baseUrl, sessionManager: sessions, interceptors: clientInterceptors(resolved) });
  } else if (options.httpVersion === "1.1") {
    transport = createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors: clientInterceptors(resolved), useBinaryFormat });
  } else {
    sessions = new WideWindowSessions(baseUrl);
    transport = createConnectTransport({
      baseUrl,
      httpVersion: "2",
      sessionManager: sessions,
      interceptors: clientInterceptors(resolved),
      useBinaryFormat,
    });
  }
  return buildClient(transport, resolved, () => sessions?.abort());
}

/**
 * Gathers a stream of chunks (e.g. `downloadFile(...)`) into one Buffer.
 *
 * ```ts
 * const csv = (await toBuffer(downloadFile(client, workspaceId, "datasets/train.csv"))).toString("utf8");
 * ```
 *
 * @param chunks The chunks, in order.
 */
export async function toBuffer(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const chunk of chunks) parts.push(chunk);
  return Buffer.concat(parts);
}
