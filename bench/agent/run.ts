// The node agent's own footprint: RSS and CPU of the built agent (`agent/dist/main.js`, as installed)
// reporting N simulated GPUs at the server's default period, beside a bare Node process that only
// keeps a timer (the baseline: what any Node program costs). Build first: npm run build:sdk && npm run build:agent
//   npm run bench:agent [-- --gpus 8 --seconds 60]
import { type ChildProcess, spawn } from "node:child_process";
import { rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { agentTempDir, ROOT } from "../../test/support/child.js";
import { startTestServer } from "../../test/support/server.js";
import { cpuSeconds, rssMiB } from "../proc.js";

const { values } = parseArgs({ options: { gpus: { type: "string", default: "8" }, seconds: { type: "string", default: "60" } } });

/** CPU share of one core and peak RSS of `child` over `seconds`, after a 10 s settle. */
async function watch(child: ChildProcess, seconds: number) {
  await new Promise((r) => setTimeout(r, 10_000));
  const pid = child.pid!;
  const cpu0 = cpuSeconds(pid);
  let peak = 0;
  for (let s = 0; s < seconds; s++) {
    peak = Math.max(peak, rssMiB(pid));
    await new Promise((r) => setTimeout(r, 1000));
  }
  return { cpuPercent: ((cpuSeconds(pid) - cpu0) / seconds) * 100, peakRssMiB: peak };
}

const server = await startTestServer({ clock: systemClock }); // the default heartbeat period (10 s)
const dataDir = await agentTempDir("rgpu-bench-agent-");
try {
  const created = await server.client(HostService).createHost({ name: "bench-agent", address: "127.0.0.1" });
  const flags = ["--server", server.baseUrl, "--host-id", created.host!.id, "--simulate-gpus", values.gpus!, "--data-dir", dataDir];
  const agent = spawn(process.execPath, ["agent/dist/main.js", ...flags], {
    cwd: ROOT,
    env: { ...process.env, REMOTEGPU_AGENT_TOKEN: created.agentToken },
    stdio: "ignore",
  });
  const bare = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  const seconds = Number(values.seconds);
  const [a, b] = await Promise.all([watch(agent, seconds), watch(bare, seconds)]);
  agent.kill("SIGTERM");
  bare.kill("SIGTERM");
  const beats = (await server.client(HostService).getHost({ id: created.host!.id })).host?.lastHeartbeatTime
    ? "reporting"
    : "NOT reporting";
  console.log(`agent with ${values.gpus} simulated GPUs at the default period, ${seconds} s measured after 10 s; the agent was ${beats}`);
  console.log("| process | CPU (% of one core) | peak RSS MiB |");
  console.log("| --- | ---: | ---: |");
  console.log(`| remotegpu-agent (dist) | ${a.cpuPercent.toFixed(2)} | ${a.peakRssMiB.toFixed(0)} |`);
  console.log(`| bare node with a timer | ${b.cpuPercent.toFixed(2)} | ${b.peakRssMiB.toFixed(0)} |`);
} finally {
  await server.close();
  await rm(dataDir, { recursive: true, force: true });
}
