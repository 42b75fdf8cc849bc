#!/usr/bin/env node
import { mkdirSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ConnectError } from "@connectrpc/connect";
import { AgentConnection } from "./agent-connection.js";
import { HostStats } from "./host-stats.js";
import { createLogger } from "./logger.js";
import { NvidiaSmiCollector } from "./nvidia-smi.js";
import { SimulatedGpus } from "./simulated-gpus.js";
import { Workloads } from "./workloads.js";

// The RemoteGPU node agent, the `remotegpu-agent` bin of @remotegpu/agent:
//   remotegpu-agent --server URL --host-id ID --token TOKEN [options]
// (in the repository, without a build: `npm run agent -- --server URL ...`).

/** How often the volumes are measured (a walk of each; heartbeats carry the figures when new). */
const VOLUME_SAMPLE_MS = 60_000;
const USAGE = `usage: remotegpu-agent --server URL[,URL...] --host-id ID --token TOKEN [options]
  --server URL          control plane URL(s), tried in turn         (env REMOTEGPU_SERVER)
  --host-id ID          the host this agent speaks for              (env REMOTEGPU_HOST_ID)
  --token TOKEN         the host's agent token from CreateHost      (env REMOTEGPU_AGENT_TOKEN)
  --interval SECONDS    heartbeat period; default: what the server asks
  --simulate-gpus N     report N simulated GPUs instead of running nvidia-smi
  --data-dir DIR        environments and volumes; default: cwd      (env REMOTEGPU_DATA_DIR)
  --process-mode        run environments as host processes even where docker or podman exists
  --log-level LEVEL     default info                                (env REMOTEGPU_LOG_LEVEL)`;

// The package's own version (package.json sits beside src/ and dist/ alike).
const AGENT_VERSION = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;

const options = {
  server: { type: "string", default: process.env.REMOTEGPU_SERVER },
  "host-id": { type: "string", default: process.env.REMOTEGPU_HOST_ID },
  token: { type: "string", default: process.env.REMOTEGPU_AGENT_TOKEN },
  interval: { type: "string" },
  "simulate-gpus": { type: "string" },
  "data-dir": { type: "string", default: process.env.REMOTEGPU_DATA_DIR || process.cwd() },
  "process-mode": { type: "boolean" },
  "log-level": { type: "string", default: process.env.REMOTEGPU_LOG_LEVEL || "info" },
  help: { type: "boolean" },
} as const;

function flags() {
  try {
    return parseArgs({ options }).values;
  } catch (err) {
    process.stderr.write(`agent: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    process.exit(2);
  }
}
const values = flags();

if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const problems: string[] = [];
const servers = (values.server ?? "")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
if (servers.length === 0) problems.push("--server: required");
for (const s of servers) if (!/^https?:\/\/[^/]+\/?$/.test(s)) problems.push(`--server: "${s}" is not an http(s)://host:port URL`);
if (!values["host-id"]) problems.push("--host-id: required");
if (!values.token) problems.push("--token: required");
const interval = values.interval === undefined ? undefined : Number(values.interval);
if (interval !== undefined && !(interval >= 1 && interval <= 3600)) problems.push("--interval: seconds from 1 to 3600");
const simulated = values["simulate-gpus"] === undefined ? undefined : Number(values["simulate-gpus"]);
if (simulated !== undefined && !(Number.isInteger(simulated) && simulated >= 0 && simulated <= 64))
  problems.push("--simulate-gpus: a whole number from 0 to 64");
if (problems.length > 0) {
  for (const p of problems) process.stderr.write(`agent: ${p}\n`);
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

const logger = createLogger(values["log-level"]!);
const dataDir = values["data-dir"]!;
try {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
} catch (err) {
  process.stderr.write(`agent: --data-dir: cannot create ${dataDir}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
const stats = new HostStats(dataDir);
// One collector for the agent's run: it reads the driver and CUDA versions once and remembers query
// fields the driver rejected.
const nvidiaSmi = new NvidiaSmiCollector();
const gpus =
  simulated !== undefined
    ? new SimulatedGpus(simulated, values["host-id"]!)
    : {
        async collect() {
          const result = await nvidiaSmi.collect();
          for (const w of result.warnings) logger.warn({ warning: w }, "nvidia-smi output");
          return result;
        },
      };

// Fails fast (before connecting) when nvidia-smi is missing, with its own clear message.
const first = await gpus.collect().catch((err: unknown) => {
  process.stderr.write(`agent: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

// Its events go up the connection built below (they only come once commands arrive through it).
const workloads = new Workloads({
  dataDir,
  logger,
  engine: values["process-mode"] ? "process" : undefined,
  events: { status: (r) => connection.status(r), logs: (id, lines) => connection.logs(id, lines) },
});
// What an earlier agent left running is taken over before the hello, which lists it.
await workloads.recover();
logger.info({ gpus: first.inventory.length, simulated: simulated !== undefined, engine: workloads.engine }, "agent starting");

const connection = new AgentConnection({
  servers,
  hostId: values["host-id"]!,
  token: values.token!,
  agentVersion: AGENT_VERSION,
  intervalMs: interval === undefined ? undefined : interval * 1000,
  capacity: await stats.capacity(),
  logger,
  workloads,
  volumeSampleMs: VOLUME_SAMPLE_MS,
  read: async () => {
    const time = new Date();
    const [result, host] = await Promise.all([gpus.collect(), stats.sample()]);
    return { inventory: result.inventory, samples: result.samples, host, time };
  },
});

// Leaving, for an upgrade or a restart, does not stop the environments: the next agent adopts them.
const stop = new AbortController();
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    logger.info({ signal }, "agent stopping; its environments keep running");
    void workloads.detach().finally(() => stop.abort());
  });
}
try {
  await connection.run(stop.signal);
} catch (err) {
  // Refused (the host was deleted, its token revoked): nothing will manage these environments any more.
  await workloads.shutdown();
  const refused = err instanceof ConnectError;
  process.stderr.write(`agent: ${refused ? "the server refused this agent: " : ""}${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
logger.info("agent stopped");
process.exit(0);
