import { strict as assert } from "node:assert";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { rm } from "node:fs/promises";
import path from "node:path";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { agentTempDir, ROOT, agentArgv, simulatedAgentFlags } from "../support/child.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";
import { systemClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { FakeAgent } from "../support/fake-agent.js";

/** The CLI from its sources; the condition makes its @remotegpu/sdk imports resolve to the SDK's sources too. */
const CLI = ["--import", "tsx", "--conditions=@remotegpu/source", "cli/src/main.ts"];

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe("e2e: the admin CLI against a live server with a real agent", function () {
  this.timeout(60_000);
  let server: TestServer;
  let dataDir: string;
  let agent: ChildProcess | undefined;
  let hostId: string;
  let envId: string;
  let workspaceId: string;

  /** `node ...CLI ARGS` with REMOTEGPU_URL and REMOTEGPU_TOKEN set. */
  const cli = (args: string[], env: Record<string, string> = {}, file = process.execPath, pre = CLI) =>
    new Promise<Result>((resolve) => {
      execFile(
        file,
        [...pre, ...args],
        { cwd: ROOT, env: { ...process.env, REMOTEGPU_URL: server.baseUrl, REMOTEGPU_TOKEN: ADMIN_TOKEN, ...env }, timeout: 30_000 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
      );
    });
  const ok = async (args: string[]) => {
    const r = await cli(args);
    assert.equal(r.code, 0, `remotegpu ${args.join(" ")}: exit ${r.code}\n${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  /** The table's rows as cells, checking that each column starts at the same place on every line. */
  const table = (text: string, header: string) => {
    const lines = text.trimEnd().split("\n");
    const top = lines.findIndex((l) => l.startsWith(header));
    assert.ok(top >= 0, `no "${header}" header in\n${text}`);
    const rows = lines.slice(top);
    const starts = [...rows[0]!.matchAll(/(?<=^| {2})\S/g)].map((m) => m.index!);
    for (const row of rows.slice(1))
      assert.ok(
        starts.slice(1).every((s) => row[s - 1] === " "),
        `misaligned row:\n${rows[0]}\n${row}`,
      );
    return rows.slice(1).map((r) => r.split(/ {2,}/).map((c) => c.trim()));
  };

  before(async () => {
    dataDir = await agentTempDir("remotegpu-cli-");
    server = await startTestServer({ clock: systemClock, env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5" } });
    const created = await server.client(HostService).createHost({ name: "cli-node", address: "127.0.0.1" });
    hostId = created.host!.id;
    await server.client(HostService).createHost({ name: "idle-node", address: "10.0.0.9" });
    agent = spawn(
      process.execPath,
      agentArgv(simulatedAgentFlags({ server: server.baseUrl, hostId, token: created.agentToken, gpus: 4, dataDir })),
      { cwd: ROOT, stdio: "ignore" },
    );
    const gpus = server.client(GpuService);
    await eventually("4 GPUs with samples", async () => {
      const list = (await gpus.listGpus({ hostId })).gpus;
      return list.length === 4 && list.every((g) => g.latestSample);
    });
    const workspaces = server.client(WorkspaceService);
    workspaceId = (await workspaces.createWorkspace({ name: "cli-team" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId, maxGpus: 4, maxEnvironments: 2 } });
    const envs = server.client(EnvironmentService);
    envId = (
      await envs.createEnvironment({
        workspaceId,
        name: "job",
        image: "python:3.12",
        command: ["sh", "-c", "echo hello from cli; exec sleep 300"],
        gpuCount: 2,
      })
    ).environment!.id;
    await eventually(
      "the environment RUNNING",
      async () => (await envs.getEnvironment({ id: envId })).environment!.status === EnvironmentStatus.RUNNING,
    );
  });
  after(async () => {
    if (agent && agent.exitCode === null) {
      agent.kill("SIGTERM");
      await new Promise((r) => agent!.once("exit", r));
    }
    await server?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("hosts: an aligned table with GPU status counts and heartbeat age", async () => {
    const rows = table(await ok(["hosts"]), "NAME");
    assert.deepEqual(
      rows.map((r) => r.slice(0, 9)),
      [
        ["cli-node", "ONLINE", "yes", "2/4", "2", "2", "0", "0", "0.1.0"],
        ["idle-node", "OFFLINE", "yes", "0/0", "0", "0", "0", "0", "-"],
      ],
    );
    assert.match(rows[0]![9]!, /^\d+s ago$/);
    assert.equal(rows[1]![9], "never");
  });

  it("hosts --json: the same for scripts", async () => {
    const hosts = JSON.parse(await ok(["--json", "hosts"])) as Record<string, unknown>[];
    const node = hosts.find((h) => h.name === "cli-node")!;
    assert.deepEqual(node.gpus, { free: 2, total: 4, available: 2, allocated: 2, unhealthy: 0, offline: 0 });
    assert.equal(node.status, "ONLINE");
    assert.equal(node.schedulable, true);
    assert.equal(node.agentVersion, "0.1.0");
    assert.ok(!Number.isNaN(Date.parse(node.lastHeartbeatTime as string)));
  });

  it("cordon and uncordon by name or id; drain reports what still runs", async () => {
    assert.match(await ok(["cordon", "cli-node"]), /host cli-node cordoned: unschedulable, ONLINE/);
    assert.equal((JSON.parse(await ok(["--json", "hosts"])) as { schedulable: boolean }[])[0]!.schedulable, false);
    assert.match(await ok(["uncordon", hostId]), /host cli-node uncordoned: schedulable, ONLINE/);

    const drained = await ok(["drain", "cli-node"]);
    assert.match(drained, /host cli-node is draining/);
    assert.match(drained, /still allocated: 2 GPU\(s\)/);
    assert.ok(drained.includes(`still running: 1 environment(s) (${envId})`), drained);
    const json = JSON.parse((await cli(["--json", "drain", "cli-node"])).stdout) as { status: string; environmentIds: string[] };
    assert.equal(json.status, "DRAINING");
    assert.deepEqual(json.environmentIds, [envId]);
    assert.match(await ok(["uncordon", "cli-node"]), /schedulable, ONLINE/);
  });

  it("usage: each quota dimension as used / limit with a percentage", async () => {
    const rows = table(await ok(["usage", "cli-team"]), "DIMENSION");
    const byName = new Map(rows.map((r) => [r[0], r.slice(1)]));
    assert.deepEqual(byName.get("gpus"), ["2 / 4", "50%"]);
    assert.deepEqual(byName.get("environments"), ["1 / 2", "50%"]);
    assert.deepEqual(byName.get("memory"), ["0 B / ∞", "-"]);
    const json = JSON.parse(await ok(["--json", "usage", workspaceId])) as {
      usage: { dimension: string; used: number; limit: number | null; percent: number | null }[];
    };
    assert.deepEqual(
      json.usage.find((d) => d.dimension === "gpus"),
      { dimension: "gpus", used: 2, limit: 4, percent: 50 },
    );
    assert.deepEqual(
      json.usage.find((d) => d.dimension === "cpu"),
      { dimension: "cpu", used: 0, limit: null, percent: null },
    );
  });

  it("logs: the tail, --json lines, and --follow until Ctrl-C", async () => {
    assert.match(await ok(["logs", envId, "--tail", "10"]), /Z stdout +hello from cli$/m);
    const lines = (await ok(["--json", "logs", envId]))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { stream: string; text: string });
    assert.ok(
      lines.some((l) => l.stream === "stdout" && l.text === "hello from cli"),
      JSON.stringify(lines),
    );

    const follow = spawn(process.execPath, [...CLI, "logs", envId, "--follow"], {
      cwd: ROOT,
      env: { ...process.env, REMOTEGPU_URL: server.baseUrl, REMOTEGPU_TOKEN: ADMIN_TOKEN },
    });
    let out = "";
    follow.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
    await eventually("the followed log", async () => out.includes("hello from cli"));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(follow.exitCode, null, "--follow keeps going");
    follow.kill("SIGINT");
    assert.equal(await new Promise((r) => follow.once("exit", r)), 0);
  });

  it("top --once: one snapshot of every GPU's telemetry, as a table or JSON", async () => {
    const rows = table(await ok(["top", "--once", "--host", "cli-node"]), "HOST");
    assert.equal(rows.length, 4);
    for (const [i, r] of rows.entries()) {
      assert.deepEqual(r.slice(0, 3), ["cli-node", `#${i}`, "H100 80GB HBM3 (simulated)"]);
      assert.match(r.slice(4).join(" "), /^\d+% [█░]{10} [\d.]+ GiB \/ 80 GiB \d+°C \d+ \/ 700 W \d+s ago$/);
    }
    const json = JSON.parse(await ok(["--json", "top", "--once"])) as {
      host: string;
      status: string;
      gpuUtilizationPercent: number;
      memoryTotalBytes: number;
    }[];
    assert.equal(json.filter((g) => g.host === "cli-node").length, 4);
    assert.deepEqual(json.map((g) => g.status).sort(), ["ALLOCATED", "ALLOCATED", "AVAILABLE", "AVAILABLE"]);
    for (const g of json) assert.ok(g.gpuUtilizationPercent >= 0 && g.memoryTotalBytes === 81559 * 1024 * 1024);
  });

  it("errors: the gRPC code and message on stderr, and a non-zero exit code", async () => {
    const bad = await cli(["hosts"], { REMOTEGPU_TOKEN: "not-a-token" });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^remotegpu: unauthenticated: /);
    const missing = await cli(["cordon", "no-such-node"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /not_found: no host named "no-such-node"/);
    const down = await cli(["--url", "http://127.0.0.1:1", "hosts"]);
    assert.equal(down.code, 1);
    assert.match(down.stderr, /^remotegpu: unavailable: /);
    const noToken = await cli(["hosts"], { REMOTEGPU_TOKEN: "" });
    assert.equal(noToken.code, 2);
    assert.match(noToken.stderr, /a token is required/);
    const usage = await cli(["frobnicate"]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /unknown command "frobnicate"/);
    assert.equal((await cli(["hosts", "--tail", "3"])).code, 2);
  });

  it("--help, and bin/remotegpu runs the same CLI", async () => {
    const help = await ok(["--help"]);
    for (const c of ["hosts", "cordon HOST", "drain HOST", "usage WORKSPACE", "logs ENV_ID", "top"]) assert.ok(help.includes(c), c);
    const viaBin = await cli(["--json", "hosts"], {}, path.join(ROOT, "bin/remotegpu"), []);
    assert.equal(viaBin.code, 0, viaBin.stderr);
    assert.equal((JSON.parse(viaBin.stdout) as unknown[]).length, 2);
  });

  it("hosts: under the table, why a host cannot run environments; --json has it too", async () => {
    const hosts = server.client(HostService);
    const { host, agentToken } = await hosts.createHost({ name: "no-engine-node", address: "10.0.0.10" });
    const reason = "no container engine answers and process mode was not asked for";
    const bare = new FakeAgent(server, agentToken);
    try {
      await bare.hello(host!.id, [], { runtimeUnavailableReason: reason });
      const out = await ok(["hosts"]);
      const [tableText, note] = out.trimEnd().split(/\n(?=no-engine-node cannot)/);
      assert.equal(note, `no-engine-node cannot run environments: ${reason}`);
      const rows = table(tableText!, "NAME");
      assert.deepEqual(
        rows.map((r) => r.slice(0, 3)),
        [
          ["cli-node", "ONLINE", "yes"],
          ["idle-node", "OFFLINE", "yes"],
          ["no-engine-node", "ONLINE", "yes"],
        ],
      );
      const listed = JSON.parse(await ok(["--json", "hosts"])) as { name: string; runtimeUnavailableReason: string }[];
      assert.deepEqual(
        listed.map((h) => [h.name, h.runtimeUnavailableReason]),
        [
          ["cli-node", ""],
          ["idle-node", ""],
          ["no-engine-node", reason],
        ],
      );
    } finally {
      bare.close();
      await hosts.deleteHost({ id: host!.id });
    }
  });
});
