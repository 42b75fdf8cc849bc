// npm run bench:ssh [-- --mib 256]
// scp of one file up and down through RemoteGPU's SSH tunnel (the CLI as ProxyCommand, the control
// plane, the agent's SSH server, process mode) against scp to a local OpenSSH sshd on the same
// machine, in the same run: the ratio is what the tunnel costs. Needs /usr/sbin/sshd
// (apt-get install openssh-server) and root (sshd, the agent's confined uids).
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { createRemoteGpuClient, EnvironmentStatus } from "@remotegpu/sdk";
import {
  agentArgv,
  agentTempDir,
  freePort,
  publishablePorts,
  ROOT,
  serverEnv,
  simulatedAgentFlags,
  spawnServer,
} from "../../test/support/child.js";
import { createTestDatabase } from "../../test/support/database.js";

const { values } = parseArgs({ options: { mib: { type: "string", default: "256" } } });
const MiB = 1024 * 1024;
const ADMIN = "bench-admin-token-0123456789";
const CLI = path.join(ROOT, "bin/remotegpu");

function run(program: string, args: string[], env: Record<string, string> = {}): Promise<void> {
  const child = spawn(program, args, { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  return new Promise((resolve, reject) =>
    child.once("close", (code) => (code === 0 ? resolve() : reject(new Error(`${program} exited ${code}: ${stderr}`)))),
  );
}

async function until(what: string, ok: () => Promise<boolean>, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok().catch(() => false))) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const work = await mkdtemp(path.join(tmpdir(), "remotegpu-bench-ssh-"));
const key = path.join(work, "id");
await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key]);
const file = path.join(work, "payload.bin");
const payload = randomBytes(Number(values.mib) * MiB);
await writeFile(file, payload);
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

// The baseline: a local sshd on a port of its own, this key authorized, the same sftp-server.
const sshdPort = await freePort();
await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(work, "host_key")]);
await writeFile(path.join(work, "authorized_keys"), await readFile(`${key}.pub`));
await writeFile(
  path.join(work, "sshd_config"),
  [
    `Port ${sshdPort}`,
    "ListenAddress 127.0.0.1",
    `HostKey ${path.join(work, "host_key")}`,
    `AuthorizedKeysFile ${path.join(work, "authorized_keys")}`,
    "PidFile none",
    "UsePAM no",
    "StrictModes no",
    "PermitRootLogin prohibit-password",
    "Subsystem sftp /usr/lib/openssh/sftp-server",
  ].join("\n"),
);
await mkdir("/run/sshd", { recursive: true }); // sshd's privilege separation directory
const sshd = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", path.join(work, "sshd_config")], { stdio: "ignore" });

const db = await createTestDatabase();
const port = await freePort();
const first = await publishablePorts(4);
const dataDir = await agentTempDir("remotegpu-bench-ssh-agent-");
// Two replicas sharing Redis: the agent connects to the first; the relayed row reaches it through the second.
const replicaPort = await freePort();
const replicaEnv = (listen: number, dir: string) =>
  serverEnv({
    DATABASE_URL: db.url,
    PORT: String(listen),
    BIND_ADDRESS: "127.0.0.1",
    REMOTEGPU_ADMIN_TOKEN: ADMIN,
    DATA_DIR: path.join(work, dir),
    HEARTBEAT_INTERVAL_SECONDS: "1",
    HOST_PORT_RANGE: `${first}-${first + 3}`,
    REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_KEY_PREFIX: `remotegpu-bench-ssh-${process.pid}:`,
  });
const server = spawnServer(replicaEnv(port, "server"));
const replica = spawnServer(replicaEnv(replicaPort, "replica"));
let agent: ReturnType<typeof spawn> | undefined;
try {
  await server.listening(30_000);
  await replica.listening(30_000);
  const baseUrl = `http://127.0.0.1:${port}`;
  const client = createRemoteGpuClient({ baseUrl, token: ADMIN });
  const { host, agentToken } = await client.hosts.createHost({ name: "bench-ssh", address: "127.0.0.1" });
  agent = spawn(
    process.execPath,
    agentArgv(simulatedAgentFlags({ server: baseUrl, hostId: host!.id, token: agentToken, gpus: 1, dataDir })),
    {
      cwd: ROOT,
      stdio: "ignore",
    },
  );
  await until("the agent connected", async () => (await client.hosts.getHost({ id: host!.id })).host!.agentVersion !== "");
  const workspaceId = (await client.workspaces.createWorkspace({ name: "bench-ssh" })).workspace!.id;
  const { environment } = await client.environments.createEnvironment({
    workspaceId,
    name: "bench",
    image: "none",
    command: ["sleep", "3600"],
    sshPublicKeys: [(await readFile(`${key}.pub`, "utf8")).trim()],
  });
  await until(
    "the environment RUNNING",
    async () => (await client.environments.getEnvironment({ id: environment!.id })).environment!.status === EnvironmentStatus.RUNNING,
  );

  const common = [
    "-q",
    "-i",
    key,
    "-F",
    "/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
  ];
  const tunnel = [...common, "-o", `ProxyCommand=${CLI} --url ${baseUrl} ssh --stdio %h`];
  const relayed = [...common, "-o", `ProxyCommand=${CLI} --url http://127.0.0.1:${replicaPort} ssh --stdio %h`];
  const local = [...common, "-P", String(sshdPort)];
  const volume = path.join(dataDir, "environments", environment!.id, "volume");

  /** Seconds for scp up, then down; checks the copy came back whole. */
  async function time(options: string[], remote: string, remotePath: string): Promise<{ up: number; down: number }> {
    let t = performance.now();
    await run("scp", [...options, file, `${remote}:${remotePath}`], { REMOTEGPU_TOKEN: ADMIN });
    const up = (performance.now() - t) / 1000;
    t = performance.now();
    await run("scp", [...options, `${remote}:${remotePath}`, `${file}.back`], { REMOTEGPU_TOKEN: ADMIN });
    const down = (performance.now() - t) / 1000;
    if (sha(await readFile(`${file}.back`)) !== sha(payload)) throw new Error("the copy differs");
    await rm(`${file}.back`);
    return { up, down };
  }
  const e = (await client.environments.getEnvironment({ id: environment!.id })).environment!;
  if (e.status !== EnvironmentStatus.RUNNING) throw new Error(`the environment is ${EnvironmentStatus[e.status]}: ${e.statusMessage}`);
  const mib = Number(values.mib);
  const rate = (s: number) => mib / s;
  const rows: string[] = [];
  // Twice each, alternating, the better of the two kept: the machine is shared.
  const best = {
    tunnel: { up: Infinity, down: Infinity },
    relayed: { up: Infinity, down: Infinity },
    sshd: { up: Infinity, down: Infinity },
  };
  for (let round = 0; round < 2; round++) {
    const viaTunnel = await time(tunnel, `user@${environment!.id}`, "payload.bin");
    const viaReplica = await time(relayed, `user@${environment!.id}`, "payload.bin");
    const viaSshd = await time(local, "root@127.0.0.1", path.join(work, "copied.bin"));
    for (const [k, v] of [
      ["tunnel", viaTunnel],
      ["relayed", viaReplica],
      ["sshd", viaSshd],
    ] as const) {
      best[k].up = Math.min(best[k].up, v.up);
      best[k].down = Math.min(best[k].down, v.down);
    }
  }
  if (sha(await readFile(path.join(volume, "payload.bin"))) !== sha(payload)) throw new Error("the file in the volume differs");
  rows.push("| path | up MiB/s | down MiB/s |", "| --- | --- | --- |");
  rows.push(`| local sshd (baseline) | ${rate(best.sshd.up).toFixed(0)} | ${rate(best.sshd.down).toFixed(0)} |`);
  rows.push(`| RemoteGPU tunnel | ${rate(best.tunnel.up).toFixed(0)} | ${rate(best.tunnel.down).toFixed(0)} |`);
  rows.push(`| ratio tunnel / sshd | ${(best.sshd.up / best.tunnel.up).toFixed(2)} | ${(best.sshd.down / best.tunnel.down).toFixed(2)} |`);
  rows.push(
    `| tunnel through a second replica (Redis relay) | ${rate(best.relayed.up).toFixed(0)} | ${rate(best.relayed.down).toFixed(0)} |`,
  );
  rows.push(
    `| ratio relayed / sshd | ${(best.sshd.up / best.relayed.up).toFixed(2)} | ${(best.sshd.down / best.relayed.down).toFixed(2)} |`,
  );
  console.log(`scp of ${mib} MiB, the better of two runs each, both ways (times include connecting)\n`);
  console.log(rows.join("\n"));
} catch (err) {
  console.error(`server log:\n${server.stdout().slice(-3000)}\n${server.stderr().slice(-2000)}`);
  throw err;
} finally {
  agent?.kill("SIGKILL");
  sshd.kill();
  await server.kill();
  await replica.kill();
  await db.drop();
  await rm(work, { recursive: true, force: true });
  await rm(dataDir, { recursive: true, force: true });
}
