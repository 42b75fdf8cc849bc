// The fleet of the restart bench: one SDK AgentSession per host (the agent's own stream code: one
// HTTP/2 connection each, its reconnect backoff, its buffered readings), each reporting 8 GPUs at the
// period the server asks for. Prints {"connected": n, "welcomes": n, "failed": {reason: n},
// "stallMs": n} twice a second.
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { AgentSession, type AgentReading } from "../../sdk/src/agent-session.js";

const { values } = parseArgs({
  options: { target: { type: "string" }, hosts: { type: "string" }, gpus: { type: "string", default: "8" } },
});
const hosts: { id: string; token: string }[] = JSON.parse(readFileSync(values.hosts!, "utf8"));
const gpuCount = Number(values.gpus);

let connected = 0;
let welcomes = 0;
/** Connection attempts that ended before a welcome, by code and message. */
const failed: Record<string, number> = {};
const stop = new AbortController();
setMaxListeners(0, stop.signal); // every session listens to it
for (const [n, host] of hosts.entries()) {
  let up = false;
  const gpus = Array.from({ length: gpuCount }, (_, i) => ({
    index: i,
    uuid: `GPU-restart-${n}-${i}`,
    model: "NVIDIA H100 80GB HBM3",
    memoryBytes: 80n << 30n,
  }));
  const reading = (): AgentReading => ({
    gpus,
    heartbeat: {
      gpus: gpus.map((g) => ({
        gpuUuid: g.uuid,
        index: g.index,
        metrics: { gpuUtilizationPercent: Math.random() * 100, temperatureCelsius: 55 },
      })),
    },
  });
  const session = new AgentSession({
    servers: [values.target!],
    hostId: host.id,
    token: host.token,
    agentVersion: "bench",
    capacity: { cpuMillicores: 64000n, memoryBytes: 512n << 30n, diskBytes: 2n << 40n },
    read: async () => reading(),
    logger: {
      info: (_f, message) => {
        if (message !== "agent connected") return;
        welcomes++;
        if (!up) connected++;
        up = true;
      },
      warn: (fields, message) => {
        if (message !== "agent stream ended") return;
        if (!up) {
          const { code, error } = fields as { code: string; error: string };
          const key = `${code}: ${error}`;
          failed[key] = (failed[key] ?? 0) + 1;
          return;
        }
        connected--;
        up = false;
      },
      error: () => undefined,
    },
  });
  // Spread the first connections over a few seconds, as hosts booting would.
  setTimeout(
    () => void session.run(stop.signal).catch((err: unknown) => process.stderr.write(`fleet: ${String(err)}\n`)),
    (n / hosts.length) * 5000,
  );
}
// The longest this process went without running a timer since the last line: a fleet of thousands
// of sessions shares two cores with the server here, and while it stalls its agents neither
// reconnect nor read the server's PING answers (a PING timer that fires after a stall gives up).
let stallMs = 0;
let tick = performance.now();
setInterval(() => {
  const now = performance.now();
  stallMs = Math.max(stallMs, now - tick - 100);
  tick = now;
}, 100);
setInterval(() => {
  process.stdout.write(`${JSON.stringify({ connected, welcomes, failed, stallMs: Math.round(stallMs) })}\n`);
  stallMs = 0;
}, 500);
process.once("SIGTERM", () => {
  stop.abort();
  setTimeout(() => process.exit(0), 500);
});
