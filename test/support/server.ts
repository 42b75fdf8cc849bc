import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { createApp, type App } from "../../src/app.js";
import { loadConfig } from "../../src/config.js";
import { ManualClock, type Clock } from "../../src/platform/clock.js";
import { createLogger, type Logger } from "../../src/platform/logger.js";
import { createTestDatabase, type TestDatabase } from "./database.js";

export const ADMIN_TOKEN = "test-admin-token-0123456789";

export interface TestServer {
  app: App;
  db: TestDatabase;
  port: number;
  baseUrl: string;
  clock: Clock;
  /** A client over the given protocol, sending `token` (default: the admin token; null for none). */
  client<S extends DescService>(service: S, opts?: { token?: string | null; protocol?: "connect" | "grpc" | "grpc-web" }): Client<S>;
  close(): Promise<void>;
}

/** The real app (real PostgreSQL, real HTTP/2 server on a free port) in this process. */
export async function startTestServer(
  opts: { clock?: Clock; env?: Record<string, string>; db?: TestDatabase; logger?: Logger } = {},
): Promise<TestServer> {
  // A second replica passes the first one's database; only its creator drops it.
  const db = opts.db ?? (await createTestDatabase());
  // Objects (files, archived logs) go to a directory of this server's own unless the test chose one.
  const dataDir = opts.env?.DATA_DIR ? undefined : await mkdtemp(path.join(tmpdir(), "remotegpu-test-"));
  const config = loadConfig({
    ...(dataDir ? { DATA_DIR: dataDir } : {}),
    DATABASE_URL: db.url,
    PORT: "0",
    BIND_ADDRESS: "127.0.0.1",
    REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
    SHUTDOWN_TIMEOUT_SECONDS: "1",
    DATABASE_POOL_SIZE: "40",
    // Tests call as fast as they can on a clock that does not move; the limit has its own test.
    RATE_LIMIT_PER_SECOND: "0",
    ...opts.env,
  });
  const clock = opts.clock ?? new ManualClock(new Date());
  const app = await createApp(config, { clock, logger: opts.logger ?? createLogger(config.logLevel) });
  const port = await app.listen();
  const baseUrl = `http://127.0.0.1:${port}`;
  return {
    app,
    db,
    port,
    baseUrl,
    clock,
    client: clients(baseUrl).client,
    async close() {
      await app.close();
      if (!opts.db) await db.drop();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Clients of a server at `baseUrl` (this process's test server, or a child process). */
export function clients(baseUrl: string): Pick<TestServer, "client"> {
  return {
    client(service, { token = ADMIN_TOKEN, protocol = "connect" } = {}) {
      const interceptors = token === null ? [] : [authorization(token)];
      const transport =
        protocol === "grpc"
          ? createGrpcTransport({ baseUrl, interceptors })
          : protocol === "grpc-web"
            ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors })
            : createConnectTransport({ baseUrl, httpVersion: "2", interceptors });
      return createClient(service, transport);
    },
  };
}

function authorization(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}
