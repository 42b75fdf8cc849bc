// npm run bench:restart [-- --agents 5000 --period 5]   (builds the server first)
// A control-plane restart under a connected fleet: N agents (SDK AgentSessions, one connection
// each, in a separate process) report at 1/period Hz to one server; once all are connected the
// server is stopped (SIGTERM: it ends every stream with UNAVAILABLE) and a new one started on the
// same port and database. Reports how long until every agent is back, the new server's hello rate,
// and the most hosts seen OFFLINE at once from the restart until a full grace period later (the
// target: none).
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { createTestDatabase } from "../../test/support/database.js";
import { cpuSeconds } from "../proc.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values } = parseArgs({
  options: {
    agents: { type: "string", default: "5000" },
    period: { type: "string", default: "5" },
    grace: { type: "string", default: "40" },
  },
});
const agents = Number(values.agents);
const ADMIN = "bench-admin-token-0123456789";
const children: ChildProcess[] = [];
process.once("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

// The fleet's young generation: its garbage is the harness's, and with V8's default it spent 19% of
// its CPU in collections during a return and stalled for up to 7 s (3-4 s with this).
const FLEET_NODE_FLAGS = ["--max-semi-space-size=64"];

/** Starts a Node process (a .ts script runs under tsx); `onLine` sees each JSON line it prints. */
function start(
  script: string,
  args: string[],
  env: Record<string, string>,
  onLine: (line: Record<string, unknown>) => void,
  nodeFlags: string[] = [],
): ChildProcess {
  const proc = spawn(process.execPath, [...nodeFlags, ...(script.endsWith(".ts") ? ["--import", "tsx"] : []), script, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(proc);
  let buf = "";
  proc.stdout!.setEncoding("utf8").on("data", (c: string) => {
    buf += c;
    const lines = buf.split("\n");
    buf = lines.pop()!;
    for (const l of lines) {
      try {
        onLine(JSON.parse(l) as Record<string, unknown>);
      } catch {
        // not JSON
      }
    }
  });
  return proc;
}

async function until(check: () => boolean, ms: number, what: string): Promise<number> {
  const t0 = performance.now();
  while (!check()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return performance.now() - t0;
}

const port = await new Promise<number>((resolve) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address() as net.AddressInfo;
    s.close(() => resolve(port));
  });
});
const url = `http://127.0.0.1:${port}`;
const db = await createTestDatabase();
const serverEnv = {
  DATABASE_URL: db.url,
  PORT: String(port),
  BIND_ADDRESS: "127.0.0.1",
  REMOTEGPU_ADMIN_TOKEN: ADMIN,
  LOG_LEVEL: "warn",
  RATE_LIMIT_PER_SECOND: "0",
  HEARTBEAT_INTERVAL_SECONDS: values.period!,
  HOST_GRACE_SECONDS: values.grace!,
};
let listening = false;
let spawnedAt = 0;
const serve = () => {
  listening = false;
  spawnedAt = performance.now();
  // The built server (npm run build:server), as deployed: it listens about 1 s after it is spawned
  // here, where the sources under tsx took 4-6 s.
  return start("dist/src/main.js", [], { ...serverEnv, LOG_LEVEL: "info" }, (l) => {
    if (l.msg === "remotegpu listening") listening = true;
  });
};
const hostsFile = path.join(os.tmpdir(), `remotegpu-bench-restart-${process.pid}.json`);
const sql = new pg.Client({ connectionString: db.url });
try {
  let server = serve();
  await until(() => listening, 120_000, "the server");
  const auth: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${ADMIN}`);
    return next(req);
  };
  const hosts = createClient(HostService, createConnectTransport({ baseUrl: url, httpVersion: "2", interceptors: [auth] }));
  const made: { id: string; token: string }[] = [];
  for (let i = 0; i < agents; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, agents - i) }, (_, j) =>
        hosts.createHost({ name: `restart-${String(i + j).padStart(5, "0")}`, address: "127.0.0.1" }),
      ),
    );
    made.push(...batch.map((r) => ({ id: r.host!.id, token: r.agentToken })));
  }
  writeFileSync(hostsFile, JSON.stringify(made));
  process.stderr.write(`created ${agents} hosts; connecting the fleet\n`);

  let fleet = { connected: 0, welcomes: 0, failed: {} as Record<string, number>, stallMs: 0 };
  /** The fleet process's longest stall since `stalls` was last reset (see fleet.ts). */
  let stalls = 0;
  /** From when the new server listens until all are back: welcomes by the end of each second. */
  const returned: number[] = [];
  /** Over the same span: connections waiting to be accepted, read about once a second. */
  const queued: number[] = [];
  let listeningAt = 0;
  let recording = false;
  let welcomesBefore = 0;
  start(
    "bench/restart/fleet.ts",
    ["--target", url, "--hosts", hostsFile],
    {},
    (l) => {
      fleet = l as typeof fleet;
      stalls = Math.max(stalls, fleet.stallMs);
      if (recording) returned[Math.floor((performance.now() - listeningAt) / 1000)] = fleet.welcomes - welcomesBefore;
    },
    FLEET_NODE_FLAGS,
  );
  const firstConnectMs = await until(() => fleet.connected === agents, 600_000, "the fleet to connect");
  const firstStalls = stalls;
  await new Promise((r) => setTimeout(r, 2 * Number(values.period) * 1000)); // a few heartbeats each
  await sql.connect();
  const offline = async () => Number((await sql.query("select count(*) from hosts where status = 'OFFLINE'")).rows[0].count);
  if ((await offline()) !== 0) throw new Error("hosts OFFLINE before the restart");
  process.stderr.write(`fleet connected in ${(firstConnectMs / 1000).toFixed(1)} s; restarting the server\n`);

  // The restart: stop (the streams end), start again, wait for every agent to come back.
  welcomesBefore = fleet.welcomes;
  const failedBefore = fleet.failed;
  // Hosts OFFLINE at any moment from the restart until a grace period after everyone was back.
  let worstOffline = 0;
  let worstQueue = 0;
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      worstOffline = Math.max(worstOffline, await offline());
      const queue = acceptQueue(port);
      worstQueue = Math.max(worstQueue, queue);
      if (recording) queued[Math.floor((performance.now() - listeningAt) / 1000)] = queue;
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  stalls = 0;
  const restartAt = performance.now();
  await new Promise((r) => {
    server.once("exit", r);
    server.kill("SIGTERM");
  });
  const stoppedMs = performance.now() - restartAt;
  server = serve();
  await until(() => listening, 120_000, "the new server");
  listeningAt = performance.now();
  const cpuAtListening = cpuSeconds(server.pid!);
  recording = true;
  const listeningMs = listeningAt - restartAt;
  const startMs = listeningAt - spawnedAt;
  const backMs = await until(
    () => fleet.connected === agents && fleet.welcomes - welcomesBefore >= agents,
    300_000,
    "the fleet to come back",
  );
  const allBackMs = performance.now() - restartAt;
  const returnCpu = (cpuSeconds(server.pid!) - cpuAtListening) / (backMs / 1000);
  recording = false;
  // A second without a line from the fleet (it stalled) shows the count before it.
  for (let i = 0; i < returned.length; i++) returned[i] ??= returned[i - 1] ?? 0;
  const returnStalls = stalls;

  await new Promise((r) => setTimeout(r, (Number(values.grace) + 10) * 1000));
  watching = false;
  await watcher;
  process.stdout.write(
    [
      `${agents} agents × 8 GPUs, one connection each, heartbeat every ${values.period} s, grace ${values.grace} s; ${os.cpus().length} cores, Node ${process.version}`,
      "",
      "| figure | value |",
      "| --- | --- |",
      `| first connection of the fleet (spread over 5 s) | ${(firstConnectMs / 1000).toFixed(1)} s |`,
      `| old server stopped (SIGTERM to exit) | ${(stoppedMs / 1000).toFixed(1)} s |`,
      `| new server listening, from the restart | ${(listeningMs / 1000).toFixed(1)} s (${(startMs / 1000).toFixed(1)} s of it from its start) |`,
      `| every agent back, from the new server listening | ${(backMs / 1000).toFixed(1)} s (${(agents / (backMs / 1000)).toFixed(0)} hellos/s) |`,
      `| every agent back, from the restart | ${(allBackMs / 1000).toFixed(1)} s |`,
      `| the new server's CPU from listening until all back | ${(returnCpu * 100).toFixed(0)}% of a core |`,
      `| most hosts OFFLINE at once, from the restart until ${values.grace} s after all were back | ${worstOffline} |`,
      `| most connections waiting to be accepted, same span (the listening socket's queue) | ${worstQueue} |`,
      `| the fleet's process: longest stall, first connection / restart until all back | ${(firstStalls / 1000).toFixed(1)} s / ${(returnStalls / 1000).toFixed(1)} s |`,
      "",
      // An agent that gives up on a connection before its welcome (a PING unanswered, say) joins the queue again.
      `welcomes by the end of each second after the new server listened: ${returned.map((n, i) => `${i + 1}s ${n}`).join(", ")}`,
      `waiting to be accepted during each second: ${Object.entries(queued)
        .map(([i, n]) => `${Number(i) + 1}s ${n}`)
        .join(", ")}`,
      `connection attempts that failed before a welcome, first connection: ${JSON.stringify(failedBefore)}`,
      `and from the restart: ${JSON.stringify(since(failedBefore, fleet.failed))}`,
      "",
    ].join("\n"),
  );
  if (worstOffline > 0) process.exitCode = 1;
} finally {
  await sql.end().catch(() => undefined);
  for (const c of children) c.kill("SIGTERM");
  await db.drop();
}
process.exit(process.exitCode ?? 0);

/**
 * Connections the kernel holds for the server's listening socket that it has not accepted yet (the
 * `rx_queue` of a LISTEN row of /proc/net/tcp). libuv accepts one per event-loop turn on each
 * listening descriptor, so a server whose turns are long leaves agents waiting here
 * (docs/benchmarks.md, "Why the returns collapse" and what follows it).
 */
function acceptQueue(listeningPort: number): number {
  const local = `:${listeningPort.toString(16).toUpperCase().padStart(4, "0")}`;
  for (const line of readFileSync("/proc/net/tcp", "utf8").split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[1]?.endsWith(local) && f[3] === "0A") return Number.parseInt(f[4]!.split(":")[1]!, 16);
  }
  return 0;
}

/** The counts of `now` that grew since `before`, by how much. */
function since(before: Record<string, number>, now: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(now).flatMap(([k, n]) => (n > (before[k] ?? 0) ? [[k, n - (before[k] ?? 0)]] : [])));
}
