import { execFile, spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdtemp } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/** The repository root (where src/main.ts lives). */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const BUF = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));

const execFileP = promisify(execFile);

/**
 * node's argv for the node agent run from its sources, no build needed: spawn `process.execPath`
 * with it and `cwd: ROOT`. The condition makes its `@remotegpu/sdk` imports resolve to the SDK's
 * sources too (a child does not inherit mocha's node-option).
 */
export function agentArgv(flags: string[]): string[] {
  return ["--import", "tsx", "--conditions=@remotegpu/source", "agent/src/main.ts", ...flags];
}

/**
 * A new temporary directory for an agent's data that other users may pass (not read): an agent run as
 * root confines its workloads to uids of their own, which must reach their volumes inside it.
 */
export async function agentTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  await chmod(dir, 0o711);
  return dir;
}

/** The flags of an agent with simulated GPUs that runs its environments as processes under `dataDir`. */
export function simulatedAgentFlags(o: { server: string; hostId: string; token: string; gpus: number; dataDir: string }): string[] {
  return [
    "--server",
    o.server,
    "--host-id",
    o.hostId,
    "--token",
    o.token,
    "--simulate-gpus",
    String(o.gpus),
    "--process-mode",
    "--data-dir",
    o.dataDir,
  ];
}

/** A port that was free a moment ago: listen on 0, read the port, close. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * `count` consecutive free ports below the kernel's ephemeral range (32768 and up), for ports a
 * container engine publishes. Podman's netavark sometimes leaves a published port's DNAT rule behind
 * after its container is gone; a stale rule on an ephemeral port would send another test's
 * connections (to a server or proxy on port 0) to a container that no longer exists.
 */
export async function publishablePorts(count = 1): Promise<number> {
  for (;;) {
    const first = 20_000 + Math.floor(Math.random() * (32_768 - 20_000 - count));
    const free = await Promise.all(Array.from({ length: count }, (_, i) => bindable(first + i)));
    if (free.every(Boolean)) return first;
  }
}

function bindable(port: number): Promise<boolean> {
  const server = net.createServer();
  return new Promise((resolve) => {
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function isListening(port: number, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    const done = (up: boolean) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/**
 * process.env without the variables that would make the server skip what a bare `npm start` does,
 * plus `overrides`.
 */
export function serverEnv(overrides: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of [
    "DATABASE_URL",
    "REMOTEGPU_ADMIN_TOKEN",
    "REDIS_URL",
    "TLS_CERT",
    "TLS_KEY",
    "PORT",
    "BIND_ADDRESS",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DATA_DIR",
    "EMBEDDED_POSTGRES_PORT",
    "HEARTBEAT_INTERVAL_SECONDS",
    "HOST_GRACE_SECONDS",
    "SHUTDOWN_TIMEOUT_SECONDS",
    "DATABASE_POOL_SIZE",
  ]) {
    delete env[name];
  }
  return { ...env, ...overrides };
}

export interface ServerProcess {
  readonly child: ChildProcess;
  /** Everything the process wrote so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the port from the "remotegpu listening" log line. */
  listening(timeoutMs: number): Promise<number>;
  /** Resolves with the exit code (or the signal name) once the process has ended. */
  exited(timeoutMs: number): Promise<number | string>;
  /** SIGTERM, then waits for the exit. */
  stop(timeoutMs: number): Promise<number | string>;
  /** For after(): SIGTERM, and SIGKILL to the whole process group (embedded PostgreSQL included) if it lingers. */
  kill(): Promise<void>;
}

/**
 * Runs `node --import tsx src/main.ts` as a real child process, in its own process group so that a
 * test that fails half way can still take down the server and any PostgreSQL it started. With
 * `built`, runs `dist/src/main.js` (`npm run build:server` first) as deployed: benchmarks use that.
 */
export function spawnServer(env: NodeJS.ProcessEnv, { built = false } = {}): ServerProcess {
  const args = built ? ["dist/src/main.js"] : ["--import", "tsx", "src/main.ts"];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (err += chunk));
  const exit = new Promise<number | string>((resolve) => {
    child.once("exit", (code, signal) => resolve(code ?? signal ?? "unknown"));
  });
  let ended = false;
  void exit.then(() => (ended = true));

  const describe = () => `\n--- stdout ---\n${out.slice(-4000)}\n--- stderr ---\n${err.slice(-4000)}`;

  const withTimeout = <T>(p: Promise<T>, ms: number, what: string) =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what} not within ${ms} ms${describe()}`)), ms);
      p.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });

  const exited = (ms: number) => withTimeout(exit, ms, "server exit");

  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    listening(ms) {
      let timer: NodeJS.Timeout | undefined;
      const found = new Promise<number>((resolve, reject) => {
        const check = () => {
          for (const line of out.split("\n")) {
            if (!line.includes('"remotegpu listening"')) continue;
            const parsed = JSON.parse(line) as { port?: unknown };
            if (typeof parsed.port === "number") return resolve(parsed.port);
          }
          if (ended) reject(new Error(`server exited before listening${describe()}`));
        };
        timer = setInterval(check, 50);
        check();
      });
      return withTimeout(found, ms, 'the "remotegpu listening" log line').finally(() => clearInterval(timer));
    },
    async stop(ms) {
      if (!ended) child.kill("SIGTERM");
      return exited(ms);
    },
    async kill() {
      if (ended) return;
      child.kill("SIGTERM");
      const code = await Promise.race([exit, new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
      if (code !== undefined) return;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
      await exit;
    },
  };
}

/** `buf curl` over gRPC (h2c unless the URL is https); resolves with stdout, rejects with stderr in the message. */
export async function bufCurl(args: string[], timeoutMs = 20_000): Promise<string> {
  const h2c = args.some((a) => a.startsWith("http://")) ? ["--http2-prior-knowledge"] : [];
  try {
    const { stdout } = await execFileP(BUF, ["curl", "--protocol", "grpc", ...h2c, ...args], { timeout: timeoutMs });
    return stdout;
  } catch (e) {
    const x = e as Error & { stderr?: string; stdout?: string };
    throw new Error(`buf curl ${args.join(" ")} failed: ${x.message}\n${x.stderr ?? ""}${x.stdout ?? ""}`);
  }
}
