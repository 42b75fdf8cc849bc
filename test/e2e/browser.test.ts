import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { build } from "esbuild";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ROOT } from "../support/child.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

// Debian's chromium (see .ci/run): the SDK's browser entry, bundled as an application would, runs in
// a real page on one origin and calls the server on another, over Connect and over gRPC-Web.
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** The page's script: every call it makes, and what came of it, posted back to the page's server. */
const PAGE_SCRIPT = `
import { createRemoteGpuClient, NotFoundError } from "@remotegpu/sdk/web";

const params = new URLSearchParams(location.search);
const results = {};
for (const transport of ["connect", "grpc-web"]) {
  const client = createRemoteGpuClient({ baseUrl: params.get("api"), token: params.get("token"), transport, retries: 0 });
  const result = (results[transport] = {});
  try {
    result.listed = (await client.hosts.listHosts({})).hosts.map((h) => h.name);
    for await (const event of client.hosts.watchHosts({})) {
      result.watched = event.host?.name;
      break;
    }
    try {
      await client.hosts.getHost({ id: "00000000-0000-4000-8000-000000000000" });
    } catch (err) {
      result.missing = err instanceof NotFoundError ? "NotFoundError" : String(err);
    }
  } catch (err) {
    result.error = err?.name ?? String(err);
  }
}
await fetch("/result", { method: "POST", body: JSON.stringify(results) });
`;

interface PageResult {
  listed?: string[];
  watched?: string;
  missing?: string;
  error?: string;
}

/** A web server of one origin: the page, its bundled script, and where the page posts its results. */
async function pageServer(bundle: string): Promise<{ origin: string; results: Promise<Record<string, PageResult>>; close(): void }> {
  let deliver: (r: Record<string, PageResult>) => void = () => undefined;
  const results = new Promise<Record<string, PageResult>>((resolve) => (deliver = resolve));
  const server = http.createServer((req, res) => {
    if (req.url === "/result") {
      let body = "";
      req.on("data", (c: Buffer) => (body += c));
      req.on("end", () => {
        deliver(JSON.parse(body) as Record<string, PageResult>);
        res.end();
      });
    } else if (req.url === "/app.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><script type="module" src="/app.js"></script>');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    results,
    close: () => server.close(),
  };
}

describe("the SDK's web entry in a browser, from another origin (CORS)", function () {
  this.timeout(120_000);
  let bundle: string;
  let allowed: Awaited<ReturnType<typeof pageServer>>;
  let refused: Awaited<ReturnType<typeof pageServer>>;
  let server: TestServer;
  let visits = 0;
  let profiles: string;

  before(async () => {
    const out = await build({
      stdin: { contents: PAGE_SCRIPT, resolveDir: ROOT, loader: "js", sourcefile: "page.js" },
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      conditions: ["@remotegpu/source"],
      write: false,
      logLevel: "silent",
    });
    bundle = out.outputFiles[0]!.text;
    allowed = await pageServer(bundle);
    refused = await pageServer(bundle);
    server = await startTestServer({ env: { CORS_ALLOWED_ORIGINS: `https://elsewhere.example, ${allowed.origin}` } });
    await server.client(HostService).createHost({ name: "seen-from-a-page", address: "10.2.0.1" });
    profiles = await mkdtemp(path.join(tmpdir(), "remotegpu-chromium-"));
  });
  after(async () => {
    allowed?.close();
    refused?.close();
    await server?.close();
    if (profiles) await rm(profiles, { recursive: true, force: true });
  });

  /** Opens the page in headless Chromium and waits for what it posts back. */
  async function visit(page: Awaited<ReturnType<typeof pageServer>>): Promise<Record<string, PageResult>> {
    const url = `${page.origin}/?api=${encodeURIComponent(server.baseUrl)}&token=${ADMIN_TOKEN}`;
    const browser = spawn(
      CHROMIUM,
      ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", `--user-data-dir=${path.join(profiles, String(visits++))}`, url],
      { stdio: "ignore", detached: true },
    );
    const failed = new Promise<never>((_, reject) => {
      browser.once("error", (err) => reject(new Error(`cannot run ${CHROMIUM} (apt-get install chromium): ${err.message}`)));
      browser.once("exit", (code) => reject(new Error(`chromium exited (${code}) before the page reported`)));
    });
    failed.catch(() => undefined); // it exits when killed below, after the race
    try {
      return await Promise.race([page.results, failed]);
    } finally {
      // The whole process group: Chromium starts helpers of its own.
      if (browser.exitCode === null) process.kill(-browser.pid!, "SIGKILL");
    }
  }

  it("serves a page on an allowed origin over Connect and gRPC-Web: unary calls, a watch, and error codes", async () => {
    const results = await visit(allowed);
    for (const transport of ["connect", "grpc-web"]) {
      assert.deepEqual(
        results[transport],
        { listed: ["seen-from-a-page"], watched: "seen-from-a-page", missing: "NotFoundError" },
        `${transport}: ${JSON.stringify(results[transport])}`,
      );
    }
  });

  it("gives a page on any other origin nothing: the browser refuses the answers to it", async () => {
    const results = await visit(refused);
    for (const transport of ["connect", "grpc-web"]) {
      assert.equal(results[transport]?.listed, undefined, `${transport}: ${JSON.stringify(results[transport])}`);
      assert.ok(results[transport]?.error, `${transport}: ${JSON.stringify(results[transport])}`);
    }
  });

  it("answers the preflight of an allowed origin with the Connect and gRPC-Web headers, and another origin's with none", async () => {
    const preflight = (origin: string) =>
      fetch(`${server.baseUrl}/remotegpu.v1.HostService/ListHosts`, {
        method: "OPTIONS",
        headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type" },
      });
    const ok = await preflight(allowed.origin);
    assert.equal(ok.status, 204);
    assert.equal(ok.headers.get("access-control-allow-origin"), allowed.origin);
    assert.match(ok.headers.get("access-control-allow-methods") ?? "", /POST/);
    for (const header of ["authorization", "content-type", "connect-protocol-version", "x-grpc-web", "grpc-timeout"]) {
      assert.match(ok.headers.get("access-control-allow-headers") ?? "", new RegExp(header, "i"));
    }
    const other = await preflight(refused.origin);
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    assert.equal(other.headers.get("access-control-allow-headers"), null);

    const call = await fetch(`${server.baseUrl}/remotegpu.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { origin: allowed.origin, "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
      body: "{}",
    });
    assert.equal(call.headers.get("access-control-allow-origin"), allowed.origin);
    for (const header of ["grpc-status", "grpc-message", "x-request-id"]) {
      assert.match(call.headers.get("access-control-expose-headers") ?? "", new RegExp(header, "i"));
    }
  });
});
