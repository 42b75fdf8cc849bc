import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { timestampFromDate, durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { createApp, type App } from "../../src/app.js";
import { loadConfig } from "../../src/config.js";
import { createLogger } from "../../src/platform/logger.js";
import { ROOT, agentArgv, agentTempDir, freePort } from "../support/child.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { ADMIN_TOKEN } from "../support/server.js";
import { eventually } from "../support/eventually.js";

function runAgent(args: string[], env?: NodeJS.ProcessEnv): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, agentArgv(args), { cwd: ROOT, env, stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (err += c));
  return { child, stderr: () => err, exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))) };
}

describe("e2e: the node agent", function () {
  this.timeout(60_000);
  let db: TestDatabase;
  let port: number;
  let app: App | undefined;
  const agents: ChildProcess[] = [];

  const start = async () => {
    const config = loadConfig({
      DATABASE_URL: db.url,
      PORT: String(port),
      BIND_ADDRESS: "127.0.0.1",
      REMOTEGPU_ADMIN_TOKEN: ADMIN_TOKEN,
      HEARTBEAT_INTERVAL_SECONDS: "1",
      HOST_GRACE_SECONDS: "5",
      TELEMETRY_RESOLUTION_SECONDS: "1",
      SHUTDOWN_TIMEOUT_SECONDS: "1",
    });
    app = await createApp(config, { logger: createLogger("silent") });
    await app.listen();
  };
  const transport = () =>
    createConnectTransport({
      baseUrl: `http://127.0.0.1:${port}`,
      httpVersion: "1.1",
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${ADMIN_TOKEN}`);
          return next(req);
        },
      ],
    });

  before(async () => {
    db = await createTestDatabase();
    port = await freePort();
    await start();
  });
  after(async () => {
    for (const a of agents) a.kill("SIGKILL");
    await app?.close();
    await db.drop();
  });

  it("reports simulated GPUs, reconnects after a server restart with the readings it buffered, and stops on SIGTERM", async () => {
    const hosts = createClient(HostService, transport());
    const gpus = createClient(GpuService, transport());
    const { host, agentToken } = await hosts.createHost({ name: "agent-e2e", address: "127.0.0.1" });
    // The documented way: the token in a file of mode 0600, never on the command line.
    const dir = await mkdtemp(path.join(tmpdir(), "rgpu-agent-token-"));
    const tokenFile = path.join(dir, "token");
    await writeFile(tokenFile, `${agentToken}\n`, { mode: 0o600 });
    const agent = runAgent([
      "--server",
      `http://127.0.0.1:${port}`,
      "--host-id",
      host!.id,
      "--token-file",
      tokenFile,
      "--simulate-gpus",
      "4",
    ]);
    agents.push(agent.child);

    const first = await eventually("4 GPUs reporting", async () => {
      const list = await gpus.listGpus({ hostId: host!.id });
      return list.gpus.length === 4 && list.gpus.every((g) => g.latestSample) ? list.gpus : undefined;
    });
    assert.equal((await hosts.getHost({ id: host!.id })).host?.status, HostStatus.ONLINE);
    assert.match(first[0]!.model, /H100/);

    // The control plane goes away for a while; the agent keeps reading and buffers.
    await app!.close();
    const downFrom = new Date();
    await new Promise((r) => setTimeout(r, 3000));
    const downTo = new Date();
    await start();

    await eventually("samples on the restarted server", async () =>
      (await gpus.getGpu({ id: first[0]!.id })).gpu?.latestSample ? true : undefined,
    );
    // Readings taken while the server was down arrive with their own time and land in history.
    const buckets = await eventually("history covering the outage", async () => {
      await app!.maintain();
      const res = await gpus.getGpuTelemetry({
        gpuId: first[0]!.id,
        startTime: timestampFromDate(downFrom),
        endTime: timestampFromDate(downTo),
        step: durationFromMs(1000),
      });
      return res.buckets.length >= 2 ? res.buckets : undefined;
    });
    assert.ok(buckets.every((b) => b.sampleCount >= 1n));

    agent.child.kill("SIGTERM");
    assert.equal(await agent.exited, 0, agent.stderr());
    assert.doesNotMatch(agent.stderr(), /warning/, "no warning for a token file of mode 0600");
  });

  it("exits with a clear message when the server refuses its token", async () => {
    const agent = runAgent([
      "--server",
      `http://127.0.0.1:${port}`,
      "--host-id",
      "00000000-0000-4000-8000-000000000000",
      "--token",
      "not-a-token",
      "--simulate-gpus",
      "1",
    ]);
    agents.push(agent.child);
    assert.equal(await agent.exited, 1);
    assert.match(agent.stderr(), /refused this agent: .*invalid token/);
    assert.match(agent.stderr(), /warning: --token shows the token to every local user/);
  });

  it("with no container engine and no --process-mode, runs no environments and says why in its hello", async () => {
    const hosts = createClient(HostService, transport());
    const { host, agentToken } = await hosts.createHost({ name: "agent-no-engine", address: "127.0.0.1" });
    // A PATH without docker or podman; the token from the environment, as the systemd unit passes it.
    const bin = await mkdtemp(path.join(tmpdir(), "rgpu-path-"));
    await symlink(process.execPath, path.join(bin, "node"));
    const env = { PATH: bin, REMOTEGPU_AGENT_TOKEN: agentToken };
    const agent = runAgent(["--server", `http://127.0.0.1:${port}`, "--host-id", host!.id, "--simulate-gpus", "1"], env);
    agents.push(agent.child);
    const seen = await eventually("the reason on the host", async () => {
      const h = (await hosts.getHost({ id: host!.id })).host!;
      return h.status === HostStatus.ONLINE && h.runtimeUnavailableReason !== "" && h;
    });
    assert.match(seen.runtimeUnavailableReason, /no container engine \(docker or podman\).*--process-mode/);
    assert.doesNotMatch(agent.stderr(), /warning: --token/);
    agent.child.kill("SIGTERM");
    assert.equal(await agent.exited, 0, agent.stderr());
  });

  it("refuses bad flags, naming each", async () => {
    const agent = runAgent(["--server", "ftp://x", "--simulate-gpus=-1"]);
    agents.push(agent.child);
    assert.equal(await agent.exited, 2);
    for (const flag of ["--server", "--host-id", "--token", "--simulate-gpus"]) assert.match(agent.stderr(), new RegExp(`agent: ${flag}`));
  });

  it("reads GPUs through one nvidia-smi kept in loop mode, and stops the loop a SIGKILLed agent left", async function () {
    if (process.platform !== "linux") this.skip();
    const hosts = createClient(HostService, transport());
    const gpus = createClient(GpuService, transport());
    const { host, agentToken } = await hosts.createHost({ name: "agent-nvidia-smi", address: "127.0.0.1" });
    // A stand-in nvidia-smi first in PATH: two GPUs; in loop mode, utilisation = the period's number.
    // Like the real one may (a report says SIGPIPE does not end it), it outlives a closed stdout.
    const bin = await mkdtemp(path.join(tmpdir(), "rgpu-nvidia-smi-"));
    const log = path.join(bin, "calls.log");
    const row = (i: number, util: string) =>
      `printf '%s\\n' "${i}, GPU-e2e0000${i}-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 590.48.01, 81559, 1024, ${util}, 5, 40, 120.5, 700.00, 1980, [N/A], 0, 0, Disabled"`;
    await writeFile(
      path.join(bin, "nvidia-smi"),
      [
        "#!/bin/sh",
        `echo "start $$ $*" >> '${log}'`,
        'case "$*" in',
        `  *--loop-ms=*) trap '' PIPE; n=0; while [ $n -lt 300 ]; do n=$((n+1)); ${row(0, "$n")}; ${row(1, "$n")}; sleep 1; done ;;`,
        `  *--query-gpu=*) ${row(0, "0")}; ${row(1, "0")} ;;`,
        `  *) echo '| NVIDIA-SMI 590.48.01    Driver Version: 590.48.01    CUDA Version: 13.1 |' ;;`,
        "esac",
      ].join("\n"),
      { mode: 0o755 },
    );
    const calls = () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []);
    const loops = () => calls().filter((l) => l.includes("--loop-ms="));
    const oneShots = () => calls().filter((l) => l.includes("--query-gpu=") && !l.includes("--loop-ms="));
    const running = (pid: number) => existsSync(`/proc/${pid}`) && !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH}` };
    const dataDir = await agentTempDir("rgpu-agent-nvidia-smi-");
    const flags = [
      "--server",
      `http://127.0.0.1:${port}`,
      "--host-id",
      host!.id,
      "--token",
      agentToken,
      "--process-mode",
      "--data-dir",
      dataDir,
    ];
    const utilisation = async () => {
      const list = await gpus.listGpus({ hostId: host!.id });
      return list.gpus.map((g) => g.latestSample?.metrics?.gpuUtilizationPercent ?? 0);
    };

    const first = runAgent(flags, env);
    agents.push(first.child);
    await eventually("readings from the loop", async () => {
      const u = await utilisation();
      return u.length === 2 && u.every((v) => v >= 2);
    });
    // One-shot calls until the server's period was asked for twice, then one loop at that period.
    assert.equal(loops().length, 1);
    const period = Number(/--loop-ms=(\d+)/.exec(loops()[0]!)![1]);
    assert.ok(period >= 900 && period <= 1100, `the server's 1 s (with its jitter): ${period}`);
    const calledOnce = oneShots().length;
    const seen = Math.min(...(await utilisation()));
    await eventually("newer readings", async () => Math.min(...(await utilisation())) > seen + 1);
    assert.equal(oneShots().length, calledOnce, "no nvidia-smi started per reading");

    // Killed, the agent cannot stop its loop: the next one on the same data directory does.
    const leftover = Number(loops()[0]!.split(" ")[1]);
    first.child.kill("SIGKILL");
    await first.exited;
    assert.ok(running(leftover), "the loop outlives the agent");
    const second = runAgent(flags, env);
    agents.push(second.child);
    await eventually("the leftover loop stopped", () => !running(leftover));
    await eventually("the second agent's loop", () => loops().length === 2);
    const own = Number(loops()[1]!.split(" ")[1]);
    second.child.kill("SIGTERM");
    assert.equal(await second.exited, 0, second.stderr());
    await eventually("its loop stopped with it", () => !running(own));
    assert.doesNotMatch(second.stderr(), /nvidia-smi output/, "no warning about nvidia-smi's output");
  });
});
