// npm run bench:heartbeat [-- --agents 5000 --rate 1 --duration 60 --warmup 15 --replicas 1]
// Runs the same load generator (a separate process) first against RemoteGPU (real PostgreSQL; with
// --replicas N, N server processes sharing it and Redis, the agents' connections spread over them)
// and then against as many bare connect-node echo stream servers, and prints one table with both.
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { createTestDatabase } from "../../test/support/database.js";
import { cpuSeconds, rssMiB } from "../proc.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values } = parseArgs({
  options: {
    agents: { type: "string", default: "5000" },
    rate: { type: "string", default: "1" },
    duration: { type: "string", default: "60" },
    warmup: { type: "string", default: "15" },
    "per-connection": { type: "string", default: "100" },
    replicas: { type: "string", default: "1" },
    // Prometheus' view while RemoteGPU is measured: GET /metrics of each replica every N seconds (0: none).
    scrape: { type: "string", default: "0" },
    // Write a V8 CPU profile of each RemoteGPU server process into this folder (node --cpu-prof).
    profile: { type: "string" },
  },
});
const replicas = Number(values.replicas);
const ADMIN = "bench-admin-token-0123456789";

interface Child {
  proc: ChildProcess;
  lines: string[];
}

const children: ChildProcess[] = [];
process.once("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

function start(script: string, args: string[], env: Record<string, string>, nodeArgs: string[] = []): Child {
  // Built JavaScript runs as deployed; TypeScript (the load generator) through tsx.
  const loader = script.endsWith(".ts") ? ["--import", "tsx"] : [];
  const proc = spawn(process.execPath, [...nodeArgs, ...loader, script, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(proc);
  const child: Child = { proc, lines: [] };
  let buf = "";
  proc.stdout!.setEncoding("utf8").on("data", (c: string) => {
    buf += c;
    const parts = buf.split("\n");
    buf = parts.pop()!;
    child.lines.push(...parts);
  });
  return child;
}

async function waitFor(child: Child, match: (line: Record<string, unknown>) => boolean, ms: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + ms;
  for (;;) {
    for (const line of child.lines) {
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>;
        if (match(parsed)) return parsed;
      } catch {
        // not JSON
      }
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting; output:\n${child.lines.slice(-20).join("\n")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** CPU seconds (user + system) and resident memory of processes together, from /proc. */
function usage(pids: number[]): { cpu: number; rssMiB: number } {
  let cpu = 0;
  let rss = 0;
  for (const pid of pids) {
    cpu += cpuSeconds(pid);
    rss += rssMiB(pid);
  }
  return { cpu, rssMiB: rss };
}

/** Starts `count` processes of `script` and waits until each listens; returns their URLs. */
async function listening(
  count: number,
  script: string,
  env: Record<string, string>,
  nodeArgs: string[] = [],
): Promise<{ procs: ChildProcess[]; urls: string[] }> {
  const procs: ChildProcess[] = [];
  const urls: string[] = [];
  for (let i = 0; i < count; i++) {
    const child = start(script, [], env, nodeArgs);
    const { port } = (await waitFor(child, (l) => l.msg === "remotegpu listening", 60_000)) as { port: number };
    procs.push(child.proc);
    urls.push(`http://127.0.0.1:${port}`);
  }
  return { procs, urls };
}

async function stop(procs: ChildProcess[]): Promise<void> {
  await Promise.all(
    procs.map(
      (p) =>
        new Promise((r) => {
          p.once("exit", r);
          p.kill("SIGTERM");
        }),
    ),
  );
}

/** Runs the load generator; `window` runs as the measured window starts and returns what to run when it ends. */
async function load(
  targets: string[],
  hostsFile: string,
  serverPids: number[],
  window: () => Promise<() => Promise<void>> = async () => async () => undefined,
): Promise<Record<string, number>> {
  const gen = start(
    "bench/heartbeat/load.ts",
    [
      "--target",
      targets.join(","),
      "--hosts",
      hostsFile,
      "--rate",
      values.rate!,
      "--duration",
      values.duration!,
      "--warmup",
      values.warmup!,
      "--per-connection",
      values["per-connection"]!,
    ],
    {},
  );
  const idleRss = usage(serverPids).rssMiB;
  // The servers' CPU while the fleet connects: hellos, and the heartbeats of the agents already in.
  const connecting = usage(serverPids);
  await waitFor(gen, (l) => l.phase === "connected", 1200 * 1000);
  const helloCpuMs = ((usage(serverPids).cpu - connecting.cpu) * 1000) / agents;
  await waitFor(gen, (l) => l.phase === "measuring", (Number(values.warmup) + 60) * 1000);
  const windowEnd = await window();
  const before = usage(serverPids);
  const t0 = performance.now();
  let peakRss = before.rssMiB;
  const poll = setInterval(() => (peakRss = Math.max(peakRss, usage(serverPids).rssMiB)), 1000);
  const result = await waitFor(gen, (l) => l.phase === "done", (Number(values.duration) + 60) * 1000);
  clearInterval(poll);
  const after = usage(serverPids);
  await windowEnd();
  const seconds = (performance.now() - t0) / 1000;
  return {
    ...(result as Record<string, number>),
    serverCpuPercent: ((after.cpu - before.cpu) / seconds) * 100,
    helloCpuMs,
    // What the streams cost beyond the idle process.
    rssPerStreamKiB: ((peakRss - idleRss) * 1024) / Math.max(1, (result as { connected: number }).connected),
    serverRssMiB: peakRss,
    seconds,
  };
}

async function dbStats(url: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const name = new URL(url).pathname.slice(1);
  const { rows } = await client.query(
    "select xact_commit::int as tx, tup_inserted::int as ins, tup_updated::int as upd from pg_stat_database where datname = $1",
    [name],
  );
  await client.end();
  return rows[0] as { tx: number; ins: number; upd: number };
}

const agents = Number(values.agents);
const db = await createTestDatabase();
const hostsFile = path.join(os.tmpdir(), `remotegpu-bench-hosts-${process.pid}.json`);
try {
  // 1. RemoteGPU itself: one replica, or several sharing the database and Redis.
  const shared: Record<string, string> =
    replicas > 1 ? { REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379", REDIS_KEY_PREFIX: `bench-${process.pid}:` } : {};
  const servers = await listening(
    replicas,
    "dist/src/main.js",
    {
      ...shared,
      DATABASE_URL: db.url,
      PORT: "0",
      BIND_ADDRESS: "127.0.0.1",
      REMOTEGPU_ADMIN_TOKEN: ADMIN,
      LOG_LEVEL: "info",
      RATE_LIMIT_PER_SECOND: "0",
      HEARTBEAT_INTERVAL_SECONDS: String(Math.max(1, Math.round(1 / Number(values.rate)))),
    },
    values.profile ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(values.profile)}`] : [],
  );
  const auth: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${ADMIN}`);
    return next(req);
  };
  const hosts = createClient(HostService, createConnectTransport({ baseUrl: servers.urls[0]!, httpVersion: "2", interceptors: [auth] }));
  const made: { id: string; token: string }[] = [];
  for (let i = 0; i < agents; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, agents - i) }, (_, j) =>
        hosts.createHost({ name: `bench-${String(i + j).padStart(5, "0")}`, address: "127.0.0.1" }),
      ),
    );
    made.push(...batch.map((r) => ({ id: r.host!.id, token: r.agentToken })));
  }
  writeFileSync(hostsFile, JSON.stringify(made));
  process.stderr.write(`created ${made.length} hosts; measuring RemoteGPU\n`);
  // Database activity over the measured window only (not the hellos of the connecting fleet).
  let statsBefore = { tx: 0, ins: 0, upd: 0 };
  let statsAfter = statsBefore;
  const scrapes: { ms: number; bytes: number }[] = [];
  const scrapeEvery = Number(values.scrape) * 1000;
  const scraper =
    scrapeEvery > 0
      ? setInterval(() => {
          for (const url of servers.urls) {
            const t = performance.now();
            void fetch(`${url}/metrics`)
              .then((r) => r.text())
              .then((body) => scrapes.push({ ms: performance.now() - t, bytes: body.length }))
              .catch(() => undefined);
          }
        }, scrapeEvery)
      : undefined;
  const real = await load(
    servers.urls,
    hostsFile,
    servers.procs.map((p) => p.pid!),
    async () => {
      statsBefore = await dbStats(db.url);
      return async () => {
        statsAfter = await dbStats(db.url);
      };
    },
  );
  clearInterval(scraper);
  await stop(servers.procs);

  // 2. The bare echo server (as many processes), same harness.
  process.stderr.write("measuring the echo server\n");
  const echo = await listening(replicas, "dist/bench/heartbeat/echo-server.js", { PORT: "0" });
  const bare = await load(
    echo.urls,
    hostsFile,
    echo.procs.map((p) => p.pid!),
  );
  await stop(echo.procs);

  const row = (name: string, r: Record<string, unknown>) =>
    `| ${name} | ${r.connected} | ${(r.hellosPerSecond as number).toFixed(0)} | ${(r.ackedPerSecond as number).toFixed(0)} | ${(r.p50 as number).toFixed(1)} | ${(r.p99 as number).toFixed(1)} | ${(r.serverCpuPercent as number).toFixed(0)}% | ${(r.serverRssMiB as number).toFixed(0)} | ${r.errors} |`;
  const secs = real.seconds as number;
  const n = (v: unknown, digits = 0) => (v as number).toFixed(digits);
  const per = (r: Record<string, unknown>, a: string, b?: string) => (r[a] as number) / (b ? (r[b] as number) : 1);
  const ratio = (a: string, b?: string) => (per(real, a, b) / per(bare, a, b)).toFixed(2);
  process.stdout.write(
    [
      `agents ${agents} × 8 GPUs, ${values.rate} heartbeat/s each, ${replicas} server process(es) (CPU and RSS are their sum), ${values["per-connection"]} streams per HTTP/2 connection, ${values.duration} s measured after ${values.warmup} s warm-up; load generator and server on the same ${os.cpus().length} cores, Node ${process.version}`,
      "",
      "| server | streams | hellos/s while connecting | acked heartbeats/s | ack p50 ms | ack p99 ms | server CPU | server RSS MiB | stream errors |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
      row("RemoteGPU (PostgreSQL)", real),
      row("bare connect-node echo", bare),
      "",
      `RemoteGPU / echo message rate: ${(((real.ackedPerSecond as number) / (bare.ackedPerSecond as number)) * 100).toFixed(0)}%`,
      `RemoteGPU / echo: hellos/s ${ratio("hellosPerSecond")}×, server CPU per acked heartbeat ${ratio("serverCpuPercent", "ackedPerSecond")}×, RSS per stream ${ratio("rssPerStreamKiB")}× (${n(real.rssPerStreamKiB)} against ${n(bare.rssPerStreamKiB)} KiB), ack p99 ${ratio("p99")}×`,
      `server CPU while the fleet connected, per hello: ${n(real.helloCpuMs, 1)} ms (echo ${n(bare.helloCpuMs, 1)} ms)`,
      `stream errors by code: RemoteGPU ${JSON.stringify(real.errorCodes)}, echo ${JSON.stringify(bare.errorCodes)}`,
      ...(scrapes.length
        ? [
            `scrapes of /metrics during the run: ${scrapes.length}, ${(Math.max(...scrapes.map((x) => x.bytes)) / 2 ** 20).toFixed(1)} MiB, slowest ${Math.max(...scrapes.map((x) => x.ms)).toFixed(0)} ms`,
          ]
        : []),
      `database during the measured window: ${((statsAfter.tx - statsBefore.tx) / secs).toFixed(1)} transactions/s, ${((statsAfter.upd - statsBefore.upd) / secs).toFixed(0)} rows updated/s, ${((statsAfter.ins - statsBefore.ins) / secs).toFixed(0)} rows inserted/s`,
      "",
    ].join("\n"),
  );
} finally {
  await db.drop();
}
process.exit(0);
