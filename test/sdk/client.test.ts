import { strict as assert } from "node:assert";
import { randomBytes, randomUUID } from "node:crypto";
import net from "node:net";
import { Readable } from "node:stream";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  AlreadyExistsError,
  ApiTokenRole,
  CanceledError,
  createRemoteGpuClient,
  DeadlineExceededError,
  downloadFile,
  InvalidArgumentError,
  listAll,
  NotFoundError,
  PermissionDeniedError,
  RemoteGpuError,
  toBuffer,
  UnauthenticatedError,
  UnavailableError,
  uploadFile,
  UPLOAD_CHUNK_BYTES,
  type RemoteGpuClient,
  type RemoteGpuClientOptions,
  type UploadFileRequest,
  type Workspace,
  type WorkspaceFile,
} from "../../sdk/src/index.js";
import { collectBytes, createRemoteGpuClient as createWebClient } from "../../sdk/src/web.js";
import { WideWindowSessions } from "../../sdk/src/wide-window-sessions.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

const MiB = 1024 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Awaits `call`, asserts it rejected with an instance of `type`, and returns the error. */
async function rejectsWith<E extends Error>(call: Promise<unknown>, type: abstract new (...args: never[]) => E): Promise<E> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof type, `expected ${type.name}, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${type.name}, but the call succeeded`);
}

/** An interceptor that fails the first `times` attempts of `method` with `code`, and counts every attempt of it. */
function flaky(method: string, times: number, code: Code) {
  const stub = {
    attempts: 0,
    interceptor: ((next) => async (req) => {
      if (req.method.name !== method) return next(req);
      stub.attempts++;
      if (stub.attempts <= times) throw new ConnectError(`stub: attempt ${stub.attempts} fails`, code);
      return next(req);
    }) as Interceptor,
  };
  return stub;
}

/** An interceptor that holds every call of `method` for `ms` (or until the call is cancelled). */
function slow(method: string, ms: number): Interceptor {
  return (next) => async (req) => {
    if (req.method.name === method) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, ms);
        req.signal.addEventListener(
          "abort",
          () => {
            clearTimeout(timer);
            reject(req.signal.reason);
          },
          { once: true },
        );
      });
    }
    return next(req);
  };
}

describe("SDK client", () => {
  let server: TestServer;
  const opened: RemoteGpuClient[] = [];
  const client = (options: Partial<RemoteGpuClientOptions> = {}) => {
    const c = createRemoteGpuClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, ...options });
    opened.push(c);
    return c;
  };

  before(async () => {
    server = await startTestServer();
  });
  after(async () => {
    for (const c of opened) c.close();
    await server.close();
  });

  for (const transport of ["connect", "grpc"] as const) {
    describe(`over ${transport}`, () => {
      it("makes typed calls on every sub-client and maps errors with the request id", async () => {
        const c = client({ transport });
        const created: Workspace = (await c.workspaces.createWorkspace({ name: `typed-${transport}`, labels: { team: "ml" } })).workspace!;
        assert.match(created.id, UUID);
        assert.deepEqual((await c.workspaces.getWorkspace({ id: created.id })).workspace?.labels, { team: "ml" });
        const { host, agentToken } = await c.hosts.createHost({ name: `node-${transport}`, address: "10.0.0.9" });
        assert.ok(agentToken.length > 0);
        const gpu = (
          await c.gpus.createGpu({ hostId: host!.id, index: 0, uuid: `GPU-${transport}`, model: "NVIDIA L4", memoryBytes: 24n << 30n })
        ).gpu!;
        assert.equal((await c.gpus.listGpus({ hostId: host!.id })).gpus[0]?.id, gpu.id);
        assert.equal((await c.environments.listEnvironments({ workspaceId: created.id })).totalSize, 0);

        const missing = randomUUID();
        const err = await rejectsWith(c.workspaces.getWorkspace({ id: missing }), NotFoundError);
        assert.ok(err instanceof RemoteGpuError);
        assert.equal(err.code, Code.NotFound);
        assert.equal(err.name, "NotFoundError");
        assert.ok(err.message.includes(missing), err.message);
        assert.match(err.requestId ?? "", UUID, "the server's request id");
        const mine = await rejectsWith(
          c.workspaces.getWorkspace({ id: missing }, { headers: { "x-request-id": `mine-${transport}` } }),
          NotFoundError,
        );
        assert.equal(mine.requestId, `mine-${transport}`, "a request id the caller sent comes back");
      });

      it("streams, and maps errors that end a stream", async () => {
        const c = client({ transport });
        const abort = new AbortController();
        const hosts: string[] = [];
        const watching = (async () => {
          for await (const ev of c.hosts.watchHosts({}, { signal: abort.signal })) {
            hosts.push(ev.host!.name);
            if (hosts.includes(`node-${transport}`)) abort.abort();
          }
        })();
        await rejectsWith(watching, CanceledError);
        assert.ok(hosts.includes(`node-${transport}`), hosts.join());
        const bad = c.environments.streamLogs({ environmentId: randomUUID() });
        await rejectsWith(bad[Symbol.asyncIterator]().next(), NotFoundError);
      });
    });
  }

  describe("errors", () => {
    it("InvalidArgumentError names every bad field", async () => {
      const err = await rejectsWith(
        client().workspaces.createWorkspace({ name: "Bad Name", displayName: "x".repeat(300) }),
        InvalidArgumentError,
      );
      const fields = err.violations.map((v) => v.field);
      assert.ok(fields.includes("name") && fields.includes("display_name"), JSON.stringify(err.violations));
      assert.ok(err.violations.every((v) => v.description.length > 0));
      assert.equal(err.message, err.violations.map((v) => `${v.field}: ${v.description}`).join("; "));
    });

    it("AlreadyExistsError, UnauthenticatedError, PermissionDeniedError", async () => {
      const c = client();
      const ws = (await c.workspaces.createWorkspace({ name: "dup" })).workspace!;
      await rejectsWith(c.workspaces.createWorkspace({ name: "dup" }), AlreadyExistsError);
      await rejectsWith(client({ token: "not-a-valid-token-at-all" }).workspaces.listWorkspaces({}), UnauthenticatedError);
      const { secret } = await c.workspaces.createApiToken({ workspaceId: ws.id, name: "viewer", role: ApiTokenRole.VIEWER });
      const viewer = client({ token: secret });
      assert.equal((await viewer.workspaces.getWorkspace({ id: ws.id })).workspace?.name, "dup");
      await rejectsWith(viewer.workspaces.createWorkspace({ name: "nope" }), PermissionDeniedError);
      // A token may also come from a function, asked on each call.
      let asked = 0;
      await client({
        token: () => {
          asked++;
          return ADMIN_TOKEN;
        },
      }).workspaces.listWorkspaces({});
      assert.equal(asked, 1);
    });

    it("refuses bad options at once", () => {
      assert.throws(() => createRemoteGpuClient({ baseUrl: "localhost:8080", token: "t" }), /baseUrl/);
      assert.throws(() => createRemoteGpuClient({ baseUrl: server.baseUrl, token: "" }), /token/);
      assert.throws(() => createRemoteGpuClient({ baseUrl: server.baseUrl, token: "t", retries: -1 }), /retries/);
      assert.throws(() => createRemoteGpuClient({ baseUrl: server.baseUrl, token: "t", transport: "grpc", fetch }), /fetch/);
    });
  });

  describe("retries", () => {
    const fast = { retryBackoff: { initialMs: 5, maxMs: 20 } };

    it("retries an idempotent call after UNAVAILABLE and ABORTED, up to `retries` times", async () => {
      const ws = (await client().workspaces.createWorkspace({ name: "retried" })).workspace!;
      const twice = flaky("GetWorkspace", 2, Code.Unavailable);
      assert.equal(
        (await client({ ...fast, interceptors: [twice.interceptor] }).workspaces.getWorkspace({ id: ws.id })).workspace?.id,
        ws.id,
      );
      assert.equal(twice.attempts, 3);

      const aborted = flaky("ListWorkspaces", 1, Code.Aborted);
      await client({ ...fast, interceptors: [aborted.interceptor] }).workspaces.listWorkspaces({});
      assert.equal(aborted.attempts, 2);

      const always = flaky("GetWorkspace", 100, Code.Unavailable);
      await rejectsWith(
        client({ ...fast, retries: 3, interceptors: [always.interceptor] }).workspaces.getWorkspace({ id: ws.id }),
        UnavailableError,
      );
      assert.equal(always.attempts, 4, "one attempt and 3 retries");

      const off = flaky("GetWorkspace", 100, Code.Unavailable);
      await rejectsWith(client({ retries: 0, interceptors: [off.interceptor] }).workspaces.getWorkspace({ id: ws.id }), UnavailableError);
      assert.equal(off.attempts, 1);
    });

    it("does not retry a call with side effects, nor other codes", async () => {
      const once = flaky("CreateWorkspace", 1, Code.Unavailable);
      await rejectsWith(
        client({ ...fast, interceptors: [once.interceptor] }).workspaces.createWorkspace({ name: "not-retried" }),
        UnavailableError,
      );
      assert.equal(once.attempts, 1);
      const counted = flaky("GetWorkspace", 0, Code.Unavailable);
      await rejectsWith(
        client({ ...fast, interceptors: [counted.interceptor] }).workspaces.getWorkspace({ id: randomUUID() }),
        NotFoundError,
      );
      assert.equal(counted.attempts, 1, "NOT_FOUND is final");
      assert.equal(
        (await client().workspaces.listWorkspaces({ labelSelector: "" })).workspaces.some((w) => w.name === "not-retried"),
        false,
      );
    });

    it("rides out a server that is briefly down", async () => {
      for (const transport of ["grpc", "connect"] as const) {
        // A port with nothing behind it for a moment, then a proxy to the real server.
        const outage = await briefOutage(server.port, 150);
        const counter = flaky("ListWorkspaces", 0, Code.Unavailable);
        const c = client({
          baseUrl: outage.baseUrl,
          transport,
          retries: 8,
          retryBackoff: { initialMs: 40, maxMs: 200 },
          interceptors: [counter.interceptor],
        });
        try {
          assert.ok((await c.workspaces.listWorkspaces({})).workspaces.length > 0);
          assert.ok(counter.attempts >= 2, `${transport}: ${counter.attempts} attempt(s)`);
        } finally {
          c.close();
          await outage.close();
        }
      }
    });
  });

  describe("deadlines", () => {
    it("gives unary calls the default deadline, which a call's own timeoutMs overrides", async () => {
      const c = client({ timeoutMs: 100, interceptors: [slow("ListWorkspaces", 300)] });
      const started = Date.now();
      const err = await rejectsWith(c.workspaces.listWorkspaces({}), DeadlineExceededError);
      assert.equal(err.code, Code.DeadlineExceeded);
      assert.ok(Date.now() - started < 350, `gave up after ${Date.now() - started} ms`);
      assert.ok((await c.workspaces.listWorkspaces({}, { timeoutMs: 5000 })).workspaces.length > 0);
      assert.ok(
        (await client({ timeoutMs: 0, interceptors: [slow("ListWorkspaces", 200)] }).workspaces.listWorkspaces({})).workspaces.length > 0,
        "0 is no deadline",
      );
    });

    it("bounds retries by the deadline", async () => {
      const down = flaky("ListWorkspaces", 100, Code.Unavailable);
      const c = client({ timeoutMs: 150, retries: 50, retryBackoff: { initialMs: 100, maxMs: 100 }, interceptors: [down.interceptor] });
      await rejectsWith(c.workspaces.listWorkspaces({}), DeadlineExceededError);
      assert.ok(down.attempts >= 2 && down.attempts <= 4, `${down.attempts} attempts in 150 ms`);
    });

    it("leaves streams without a default deadline", async () => {
      const c = client({ timeoutMs: 50 });
      const abort = new AbortController();
      setTimeout(() => abort.abort(), 300);
      await rejectsWith(
        (async () => {
          for await (const _ of c.hosts.watchHosts({}, { signal: abort.signal }));
        })(),
        CanceledError,
      );
    });
  });

  it("listAll walks every page, lazily", async () => {
    const c = client();
    const names = Array.from({ length: 23 }, (_, i) => `paged-${String(i).padStart(2, "0")}`);
    await Promise.all(names.map((name) => c.workspaces.createWorkspace({ name, labels: { batch: "pages" } })));
    let pages = 0;
    const counted: typeof c.workspaces.listWorkspaces = (req, opts) => {
      pages++;
      return c.workspaces.listWorkspaces(req, opts);
    };
    const seen: string[] = [];
    for await (const ws of listAll(counted, { labelSelector: "batch=pages", pageSize: 5 })) seen.push(ws.name);
    assert.deepEqual(seen, names);
    assert.equal(pages, 5);

    pages = 0;
    for await (const ws of listAll(counted, { labelSelector: "batch=pages", pageSize: 5 })) if (ws.name === "paged-06") break;
    assert.equal(pages, 2, "breaking out fetches no more pages");
  });

  describe("files", () => {
    let ws: string;
    before(async () => {
      ws = (await client().workspaces.createWorkspace({ name: "files" })).workspace!.id;
    });

    /** A client that records the size of every chunk it uploads. */
    function recording() {
      const sizes: number[] = [];
      const tap: Interceptor = (next) => async (req) => {
        if (!req.stream || req.method.name !== "UploadFile") return next(req);
        const source = req.message as AsyncIterable<UploadFileRequest>;
        async function* tapped() {
          for await (const m of source) {
            if (m.part.case === "chunk") sizes.push(m.part.value.length);
            yield m;
          }
        }
        return next({ ...req, message: tapped() });
      };
      return { sizes, client: client({ interceptors: [tap] }) };
    }

    it("uploads bytes in 1 MiB chunks and downloads them back, whole or a range", async () => {
      const data = randomBytes(2 * MiB + MiB / 2 + 123);
      const { sizes, client: c } = recording();
      const file = await uploadFile(c, ws, "blobs/a.bin", data, { contentType: "application/x-test" });
      assert.equal(file.sizeBytes, BigInt(data.length));
      assert.equal(file.contentType, "application/x-test");
      assert.equal(UPLOAD_CHUNK_BYTES, MiB);
      assert.deepEqual(sizes, [MiB, MiB, MiB / 2 + 123]);

      let meta: WorkspaceFile | undefined;
      const back = await toBuffer(
        downloadFile(c, ws, "blobs/a.bin", {
          onFile: (f) => {
            meta = f;
          },
        }),
      );
      assert.ok(back.equals(data));
      assert.equal(meta!.sizeBytes, BigInt(data.length));
      const range = await toBuffer(downloadFile(c, ws, "blobs/a.bin", { offset: MiB - 10, length: 20 }));
      assert.ok(range.equals(data.subarray(MiB - 10, MiB + 10)));
      await rejectsWith(uploadFile(c, ws, "blobs/a.bin", data), AlreadyExistsError);
      await rejectsWith(toBuffer(downloadFile(c, ws, "blobs/missing.bin")), NotFoundError);
    });

    it("lets the server send megabytes ahead on every connection it opens (HTTP/2 windows)", async () => {
      // With HTTP/2's 64 KiB defaults a download waits for a WINDOW_UPDATE every 64 KiB.
      const sessions = new WideWindowSessions(server.baseUrl);
      const seen = new Set<unknown>();
      for (let connection = 0; connection < 2; connection++) {
        const stream = await sessions.request("GET", "/metrics", {}, {});
        seen.add(stream.session);
        stream.end();
        // By the answer's end the server has acknowledged the client's SETTINGS.
        await new Promise((resolve) => stream.resume().once("end", resolve));
        assert.equal(stream.session!.localSettings.initialWindowSize, 4 * MiB);
        // 16 MiB, less the answer's bytes not yet handed back in a WINDOW_UPDATE.
        assert.ok(stream.session!.state.localWindowSize! > 15 * MiB, `connection window ${stream.session!.state.localWindowSize}`);
        // The next request opens a new connection.
        await new Promise((resolve) => stream.session!.close(() => resolve(undefined)));
      }
      assert.equal(seen.size, 2, "two connections");
    });

    it("uploads a stream of uneven pieces (a Node Readable), re-cut into 1 MiB chunks", async () => {
      const data = randomBytes(3 * MiB + 7);
      const pieces: Buffer[] = [];
      for (let at = 0, n = 1; at < data.length; at += n, n = (n * 7919) % 700_000 || 1) pieces.push(data.subarray(at, at + n));
      const { sizes, client: c } = recording();
      await uploadFile(c, ws, "blobs/b.bin", Readable.from(pieces));
      assert.deepEqual(sizes, [MiB, MiB, MiB, 7]);
      assert.ok((await toBuffer(downloadFile(c, ws, "blobs/b.bin"))).equals(data));
      // Overwrite with an async generator of strings.
      async function* text() {
        yield "hello, ";
        yield "world";
      }
      await uploadFile(c, ws, "blobs/b.bin", text(), { overwrite: true });
      assert.equal((await toBuffer(downloadFile(c, ws, "blobs/b.bin"))).toString(), "hello, world");
      await uploadFile(c, ws, "blobs/empty", new Uint8Array(0));
      assert.equal((await toBuffer(downloadFile(c, ws, "blobs/empty"))).length, 0);
    });
  });

  describe("over fetch: the browser entry (run here on Node's fetch), and the Node entry given a fetch", () => {
    for (const transport of ["connect", "grpc-web"] as const) {
      it(`makes typed calls, streams and maps errors over ${transport}`, async () => {
        const web = createWebClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, transport });
        const ws = (await web.workspaces.createWorkspace({ name: `web-${transport}` })).workspace!;
        assert.equal((await web.workspaces.getWorkspace({ id: ws.id })).workspace?.name, `web-${transport}`);
        const err = await rejectsWith(web.workspaces.getWorkspace({ id: randomUUID() }), NotFoundError);
        assert.match(err.requestId ?? "", UUID);
        await uploadFile(client(), ws.id, "hello.txt", new TextEncoder().encode("from node"));
        assert.equal(new TextDecoder().decode(await collectBytes(downloadFile(web, ws.id, "hello.txt"))), "from node");
        let n = 0;
        for await (const _ of listAll(web.workspaces.listWorkspaces, { pageSize: 2 })) n++;
        assert.ok(n > 2);
      });
    }

    it("serves the Node entry over fetch too, when given one", async () => {
      let calls = 0;
      const counting: typeof fetch = (input, init) => {
        calls++;
        return fetch(input, init);
      };
      const c = client({ fetch: counting });
      assert.ok((await c.workspaces.listWorkspaces({})).workspaces.length > 0);
      assert.equal(calls, 1);
    });

    it("retries when fetch cannot reach the server", async () => {
      let attempts = 0;
      const refusing: typeof fetch = async (input, init) => {
        if (++attempts < 3) throw new TypeError("fetch failed");
        return fetch(input, init);
      };
      const web = createWebClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, fetch: refusing, retryBackoff: { initialMs: 5 } });
      assert.ok((await web.workspaces.listWorkspaces({})).workspaces.length > 0);
      assert.equal(attempts, 3);
      attempts = -10;
      await rejectsWith(
        createWebClient({
          baseUrl: server.baseUrl,
          token: ADMIN_TOKEN,
          fetch: refusing,
          retries: 1,
          retryBackoff: { initialMs: 5 },
        }).workspaces.listWorkspaces({}),
        UnavailableError,
      );
    });
  });
});

/** A port that refuses connections for `downMs`, then forwards them to `port`. */
async function briefOutage(port: number, downMs: number): Promise<{ baseUrl: string; close(): Promise<void> }> {
  const free = await new Promise<number>((resolve, reject) => {
    const probe = net.createServer().listen(0, "127.0.0.1", () => {
      const { port: p } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(p));
    });
    probe.on("error", reject);
  });
  const sockets = new Set<net.Socket>();
  const proxy = net.createServer((socket) => {
    const upstream = net.connect(port, "127.0.0.1");
    for (const s of [socket, upstream]) {
      sockets.add(s);
      s.on("error", () => {
        socket.destroy();
        upstream.destroy();
      });
      s.on("close", () => sockets.delete(s));
    }
    socket.pipe(upstream).pipe(socket);
  });
  const up = setTimeout(() => proxy.listen(free, "127.0.0.1"), downMs);
  return {
    baseUrl: `http://127.0.0.1:${free}`,
    async close() {
      clearTimeout(up);
      for (const s of sockets) s.destroy();
      if (proxy.listening) await new Promise((resolve) => proxy.close(resolve));
    },
  };
}
