import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  CreateHostRequestSchema,
  CreateHostResponseSchema,
  type CreateHostRequest,
  type CreateHostResponse,
} from "../../gen/remotegpu/v1/host_pb.js";
import { bufCurl, freePort, isListening, serverEnv, spawnServer, type ServerProcess } from "../support/child.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";

const TOKEN = /rgpu_[0-9a-f]{16}_[A-Za-z0-9_-]{43}/g;

async function connectJson(
  baseUrl: string,
  method: string,
  body: unknown,
  token?: string,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${baseUrl}/${method}`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe("e2e: npm start works with nothing else", function () {
  // initdb plus two starts; each step below has its own, tighter, deadline.
  this.timeout(90_000);

  let dataDir: string;
  let pgPort: number;
  let port: number;
  let server: ServerProcess | undefined;
  const spawned: ServerProcess[] = [];
  let adminToken: string;
  let hostId: string;

  const start = async () => {
    server = spawnServer(
      serverEnv({
        DATA_DIR: dataDir,
        PORT: String(port),
        EMBEDDED_POSTGRES_PORT: String(pgPort),
        BIND_ADDRESS: "127.0.0.1",
        LOG_LEVEL: "info",
      }),
    );
    spawned.push(server);
    assert.equal(await server.listening(60_000), port);
    return server;
  };

  before(async () => {
    dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "remotegpu-e2e-start-"));
    // mkdtemp makes the directory 0700; as root, PostgreSQL runs as the postgres user, which must be
    // able to reach DATA_DIR for the cluster to live in DATA_DIR/postgres like it would on a real box.
    await fs.chmod(dataDir, 0o755);
    port = await freePort();
    do pgPort = await freePort();
    while (pgPort === port);
  });

  after(async () => {
    await Promise.all(spawned.map((s) => s.kill()));
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it("first start: initialises the embedded PostgreSQL in DATA_DIR and prints a generated admin token once", async () => {
    const s = await start();
    const tokens = s.stderr().match(TOKEN) ?? [];
    assert.equal(tokens.length, 1, `expected exactly one token on stderr, got:\n${s.stderr()}`);
    adminToken = tokens[0]!;
    assert.ok(!s.stdout().includes(adminToken), "the admin token must not reach the (collected) logs on stdout");
    assert.ok(existsSync(path.join(dataDir, "postgres", "PG_VERSION")), "the cluster lives in DATA_DIR/postgres");
    assert.ok(await isListening(pgPort), "embedded PostgreSQL listens on EMBEDDED_POSTGRES_PORT");
  });

  it("answers grpc.health.v1.Health/Check without a token (buf curl, gRPC over h2c)", async () => {
    // No --schema: buf curl finds the method through the server's reflection service.
    const out = await bufCurl(["-d", "{}", `http://127.0.0.1:${port}/grpc.health.v1.Health/Check`]);
    assert.equal((JSON.parse(out) as { status?: string }).status, "SERVING");
  });

  it("serves Connect JSON over HTTP/1.1 to plain fetch with the generated token, and 401 without one", async () => {
    const baseUrl = `http://127.0.0.1:${port}`;
    const denied = await connectJson(baseUrl, "remotegpu.v1.HostService/CreateHost", { name: "e2e-anon", address: "10.0.0.9" });
    assert.equal(denied.status, 401);
    assert.equal(denied.json.code, "unauthenticated");

    const made = await connectJson(
      baseUrl,
      "remotegpu.v1.HostService/CreateHost",
      { name: "e2e-host-1", address: "10.0.0.1", labels: { zone: "a" } },
      adminToken,
    );
    assert.equal(made.status, 200, JSON.stringify(made.json));
    const host = made.json.host as { id: string; name: string };
    assert.equal(host.name, "e2e-host-1");
    assert.match(String(made.json.agentToken), /^rgpu_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    hostId = host.id;
    assert.ok(hostId);
  });

  it("SIGTERM: exits 0 and stops the embedded PostgreSQL", async () => {
    const s = server!;
    const t0 = Date.now();
    assert.equal(await s.stop(15_000), 0, `exit code${s.stderr()}`);
    assert.ok(Date.now() - t0 < 15_000);
    assert.equal(await isListening(pgPort), false, "nothing may still listen on EMBEDDED_POSTGRES_PORT");
    assert.equal(await isListening(port), false);
    assert.match(s.stdout(), /"msg":"shutting down"/);
  });

  it("second start on the same DATA_DIR: no new token, the data is still there, SIGTERM exits 0 again", async () => {
    const s = await start();
    assert.equal(s.stderr().match(TOKEN), null, `no token may be printed on a later start:\n${s.stderr()}`);

    const listed = await connectJson(`http://127.0.0.1:${port}`, "remotegpu.v1.HostService/ListHosts", {}, adminToken);
    assert.equal(listed.status, 200, JSON.stringify(listed.json));
    const hosts = (listed.json.hosts ?? []) as { id: string; name: string }[];
    assert.deepEqual(
      hosts.map((h) => [h.id, h.name]),
      [[hostId, "e2e-host-1"]],
    );

    assert.equal(await s.stop(15_000), 0);
    assert.equal(await isListening(pgPort), false);
  });

  it("after a SIGKILL left PostgreSQL running, the next start takes it over and serves", async () => {
    const killed = await start();
    killed.child.kill("SIGKILL"); // the server only: its PostgreSQL is orphaned, as after an OOM kill
    await killed.exited(10_000);
    assert.equal(await isListening(pgPort), true, "the orphaned PostgreSQL is still there");

    const s = await start();
    const listed = await connectJson(`http://127.0.0.1:${port}`, "remotegpu.v1.HostService/ListHosts", {}, adminToken);
    assert.equal(listed.status, 200, JSON.stringify(listed.json));
    assert.match(s.stdout(), /left running by an earlier process/);
    assert.equal(await s.stop(15_000), 0);
    assert.equal(await isListening(pgPort), false);
  });

  it("SIGTERM during start-up still stops the embedded PostgreSQL", async () => {
    const s = spawnServer(serverEnv({ DATA_DIR: dataDir, PORT: String(port), EMBEDDED_POSTGRES_PORT: String(pgPort), LOG_LEVEL: "info" }));
    spawned.push(s);
    for (let i = 0; i < 600 && !s.stdout().includes("embedded PostgreSQL started"); i++) await new Promise((r) => setTimeout(r, 10));
    s.child.kill("SIGTERM");
    assert.equal(await s.exited(15_000), 0, s.stderr());
    assert.equal(await isListening(pgPort), false);
  });
});

describe("e2e: TLS (TLS_CERT/TLS_KEY) with an external DATABASE_URL", function () {
  this.timeout(60_000);

  let dir: string;
  let cert: Buffer;
  let db: TestDatabase;
  let server: ServerProcess | undefined;
  let port: number;
  let grpcClient: grpc.Client | undefined;
  const token = "e2e-tls-admin-token-0123456789";

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "remotegpu-e2e-tls-"));
    const keyFile = path.join(dir, "k.pem");
    const certFile = path.join(dir, "c.pem");
    await promisify(execFile)(
      "openssl",
      ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", keyFile, "-out", certFile],
      { timeout: 20_000 },
    );
    cert = await fs.readFile(certFile);
    db = await createTestDatabase();
    port = await freePort();
    server = spawnServer(
      serverEnv({
        DATABASE_URL: db.url,
        REMOTEGPU_ADMIN_TOKEN: token,
        TLS_CERT: certFile,
        TLS_KEY: keyFile,
        PORT: String(port),
        BIND_ADDRESS: "127.0.0.1",
        LOG_LEVEL: "info",
        DATA_DIR: dir,
      }),
    );
    assert.equal(await server.listening(30_000), port);
  });

  after(async () => {
    grpcClient?.close();
    await server?.kill();
    await db?.drop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("logs tls: true and prints no generated token when REMOTEGPU_ADMIN_TOKEN is set", () => {
    assert.match(server!.stdout(), /"tls":true[^\n]*"msg":"remotegpu listening"|"msg":"remotegpu listening"[^\n]*"tls":true/);
    assert.equal(server!.stderr().match(TOKEN), null);
  });

  it("serves gRPC over TLS to grpc-js, trusting the self-signed certificate", async () => {
    grpcClient = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(cert), {
      "grpc.ssl_target_name_override": "localhost",
      "grpc.default_authority": "localhost",
    });
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    const res = await new Promise<CreateHostResponse>((resolve, reject) => {
      grpcClient!.makeUnaryRequest<CreateHostRequest, CreateHostResponse>(
        "/remotegpu.v1.HostService/CreateHost",
        (m) => Buffer.from(toBinary(CreateHostRequestSchema, m)),
        (b) => fromBinary(CreateHostResponseSchema, b),
        create(CreateHostRequestSchema, { name: "tls-host-1", address: "10.1.0.1" }),
        metadata,
        { deadline: Date.now() + 10_000 },
        (err, value) => (err ? reject(err) : resolve(value!)),
      );
    });
    assert.equal(res.host?.name, "tls-host-1");
  });

  it("serves gRPC over TLS to buf curl --insecure (via server reflection)", async () => {
    const out = await bufCurl([
      "--insecure",
      "-H",
      `authorization: Bearer ${token}`,
      "-d",
      "{}",
      `https://127.0.0.1:${port}/remotegpu.v1.HostService/ListHosts`,
    ]);
    const names = ((JSON.parse(out) as { hosts?: { name: string }[] }).hosts ?? []).map((h) => h.name);
    assert.ok(names.includes("tls-host-1"), out);
  });

  it("serves Connect JSON over HTTPS HTTP/1.1 (ALPN falls back to http/1.1)", async () => {
    const body = JSON.stringify({ name: "tls-host-2", address: "10.1.0.2" });
    const { status, alpn, json } = await new Promise<{ status: number; alpn: string | false | null; json: Record<string, unknown> }>(
      (resolve, reject) => {
        const req = https.request(
          {
            host: "127.0.0.1",
            port,
            servername: "localhost",
            ca: cert,
            method: "POST",
            path: "/remotegpu.v1.HostService/CreateHost",
            headers: { "content-type": "application/json", authorization: `Bearer ${token}`, "content-length": Buffer.byteLength(body) },
            agent: false,
            timeout: 10_000,
          },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (text += c));
            res.on("end", () => {
              try {
                resolve({
                  status: res.statusCode!,
                  alpn: (res.socket as import("node:tls").TLSSocket | null)?.alpnProtocol ?? null,
                  json: JSON.parse(text) as Record<string, unknown>,
                });
              } catch (e) {
                reject(e instanceof Error ? e : new Error(String(e)));
              }
            });
          },
        );
        req.on("error", reject);
        req.on("timeout", () => req.destroy(new Error("https request timed out")));
        req.end(body);
      },
    );
    assert.equal(status, 200, JSON.stringify(json));
    assert.notEqual(alpn, "h2");
    assert.equal((json.host as { name: string }).name, "tls-host-2");
  });

  it("refuses plaintext HTTP on the TLS port", async () => {
    await assert.rejects(fetch(`http://127.0.0.1:${port}/remotegpu.v1.HostService/ListHosts`, { method: "POST", body: "{}" }));
  });
});
