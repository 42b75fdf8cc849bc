import { strict as assert } from "node:assert";
import http2 from "node:http2";
import net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AgentSession, createRemoteGpuClient, UnavailableError } from "@remotegpu/sdk";
import { HostService, StreamHeartbeatsRequestSchema } from "../../gen/remotegpu/v1/host_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { copyListeningSocket } from "../../src/rpc/listen-copies.js";
import { eventually } from "../support/eventually.js";
import { envelope, grpcHeaders } from "../support/grpc-envelope.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

describe("one port for every protocol", () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
    const { host } = await server.client(HostService).createHost({ name: "proto-host", address: "h" });
    await server.client(GpuService).createGpu({ hostId: host!.id, index: 0, uuid: "GPU-p", model: "NVIDIA A100", memoryBytes: 1n << 30n });
  });
  after(() => server.close());

  for (const protocol of ["connect", "grpc", "grpc-web"] as const) {
    it(`serves ${protocol}`, async () => {
      const res = await server.client(HostService, { protocol }).listHosts({});
      assert.deepEqual(
        res.hosts.map((h) => h.name),
        ["proto-host"],
      );
    });
  }

  it("serves Connect over HTTP/1.1 and plain JSON from fetch", async () => {
    const transport = createConnectTransport({ baseUrl: server.baseUrl, httpVersion: "1.1" });
    const res = await createClient(HostService, transport).listHosts({}, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(res.totalSize, 1);

    const raw = await fetch(`${server.baseUrl}/remotegpu.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
      body: "{}",
    });
    assert.equal(raw.status, 200);
    assert.equal(((await raw.json()) as { hosts: { name: string }[] }).hosts[0]!.name, "proto-host");
  });

  it("allows side-effect-free calls as Connect GET", async () => {
    const url = `${server.baseUrl}/remotegpu.v1.HostService/ListHosts?encoding=json&message=${encodeURIComponent("{}")}`;
    const res = await fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(res.status, 200);
  });

  it("echoes a caller's x-request-id, or makes one", async () => {
    const mine = await fetch(`${server.baseUrl}/remotegpu.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}`, "x-request-id": "trace-123" },
      body: "{}",
    });
    assert.equal(mine.headers.get("x-request-id"), "trace-123");
    const failed = await fetch(`${server.baseUrl}/remotegpu.v1.HostService/ListHosts`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(failed.status, 401);
    assert.match(failed.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
  });

  it("refuses malformed JSON with INVALID_ARGUMENT, not INTERNAL", async () => {
    const res = await fetch(`${server.baseUrl}/remotegpu.v1.HostService/CreateHost`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN_TOKEN}` },
      body: '{"name": 5',
    });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { code: string }).code, "invalid_argument");
  });

  it("exposes Prometheus metrics: RPCs by code, hosts and GPUs by status", async () => {
    await server
      .client(HostService, { token: null })
      .listHosts({})
      .catch(() => undefined);
    await server.app.maintain(); // the fleet series come from a snapshot read in the background
    const res = await fetch(`${server.baseUrl}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
    const body = await res.text();
    assert.match(body, /remotegpu_rpc_requests_total\{service="remotegpu.v1.HostService",method="ListHosts",code="ok"\} \d+/);
    assert.match(
      body,
      /remotegpu_rpc_requests_total\{service="remotegpu.v1.HostService",method="ListHosts",code="unauthenticated"\} [1-9]/,
    );
    assert.match(body, /remotegpu_rpc_duration_seconds_bucket\{le="0.1",service="remotegpu.v1.HostService",method="ListHosts"\}/);
    assert.match(body, /remotegpu_hosts\{status="OFFLINE"\} 1/);
    // Its host never sent a heartbeat, so the GPU reads as OFFLINE.
    assert.match(body, /remotegpu_gpus\{status="OFFLINE"\} 1/);
    assert.equal((await fetch(`${server.baseUrl}/nothing-here`)).status, 404);
  });

  it("counts each stream once, as it ends", async () => {
    const count = async () => {
      const body = await (await fetch(`${server.baseUrl}/metrics`)).text();
      const lines = body.matchAll(
        /remotegpu_rpc_requests_total\{service="remotegpu.v1.HostService",method="WatchHosts",code="\w+"\} (\d+)/g,
      );
      return [...lines].reduce((sum, m) => sum + Number(m[1]), 0);
    };
    const hosts = server.client(HostService);
    const before = await count();
    // A watch ends when its caller leaves.
    for (let i = 0; i < 3; i++) {
      const abort = new AbortController();
      const reading = (async () => {
        for await (const _ of hosts.watchHosts({}, { signal: abort.signal }));
      })().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 100));
      abort.abort();
      await reading;
    }
    await eventually("three watches counted", async () => (await count()) === before + 3);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await count(), before + 3, "no stream counted twice");
  });
});

describe("graceful stop", () => {
  it("ends open watches at once with UNAVAILABLE (the SDK's UnavailableError), without waiting out the timeout", async () => {
    const server = await startTestServer({ env: { SHUTDOWN_TIMEOUT_SECONDS: "30" } });
    await server.client(HostService).createHost({ name: "watched", address: "10.0.0.9" });
    const ends: Promise<unknown>[] = [];
    for (const transport of ["connect", "grpc"] as const) {
      for (const httpVersion of transport === "connect" ? (["2", "1.1"] as const) : (["2"] as const)) {
        const client = createRemoteGpuClient({ baseUrl: server.baseUrl, token: ADMIN_TOKEN, transport, httpVersion });
        const watch = client.hosts.watchHosts({})[Symbol.asyncIterator]();
        await watch.next(); // the INITIAL event: the stream is open
        ends.push(
          watch.next().then(
            (r) => `${transport}/${httpVersion} ended without an error (done: ${r.done})`,
            (err: unknown) => err,
          ),
        );
      }
    }
    const started = Date.now();
    await server.close();
    assert.ok(Date.now() - started < 5000, `close took ${Date.now() - started} ms`);
    for (const end of await Promise.all(ends)) {
      assert.ok(end instanceof UnavailableError, `${String(end)}`);
    }
  });

  it("ends agent streams (bidi, the agent still sending) at once too, however many connections they use", async () => {
    const server = await startTestServer({ env: { SHUTDOWN_TIMEOUT_SECONDS: "30" } });
    const ended: string[] = [];
    let connected = 0;
    const stop = new AbortController();
    const runs = await Promise.all(
      ["first", "second", "third"].map(async (name) => {
        const { host, agentToken } = await server.client(HostService).createHost({ name, address: "10.0.0.9" });
        // The agent's own stream code: a connection of its own, reconnecting with backoff.
        const session = new AgentSession({
          servers: [server.baseUrl],
          hostId: host!.id,
          token: agentToken,
          agentVersion: "test",
          capacity: {},
          intervalMs: 50, // heartbeats flowing when the server stops
          read: async () => ({ gpus: [{ index: 0, uuid: `GPU-stop-${name}`, model: "NVIDIA H100 80GB HBM3" }], heartbeat: {} }),
          logger: {
            info: (_f, message) => message === "agent connected" && connected++,
            warn: (f, message) => message === "agent stream ended" && ended.push((f as { code: string }).code),
            error: () => undefined,
          },
        });
        return { run: session.run(stop.signal) };
      }),
    );
    await eventually("three agents connected", () => connected === 3);
    await new Promise((r) => setTimeout(r, 300));
    const started = Date.now();
    await server.close();
    assert.ok(Date.now() - started < 5000, `close took ${Date.now() - started} ms`);
    assert.deepEqual(ended, ["Unavailable", "Unavailable", "Unavailable"]);
    stop.abort();
    await Promise.all(runs.map((r) => r.run));
  });

  it("does not wait for an agent that never ends its side of the stream", async () => {
    const server = await startTestServer({ env: { SHUTDOWN_TIMEOUT_SECONDS: "30" } });
    const { host, agentToken } = await server.client(HostService).createHost({ name: "stubborn", address: "10.0.0.9" });
    // A raw HTTP/2 client that reads the answer but never closes what it sends.
    const session = http2.connect(server.baseUrl);
    const stream = session.request(grpcHeaders("/remotegpu.v1.HostService/StreamHeartbeats", agentToken));
    const hello = toBinary(
      StreamHeartbeatsRequestSchema,
      create(StreamHeartbeatsRequestSchema, { message: { case: "hello", value: { hostId: host!.id, agentVersion: "stubborn" } } }),
    );
    stream.write(envelope(hello));
    const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("trailers", resolve));
    await new Promise((resolve) => stream.once("data", resolve)); // the welcome
    const started = Date.now();
    await server.close();
    assert.ok(Date.now() - started < 5000, `close took ${Date.now() - started} ms`);
    assert.equal((await trailers)["grpc-status"], String(Code.Unavailable));
    session.destroy();
  });

  it("does not wait for a client that keeps its HTTP/2 connection open after the GOAWAY", async () => {
    // An agent whose process stalls (or a proxy that keeps connections) never closes its side.
    const server = await startTestServer({ env: { SHUTDOWN_TIMEOUT_SECONDS: "30" } });
    // It reads what comes, but does not end its side when the server ends its own.
    const client = net.connect({ port: server.port, host: "127.0.0.1", allowHalfOpen: true });
    const received: Buffer[] = [];
    client.on("data", (chunk: Buffer) => received.push(chunk));
    // The client preface and an empty SETTINGS frame (RFC 9113 section 3.4), then nothing more.
    client.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
    await eventually("the server's SETTINGS", () => received.length > 0); // the session is open
    const started = Date.now();
    await server.close();
    assert.ok(Date.now() - started < 5000, `close took ${Date.now() - started} ms`);
    // The server said it was going away (a GOAWAY frame, type 7) before it closed the connection.
    const all = Buffer.concat(received);
    assert.ok(frameTypes(all).includes(7), `frames received: ${frameTypes(all).join(", ")}`);
    client.destroy();
  });

  it("does not wait on connections that never send a byte, nor on idle keep-alive ones", async () => {
    const server = await startTestServer();
    const silent = net.connect(server.port, "127.0.0.1");
    const halfPreface = net.connect(server.port, "127.0.0.1", () => halfPreface.write("PRI * HT"));
    await fetch(`${server.baseUrl}/metrics`); // leaves an idle HTTP/1.1 keep-alive connection
    await new Promise((r) => setTimeout(r, 100));
    const closedBy = new Promise((resolve) => silent.once("close", resolve));
    await server.close(); // SHUTDOWN_TIMEOUT_SECONDS=1 in tests: this returns, it does not hang
    await closedBy;
    halfPreface.destroy();
  });
});

describe("taking in connections", () => {
  it("copies a listening socket: the copies take connections after the original closed, and free the port once closed", async () => {
    const original = net.createServer();
    await new Promise<void>((resolve) => original.listen(0, "127.0.0.1", resolve));
    const { port } = original.address() as net.AddressInfo;
    const copies = await copyListeningSocket(original, 3);
    assert.equal(copies.length, 3);
    await new Promise((resolve) => original.close(resolve));
    const servers = copies.map((copy, i) => net.createServer((socket) => socket.end(`copy ${i}`)).listen(copy));
    assert.match(await probe(port), /^copy [0-2]$/); // the original is closed; a copy took the connection
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
    assert.equal(await probe(port), "ECONNREFUSED");
    await assert.rejects(copyListeningSocket(original, 3), /not listening/);
  });

  it("accepts a burst of connections while every event-loop turn is long, and lets go of the port on stop", async function () {
    this.timeout(60_000);
    const server = await startTestServer();
    // A busy server: 50 ms of work in every turn of the event loop. Accepting one connection a
    // turn (Node 20's libuv on a single descriptor), 200 connections would take over 10 s.
    let busy = true;
    const work = () => {
      const until = performance.now() + 50;
      while (performance.now() < until);
      if (busy) setImmediate(work);
    };
    setImmediate(work);
    const sockets: net.Socket[] = [];
    try {
      const started = performance.now();
      const answers = Array.from({ length: 200 }, () => {
        const socket = net.connect(server.port, "127.0.0.1");
        sockets.push(socket);
        socket.end("GET /nothing-here HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        return new Promise<string>((resolve, reject) => {
          let text = "";
          socket.setEncoding("utf8").on("data", (c: string) => (text += c));
          socket.once("close", () => resolve(text.split("\r\n", 1)[0]!));
          socket.once("error", reject);
        });
      });
      const statusLines = await Promise.all(answers);
      const seconds = (performance.now() - started) / 1000;
      assert.deepEqual(new Set(statusLines), new Set(["HTTP/1.1 404 Not Found"]));
      assert.ok(seconds < 6, `200 connections answered in ${seconds.toFixed(1)} s`);
    } finally {
      busy = false;
      for (const socket of sockets) socket.destroy();
      await server.close();
    }
    // Every descriptor of the listening socket is closed: nothing in this process listens any more.
    assert.equal(await probe(server.port), "ECONNREFUSED");
  });
});

/** What a connection to `port` is sent before it closes, or the error code of connecting. */
function probe(port: number): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const socket = net.connect(port, "127.0.0.1");
    socket.setEncoding("utf8").on("data", (c: string) => (text += c));
    socket.once("close", () => resolve(text));
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** The types of the HTTP/2 frames in `bytes`, a server's side of a connection from its start. */
function frameTypes(bytes: Buffer): number[] {
  const types: number[] = [];
  for (let at = 0; at + 9 <= bytes.length; at += 9 + bytes.readUIntBE(at, 3)) types.push(bytes[at + 3]!);
  return types;
}
