import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { packAndInstall, type PackedInstall } from "../support/pack.js";
import { agentTempDir, simulatedAgentFlags } from "../support/child.js";
import { startTestServer, type TestServer } from "../support/server.js";

/** What the control plane needs and a GPU server must not have to install. */
const SERVER_ONLY = ["@mikro-orm", "pg", "@aws-sdk", "@kubernetes/client-node", "ioredis", "tsx", "typescript"];

/**
 * The agent as an operator gets it: `npm pack` of the SDK and the agent, both tarballs installed
 * into an empty project, the `remotegpu-agent` bin run with plain node against a live server.
 */
describe("@remotegpu/agent as a package", function () {
  this.timeout(180_000);
  let packed: PackedInstall;
  let server: TestServer;
  let dataDir: string;

  before(async () => {
    packed = await packAndInstall(["sdk", "agent"]);
    server = await startTestServer({ clock: systemClock, env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5" } });
    dataDir = await agentTempDir("remotegpu-agent-pack-data-");
  });
  after(async () => {
    await server?.close();
    await packed?.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it("holds only built JavaScript and installs with nothing of the server's dependencies", async () => {
    const files = packed.files.get("@remotegpu/agent")!;
    assert.ok(files.includes("dist/main.js"), files.join(", "));
    assert.deepEqual(
      files.filter((f) => f !== "package.json" && !/^dist\/[\w-]+\.js$/.test(f)),
      [],
      "only package.json and dist/*.js are packed",
    );
    const main = await readFile(path.join(packed.installed("@remotegpu/agent"), "dist/main.js"), "utf8");
    assert.ok(main.startsWith("#!/usr/bin/env node\n"), "the bin runs with node");

    const installed = await installedPackages(path.join(packed.project, "node_modules"));
    assert.ok(installed.has("@remotegpu/sdk") && installed.has("pino"), [...installed].join(", "));
    const unwanted = [...installed].filter((name) => SERVER_ONLY.some((s) => name === s || name.startsWith(`${s}/`)));
    assert.deepEqual(unwanted, [], "installed beside the agent");
  });

  it("runs from its bin with plain node: the host goes ONLINE with its GPUs, and SIGTERM ends it with 0", async () => {
    const { host, agentToken } = await server.client(HostService).createHost({ name: "from-the-tarball", address: "127.0.0.1" });
    // No tsx, no loader and no source condition: what the tarball holds must run as it is.
    const env = { ...process.env };
    delete env.NODE_OPTIONS;
    const flags = simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 2, dataDir });
    const agent = spawn(packed.bin("remotegpu-agent"), flags, { cwd: packed.project, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    for (const s of [agent.stdout, agent.stderr]) s.setEncoding("utf8").on("data", (c: string) => (output = (output + c).slice(-20_000)));
    const exited = new Promise<number | string>((resolve) => agent.once("exit", (code, signal) => resolve(code ?? signal ?? "unknown")));
    try {
      const online = await eventually("the host ONLINE with its 2 GPUs", async () => {
        const h = (await server.client(HostService).getHost({ id: host!.id })).host;
        const gpus = (await server.client(GpuService).listGpus({ hostId: host!.id })).gpus;
        return h?.status === HostStatus.ONLINE && gpus.length === 2 ? h : undefined;
      }).catch((err: Error) => assert.fail(`${err.message}\n--- agent output ---\n${output}`));
      assert.equal(
        online.agentVersion,
        JSON.parse(await readFile(path.join(packed.installed("@remotegpu/agent"), "package.json"), "utf8")).version,
      );
    } finally {
      agent.kill("SIGTERM");
    }
    assert.equal(await exited, 0, output);
    assert.match(output, /"agent stopped"/);
  });
});

/** Names of every package under a node_modules folder, nested ones included. */
async function installedPackages(nodeModules: string, found = new Set<string>()): Promise<Set<string>> {
  const entries = await readdir(nodeModules, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    if (!entry.isDirectory() || entry.name.startsWith(".")) continue;
    const names = entry.name.startsWith("@")
      ? (await readdir(path.join(nodeModules, entry.name))).map((n) => `${entry.name}/${n}`)
      : [entry.name];
    for (const name of names) {
      found.add(name);
      await installedPackages(path.join(nodeModules, name, "node_modules"), found);
    }
  }
  return found;
}
