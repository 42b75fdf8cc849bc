import { strict as assert } from "node:assert";
import { createConnectRouter } from "@connectrpc/connect";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { fastBrotli, fastGzip } from "../../src/rpc/compression.js";
import { HealthStatus } from "../../src/rpc/health.js";
import { routes } from "../../src/rpc/routes.js";
import { envelope } from "../support/grpc-envelope.js";

/** 4 KiB of bytes, compressible: what a compressed answer would shrink. */
const BYTES = new Uint8Array(4096).fill(7);

/** Handlers that answer each stream method asked about here with one message holding BYTES. */
const handlers = {
  hosts: {
    async *acceptSshTunnel() {
      yield { data: BYTES };
    },
    async *watchHosts() {
      yield { host: { name: "x".repeat(4096) } };
    },
  },
  environments: {
    async *openSshTunnel() {
      yield { data: BYTES };
    },
  },
  workspaces: {
    async *downloadFile() {
      yield { part: { case: "chunk" as const, value: BYTES } };
    },
  },
  gpus: {},
};

/** The flags byte of each message of the answer to `path` for a gRPC caller that accepts gzip. */
async function flags(path: string): Promise<number[]> {
  const router = createConnectRouter({ acceptCompression: [fastGzip, fastBrotli] });
  routes(handlers as unknown as Parameters<typeof routes>[0], new HealthStatus())(router);
  // As RpcServer does: the last handler registered for a path is the one that serves it.
  const handler = router.handlers.filter((h) => h.requestPath === path).at(-1)!;
  const res = await handler({
    httpVersion: "2.0",
    method: "POST",
    url: `http://localhost${path}`,
    header: new Headers({ "content-type": "application/grpc", te: "trailers", "grpc-accept-encoding": "gzip" }),
    body: (async function* () {
      yield envelope(new Uint8Array(0));
    })(),
    signal: new AbortController().signal,
  });
  const chunks: Uint8Array[] = [];
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) chunks.push(chunk);
  const all = Buffer.concat(chunks);
  const out: number[] = [];
  for (let at = 0; at < all.length; at += 5 + all.readUInt32BE(at + 1)) out.push(all[at]!);
  return out;
}

describe("routes: what goes out compressed", () => {
  it("compresses a large answer for a caller that accepts gzip", async () => {
    assert.deepEqual(await flags(`/${HostService.typeName}/WatchHosts`), [1]);
  });

  for (const [service, method] of [
    [WorkspaceService, "DownloadFile"],
    [EnvironmentService, "OpenSshTunnel"],
    [HostService, "AcceptSshTunnel"],
  ] as const) {
    it(`sends ${method}'s bytes as they are, which would not shrink in real use`, async () => {
      assert.deepEqual(await flags(`/${service.typeName}/${method}`), [0]);
    });
  }
});
