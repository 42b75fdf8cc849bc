import { strict as assert } from "node:assert";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { agentArgv, agentTempDir, freePort, ROOT, simulatedAgentFlags } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { startTestServer, type TestServer } from "../support/server.js";

interface Vector {
  metric: Record<string, string>;
  value: [number, string];
}

// Debian's Prometheus scrapes a live server that a real agent (simulated GPUs) reports to, with the
// shipped alert rules (their `for:` shortened so the test does not wait minutes).
describe("e2e: a real Prometheus scrapes the fleet and fires the shipped alerts", function () {
  this.timeout(120_000);
  let server: TestServer;
  let prometheus: ChildProcess | undefined;
  let agent: ChildProcess | undefined;
  let dir: string;
  let promUrl: string;
  let promLog = "";

  const query = async (expr: string): Promise<Vector[]> => {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; data: { result: Vector[] } };
    assert.equal(body.status, "success", JSON.stringify(body));
    return body.data.result;
  };
  const waitFor = <T>(what: string, check: () => Promise<T | false>) =>
    eventually(`${what}; prometheus said: ${promLog.slice(-2000)}`, check, { ms: 60_000, everyMs: 500 });

  before(async () => {
    if (spawnSync("prometheus", ["--version"], { stdio: "ignore" }).status !== 0)
      throw new Error("prometheus is not installed: `apt-get install -y prometheus` (.ci/run does)");
    server = await startTestServer({
      clock: systemClock,
      env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "3", METRICS_REFRESH_SECONDS: "1" },
    });
    dir = await mkdtemp(path.join(tmpdir(), "rgpu-prom-"));
    const rules = (await readFile(path.join(ROOT, "deploy/prometheus/alerts.yml"), "utf8")).replace(/^(\s*)for: .*$/gm, "$1for: 0s");
    await writeFile(path.join(dir, "alerts.yml"), rules);
    const target = new URL(server.baseUrl).host;
    await writeFile(
      path.join(dir, "prometheus.yml"),
      `global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: remotegpu\n    static_configs: [{targets: ["${target}"]}]\n`,
    );
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    prometheus = spawn(
      "prometheus",
      [
        `--config.file=${path.join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${path.join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    prometheus.stderr!.setEncoding("utf8").on("data", (c: string) => (promLog += c));
  });
  after(async () => {
    agent?.kill("SIGKILL");
    prometheus?.kill("SIGTERM");
    await server?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("shows each simulated GPU with the agent's values, and fires RemoteGpuHostOffline once the agent is gone past the grace", async () => {
    const created = await server.client(HostService).createHost({ name: "prom-host", address: "127.0.0.1" });
    const dataDir = await agentTempDir("rgpu-prom-agent-");
    const flags = simulatedAgentFlags({ server: server.baseUrl, hostId: created.host!.id, token: created.agentToken, gpus: 2, dataDir });
    agent = spawn(process.execPath, agentArgv([...flags, "--interval", "1"]), { cwd: ROOT, stdio: "ignore" });

    const gpus = await waitFor("both simulated GPUs in Prometheus", async () => {
      const r = await query('remotegpu_gpu_utilization_ratio{host="prom-host"}');
      return r.length === 2 && r;
    });
    assert.deepEqual(gpus.map((v) => v.metric.index).sort(), ["0", "1"]);
    for (const v of gpus) {
      assert.match(v.metric.uuid!, /^GPU-/);
      assert.equal(v.metric.model, "NVIDIA H100 80GB HBM3 (simulated)");
      const ratio = Number(v.value[1]);
      assert.ok(ratio >= 0 && ratio <= 1, `utilisation ${ratio} is a ratio`);
    }
    await waitFor("the host up", async () => (await query('remotegpu_host_up{host="prom-host"} == 1')).length === 1);
    assert.deepEqual(await query('ALERTS{alertname="RemoteGpuHostOffline"}'), []);

    agent.kill("SIGKILL");
    const firing = await waitFor("RemoteGpuHostOffline firing", async () => {
      const r = await query('ALERTS{alertname="RemoteGpuHostOffline",alertstate="firing"}');
      return r.length > 0 && r;
    });
    assert.equal(firing[0]!.metric.host, "prom-host");
    await rm(dataDir, { recursive: true, force: true });
  });
});
