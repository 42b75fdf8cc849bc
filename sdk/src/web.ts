/**
 * `@remotegpu/sdk/web`: the typed client of RemoteGPU for browsers (and any runtime with fetch),
 * over the Connect protocol or gRPC-Web. Nothing in it imports a Node module.
 *
 * ```ts
 * import { createRemoteGpuClient, listAll } from "@remotegpu/sdk/web";
 *
 * const client = createRemoteGpuClient({ baseUrl: "https://remotegpu.example.com", token });
 * for await (const env of listAll(client.environments.listEnvironments, { workspaceId })) render(env);
 * ```
 *
 * Browsers cannot stream a request body, so uploads (`UploadFile`) and the agent's
 * `StreamHeartbeats` are not available here; server streams (watches, logs, downloads) are.
 * @module
 */

import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { buildClient, clientInterceptors, type RemoteGpuClient } from "./client.js";
import { resolveOptions, type CommonClientOptions } from "./options.js";
import { fetchNetworkErrors } from "./web-errors.js";

export * from "./common.js";

/** Options of the browser `createRemoteGpuClient`. */
export interface RemoteGpuWebClientOptions extends CommonClientOptions {
  /**
   * The protocol: `"connect"` or `"grpc-web"`; the server speaks both.
   * @default "connect"
   */
  transport?: "connect" | "grpc-web";
  /**
   * The fetch to call with.
   * @default globalThis.fetch
   */
  fetch?: typeof globalThis.fetch;
}

/**
 * Creates a RemoteGPU client over fetch: `{ hosts, gpus, workspaces, environments }`, one typed
 * sub-client per service, with the same token, deadline, retry and error behaviour as the Node
 * client (`@remotegpu/sdk`).
 *
 * @param options Where and how to call. Only `baseUrl` and `token` are required.
 */
export function createRemoteGpuClient(options: RemoteGpuWebClientOptions): RemoteGpuClient {
  const resolved = resolveOptions(options);
  const protocol = options.transport ?? "connect";
  const common = {
    baseUrl: resolved.baseUrl,
    useBinaryFormat: resolved.useBinaryFormat,
    interceptors: clientInterceptors(resolved, [fetchNetworkErrors()]),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  };
  let transport: Transport;
  if (protocol === "connect") transport = createConnectTransport(common);
  else if (protocol === "grpc-web") transport = createGrpcWebTransport(common);
  else throw new TypeError(`transport must be "connect" or "grpc-web", got ${JSON.stringify(protocol)}`);
  return buildClient(transport, resolved);
}
