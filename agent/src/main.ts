#!/usr/bin/env node
import { hostKey, SshServer } from "./ssh-server.js";
import { chmodSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ConnectError } from "@connectrpc/connect";
import { AgentConnection } from "./agent-connection.js";
import { HostStats } from "./host-stats.js";
import { createLogger } from "./logger.js";
import { NvidiaSmiCollector } from "./nvidia-smi.js";
import { stopLeftoverLoop } from "./nvidia-smi-loop.js";
import { parseSimulatedMig, SimulatedGpus, type SimulatedMigSlices } from "./simulated-gpus.js";
import { nvidiaDeviceMinors } from "./cgroups.js";
import { Workloads } from "./workloads.js";

// The RemoteGPU node agent, the `remotegpu-agent` bin of @remotegpu/agent:
//   remotegpu-agent --server URL --host-id ID --token TOKEN [options]
// (in the repository, without a build: `npm run agent -- --server URL ...`).

/** How often the volumes are measured (a walk of each; heartbeats carry the figures when new). */
const VOLUME_SAMPLE_MS = 60_000;
const USAGE = `usage: remotegpu-agent --server URL[,URL...] --host-id ID --token-file FILE [options]
  --server URL          control plane URL(s), tried in turn         (env REMOTEGPU_SERVER)
  --host-id ID          the host this agent speaks for              (env REMOTEGPU_HOST_ID)
  --token-file FILE     file holding the host's agent token from CreateHost (mode 0600)
                        (or env REMOTEGPU_AGENT_TOKEN; --token TOKEN works but shows in ps)
  --interval SECONDS    heartbeat period; default: what the server asks
  --simulate-gpus N     report N simulated GPUs instead of running nvidia-smi
  --nvidia-smi-once     start nvidia-smi for every reading instead of keeping one running in
                        loop mode (--loop-ms) and reading its output
  --simulate-mig PROFILE:COUNT[,PROFILE:COUNT...]  with --simulate-gpus: every simulated GPU in MIG
                        mode with these MIG devices, e.g. 1g.10gb:7 or 3g.40gb:1,1g.10gb:4
  --data-dir DIR        environments and volumes; default: cwd      (env REMOTEGPU_DATA_DIR)
  --process-mode        run environments as host processes, not containers: for one trusted user
                        or development (without it and without docker/podman, it runs none)
  --workload-uids A-B   process mode as root: one uid per environment from A-B; default 200000-299999
  --workload-pids N     process mode as root: most processes per environment; default 4096
  --container-pids N    most processes per container; default 4096
  --container-cap-add CAP[,CAP...]  capabilities containers get beyond the documented set
  --log-level LEVEL     default info                                (env REMOTEGPU_LOG_LEVEL)`;

// The package's own version (package.json sits beside src/ and dist/ alike).
const AGENT_VERSION = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;

const options = {
  server: { type: "string", default: process.env.REMOTEGPU_SERVER },
  "host-id": { type: "string", default: process.env.REMOTEGPU_HOST_ID },
  token: { type: "string" },
  "token-file": { type: "string" },
  interval: { type: "string" },
  "simulate-gpus": { type: "string" },
  "nvidia-smi-once": { type: "boolean" },
  "simulate-mig": { type: "string" },
  "data-dir": { type: "string", default: process.env.REMOTEGPU_DATA_DIR || process.cwd() },
  "process-mode": { type: "boolean" },
  "workload-uids": { type: "string", default: "200000-299999" },
  "workload-pids": { type: "string", default: "4096" },
  "container-pids": { type: "string", default: "4096" },
  "container-cap-add": { type: "string", default: "" },
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
let token = process.env.REMOTEGPU_AGENT_TOKEN ?? "";
if (values.token) {
  token = values.token;
  process.stderr.write("agent: warning: --token shows the token to every local user (ps, /proc); use --token-file\n");
}
if (values["token-file"]) {
  try {
    token = readFileSync(values["token-file"], "utf8").trim();
    if ((statSync(values["token-file"]).mode & 0o077) !== 0)
      process.stderr.write(`agent: warning: ${values["token-file"]} is readable by others than its owner; chmod 600 it\n`);
  } catch (err) {
    problems.push(`--token-file: ${err instanceof Error ? err.message : String(err)}`);
  }
}
if (!token && !values["token-file"]) problems.push("--token-file: required (or REMOTEGPU_AGENT_TOKEN)");
const uidRange = /^(\d+)-(\d+)$/.exec(values["workload-uids"]!);
if (!uidRange || Number(uidRange[1]) < 1000 || Number(uidRange[1]) > Number(uidRange[2]))
  problems.push("--workload-uids: a range FIRST-LAST of uids from 1000 up");
const wholeNumber = (flag: "workload-pids" | "container-pids") => {
  const n = Number(values[flag]);
  if (!(Number.isInteger(n) && n >= 16 && n <= 1_000_000)) problems.push(`--${flag}: a whole number from 16 to 1000000`);
  return n;
};
const workloadPids = wholeNumber("workload-pids");
const containerPids = wholeNumber("container-pids");
const capAdd = values["container-cap-add"]!.split(",")
  .map((c) => c.trim().toUpperCase().replace(/^CAP_/, ""))
  .filter(Boolean);
for (const c of capAdd)
  if (!/^[A-Z_]+$/.test(c) || c === "ALL" || c === "SYS_ADMIN") problems.push(`--container-cap-add: ${c} is not allowed`);
const interval = values.interval === undefined ? undefined : Number(values.interval);
if (interval !== undefined && !(interval >= 1 && interval <= 3600)) problems.push("--interval: seconds from 1 to 3600");
const simulated = values["simulate-gpus"] === undefined ? undefined : Number(values["simulate-gpus"]);
if (simulated !== undefined && !(Number.isInteger(simulated) && simulated >= 0 && simulated <= 64))
  problems.push("--simulate-gpus: a whole number from 0 to 64");
let simulatedMig: SimulatedMigSlices[] | undefined;
if (values["simulate-mig"] !== undefined) {
  if (simulated === undefined) problems.push("--simulate-mig: only with --simulate-gpus N (real GPUs are partitioned with nvidia-smi mig)");
  try {
    simulatedMig = parseSimulatedMig(values["simulate-mig"]);
  } catch (err) {
    problems.push(`--simulate-mig: ${err instanceof Error ? err.message : String(err)}`);
  }
}
if (problems.length > 0) {
  for (const p of problems) process.stderr.write(`agent: ${p}\n`);
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

const logger = createLogger(values["log-level"]!);
const dataDir = values["data-dir"]!;
try {
  // Directories made above it keep the usual mode: a confined workload's uid must pass them.
  if (mkdirSync(dataDir, { recursive: true })) chmodSync(dataDir, 0o700);
} catch (err) {
  process.stderr.write(`agent: --data-dir: cannot create ${dataDir}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
const stats = new HostStats(dataDir);
// One collector for the agent's run: it reads the driver and CUDA versions once, remembers query
// fields the driver rejected, and keeps one nvidia-smi running in loop mode for the heartbeats'
// readings. Its pid is kept in the data directory: a loop an earlier agent left (killed with
// SIGKILL, say: systemd's KillMode=process leaves its children) is stopped first.
const loopPidFile = join(dataDir, "nvidia-smi-loop.pid");
if (simulated === undefined) stopLeftoverLoop(loopPidFile);
const nvidiaSmi = new NvidiaSmiCollector({ loop: !values["nvidia-smi-once"], loopPidFile });
// The device minor of each GPU by UUID (/dev/nvidia<minor>), for the cgroup device rules of process
// mode: simulated GPUs stand for /dev/nvidia<index>, real ones are found through the driver. A MIG
// device is used through its parent's /dev/nvidia<minor> (and /dev/nvidia-caps, which no rule
// denies), so it takes its parent's minor; as MIG devices come and go with re-partitions, every
// reading adds those it lists.
const gpuMinors = simulated !== undefined ? new Map<string, number>() : nvidiaDeviceMinors();
const simulatedGpus = simulated !== undefined ? new SimulatedGpus(simulated, values["host-id"]!, { mig: simulatedMig }) : undefined;
const gpus = {
  /** Given the heartbeat period, nvidia-smi runs in loop mode at that period. */
  async collect(periodMs?: number) {
    const result = simulatedGpus ? await simulatedGpus.collect() : await nvidiaSmi.collect(periodMs);
    if (!simulatedGpus) for (const w of result.warnings) logger.warn({ warning: w }, "nvidia-smi output");
    for (const g of result.inventory) {
      if (simulated !== undefined && g.parentUuid === undefined) gpuMinors.set(g.uuid, g.index);
      const parentMinor = g.parentUuid === undefined ? undefined : gpuMinors.get(g.parentUuid);
      if (parentMinor !== undefined) gpuMinors.set(g.uuid, parentMinor);
    }
    return result;
  },
};

// Fails fast (before connecting) when nvidia-smi is missing, with its own clear message.
const first = await gpus.collect().catch((err: unknown) => {
  process.stderr.write(`agent: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

// Its events go up the connection built below; those that come before it exists (adopting what an
// earlier agent left running reports its state) wait for it.
let connection: AgentConnection | undefined;
const early: ((c: AgentConnection) => void)[] = [];
const toConnection = (send: (c: AgentConnection) => void) => (connection ? send(connection) : early.push(send));
// Process mode confines workloads to a uid of their own only when the agent is root (it must be to
// switch users); otherwise they run as the agent's user, which is for development only.
const confined = values["process-mode"] && process.getuid?.() === 0;
if (values["process-mode"] && !confined)
  logger.warn("process mode without root: environments run as the agent's own user, unconfined (development only)");
const workloads = new Workloads({
  dataDir,
  logger,
  engine: values["process-mode"] ? "process" : undefined,
  processUsers: confined ? { first: Number(uidRange![1]), last: Number(uidRange![2]) } : undefined,
  processPidsLimit: workloadPids,
  gpuDeviceMinors: gpuMinors,
  containerPolicy: { pidsLimit: containerPids, capAdd },
  events: {
    status: (r) => toConnection((c) => c.status(r)),
    logs: (id, lines) => toConnection((c) => c.logs(id, lines)),
  },
});
// What an earlier agent left running is taken over before the hello, which lists it.
await workloads.recover();
logger.info({ gpus: first.inventory.length, simulated: simulated !== undefined, engine: workloads.engine }, "agent starting");
if (workloads.runtimeUnavailableReason) logger.warn({ reason: workloads.runtimeUnavailableReason }, "this agent runs no environments");

// A token file is read again for each connection: a rotated token put in place is used from the next.
const tokenFile = values["token-file"];
const currentToken = () => {
  if (!tokenFile) return token;
  try {
    // A file caught half-written (or emptied) keeps the last token that looked whole.
    const read = readFileSync(tokenFile, "utf8").trim();
    if (/^rgpu_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/.test(read)) token = read;
    else logger.warn({ file: tokenFile }, "the token file does not hold a whole token; using the last one read");
  } catch (err) {
    logger.warn(
      { file: tokenFile, error: err instanceof Error ? err.message : String(err) },
      "cannot read the token file; using the last token read",
    );
  }
  return token;
};

connection = new AgentConnection({
  servers,
  hostId: values["host-id"]!,
  token: currentToken,
  agentVersion: AGENT_VERSION,
  intervalMs: interval === undefined ? undefined : interval * 1000,
  capacity: await stats.capacity(),
  logger,
  workloads,
  ssh: new SshServer(() => hostKey(dataDir), workloads, logger),
  volumeSampleMs: VOLUME_SAMPLE_MS,
  read: async (periodMs) => {
    const time = new Date();
    const [result, host] = await Promise.all([gpus.collect(periodMs), stats.sample()]);
    return { inventory: result.inventory, samples: result.samples, host, time };
  },
});
for (const send of early.splice(0)) send(connection);

// Leaving, for an upgrade or a restart, does not stop the environments: the next agent adopts them.
const stop = new AbortController();
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    logger.info({ signal }, "agent stopping; its environments keep running");
    nvidiaSmi.close();
    void workloads.detach().finally(() => stop.abort());
  });
}
try {
  await connection.run(stop.signal);
} catch (err) {
  const refused = err instanceof ConnectError;
  const message = err instanceof Error ? err.message : String(err);
  // A token that expired or was revoked by a rotation is the operator's to replace: the environments
  // keep running and the next agent, given the new token, adopts them. Anything else (the host was
  // deleted: its tokens with it) means nothing will manage them any more.
  if (refused && /token (expired|revoked)/.test(message)) {
    await workloads.detach();
    process.stderr.write(`agent: the server refused this agent: ${message}; put the host's new token in place and start it again\n`);
  } else {
    await workloads.shutdown();
    process.stderr.write(`agent: ${refused ? "the server refused this agent: " : ""}${message}\n`);
  }
  process.exit(1);
}
logger.info("agent stopped");
process.exit(0);
