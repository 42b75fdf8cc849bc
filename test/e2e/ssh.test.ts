import { strict as assert } from "node:assert";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Redis } from "ioredis";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { agentArgv, agentTempDir, freePort, publishablePorts, ROOT, simulatedAgentFlags } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { preparePodman, TEST_IMAGE } from "../support/podman.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { sizesAcrossWindowChange } from "../support/ssh-window.js";

// SSH into an environment with Debian's OpenSSH client, through the control plane: the CLI's
// `ssh --stdio` as ProxyCommand, the agent serving SSH for an environment it runs as processes.
const CLI = path.join(ROOT, "bin/remotegpu");
const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program to its end, with `input` on its stdin; `null` holds stdin open until the program
 * exits, for script(1), which passes an EOF on its stdin into the terminal as a character.
 */
function run(program: string, args: string[], env: Record<string, string>, input: string | null = ""): Promise<Run> {
  const child = spawn(program, args, { env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  // A program that does not read its input (ssh-keygen) may be gone before it is written: EPIPE.
  child.stdin.on("error", () => undefined);
  if (input === null) child.once("exit", () => child.stdin.end());
  else child.stdin.end(input);
  return new Promise((resolve) => child.once("close", (code) => resolve({ code, stdout, stderr })));
}

describe("e2e: SSH into an environment through the control plane, with OpenSSH", function () {
  this.timeout(180_000);
  let server: TestServer;
  let agent: ChildProcess | undefined;
  let containerAgent: ChildProcess | undefined;
  let agentErr = "";
  let dataDir: string;
  let keys: string;
  let env: { id: string; port: number };
  let workspaceId: string;
  let tokens: { member: string; member2: string; viewer: string; stranger: string };
  /** Both replicas share the database and Redis: commands and tunnels reach the agent from either. */
  const cluster = { REDIS_URL, REDIS_KEY_PREFIX: `remotegpu-ssh-${randomBytes(4).toString("hex")}:` };
  let replica: TestServer | undefined;

  /** ssh's options: this test's key, no config or known hosts of the user, the CLI as ProxyCommand. */
  const sshOptions = (key: string, url = server.baseUrl) => [
    "-F",
    "/dev/null",
    "-i",
    key,
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    `ProxyCommand=${CLI} --url ${url} ssh --stdio %h`,
  ];
  const ssh = (args: string[], o: { token?: string; key?: string; input?: string; url?: string } = {}) =>
    run("ssh", [...sshOptions(o.key ?? path.join(keys, "id"), o.url), ...args], { REMOTEGPU_TOKEN: o.token ?? tokens.member }, o.input);

  before(async () => {
    keys = await mkdtemp(path.join(tmpdir(), "remotegpu-ssh-keys-"));
    for (const name of ["id", "other"]) {
      const made = await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `${name}@test`, "-f", path.join(keys, name)], {});
      assert.equal(made.code, 0, made.stderr);
    }
    dataDir = await agentTempDir("remotegpu-ssh-agent-");
    const first = await publishablePorts(10);
    server = await startTestServer({
      clock: systemClock,
      env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5", HOST_PORT_RANGE: `${first}-${first + 9}`, ...cluster },
    });
    const { host, agentToken } = await server.client(HostService).createHost({ name: "ssh-box", address: "127.0.0.1" });
    agent = spawn(
      process.execPath,
      agentArgv(simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 2, dataDir })),
      {
        cwd: ROOT,
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    agent.stderr!.setEncoding("utf8").on("data", (c: string) => (agentErr += c));
    await eventually("the agent's GPUs", async () => (await server.client(GpuService).listGpus({ hostId: host!.id })).gpus.length === 2);

    const workspaces = server.client(WorkspaceService);
    workspaceId = (await workspaces.createWorkspace({ name: "ssh-team" })).workspace!.id;
    const other = (await workspaces.createWorkspace({ name: "ssh-strangers" })).workspace!.id;
    const token = async (ws: string, role: ApiTokenRole, name: string) =>
      (await workspaces.createApiToken({ workspaceId: ws, name, role })).secret;
    tokens = {
      member: await token(workspaceId, ApiTokenRole.MEMBER, "alice"),
      member2: await token(workspaceId, ApiTokenRole.MEMBER, "carol"),
      viewer: await token(workspaceId, ApiTokenRole.VIEWER, "bob"),
      stranger: await token(other, ApiTokenRole.ADMIN, "mallory"),
    };
    const port = await freePort();
    const publicKey = (await readFile(path.join(keys, "id.pub"), "utf8")).trim();
    const envs = server.client(EnvironmentService, { token: tokens.member });
    const created = (
      await envs.createEnvironment({
        workspaceId,
        name: "devbox",
        image: "python:3.12",
        command: ["python3", "-m", "http.server", String(port), "--bind", "127.0.0.1"],
        gpuCount: 1,
        ports: [{ name: "web", containerPort: port }],
        sshPublicKeys: [publicKey],
      })
    ).environment!;
    env = { id: created.id, port };
    await eventually(
      `RUNNING\n${agentErr.slice(-2000)}`,
      async () => (await envs.getEnvironment({ id: env.id })).environment!.status === EnvironmentStatus.RUNNING,
    );
  });

  after(async () => {
    agent?.kill("SIGKILL");
    containerAgent?.kill("SIGKILL");
    // A killed agent leaves its workload running, for the next agent to adopt: the last test kills it.
    if (env) await run("pkill", ["-f", `http.server ${env.port} `], {});
    await replica?.close();
    await server?.close();
    const redis = new Redis(REDIS_URL);
    await redis.del(`${cluster.REDIS_KEY_PREFIX}latest`);
    redis.disconnect();
    await rm(dataDir, { recursive: true, force: true });
    await rm(keys, { recursive: true, force: true });
  });

  it("runs a command in the environment and returns its output and exit code", async () => {
    const r = await ssh(["user@devbox", 'echo "in $PWD with $CUDA_VISIBLE_DEVICES"; echo oops >&2; exit 7']);
    assert.equal(r.code, 7, r.stderr);
    assert.match(r.stdout, new RegExp(`^in ${dataDir}/environments/${env.id}/volume with GPU-`));
    assert.match(r.stderr, /oops/);
  });

  it("runs a session confined as the environment's workload is: its uid, its limits, its cgroup", async () => {
    const session = await ssh(["user@devbox", "id -u; whoami; ulimit -u; cat /proc/self/cgroup"]);
    assert.equal(session.code, 0, session.stderr);
    const [uid, name, nproc, ...cgroup] = session.stdout.trim().split("\n");
    assert.notEqual(uid, "0");
    assert.equal(name, `rgpu-${uid}`);
    assert.equal(nproc, "4096", "the workload's process limit");
    // The workload's own process (the HTTP server) and the session share their cgroups.
    const pid = (await run("pgrep", ["-f", `http.server ${env.port}`], {})).stdout.trim().split("\n")[0]!;
    assert.deepEqual(cgroup, (await readFile(`/proc/${pid}/cgroup`, "utf8")).trim().split("\n"));
  });

  it("gives a pty session the client's TERM and window size", async () => {
    // script(1) gives ssh a terminal of 40 rows and 120 columns, as a user's would be.
    const inner = `stty rows 40 cols 120; ssh ${sshOptions(path.join(keys, "id"))
      .map((a) => `'${a}'`)
      .join(" ")} -tt user@devbox 'echo "term=$TERM"; stty size'`;
    const r = await run("script", ["-qec", inner, "/dev/null"], { REMOTEGPU_TOKEN: tokens.member, TERM: "xterm-test" }, null);
    assert.match(r.stdout, /term=xterm-test/, r.stdout + r.stderr);
    assert.match(r.stdout, /^40 120\r?$/m, r.stdout);
  });

  it("changes a pty's size when the client's window changes", async () => {
    const key = await readFile(path.join(keys, "id"), "utf8");
    assert.deepEqual(await sizesAcrossWindowChange(CLI, server.baseUrl, "devbox", tokens.member, key), ["24 80", "50 132"]);
  });

  it("copies a 64 MiB file up and down with scp, unchanged", async () => {
    const local = path.join(keys, "big.bin");
    const data = randomBytes(64 << 20);
    await writeFile(local, data);
    const scp = (from: string, to: string) =>
      run("scp", [...sshOptions(path.join(keys, "id")), "-q", from, to], { REMOTEGPU_TOKEN: tokens.member });
    const up = await scp(local, "user@devbox:big.bin");
    assert.equal(up.code, 0, up.stderr);
    const down = await scp("user@devbox:big.bin", `${local}.back`);
    assert.equal(down.code, 0, down.stderr);
    const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    assert.equal(sha(await readFile(`${local}.back`)), sha(data));
    const there = await readFile(path.join(dataDir, "environments", env.id, "volume", "big.bin"));
    assert.equal(sha(there), sha(data), "the file landed in the environment's volume");
  });

  it("forwards a local port to the environment's HTTP server (ssh -L), and no other port", async () => {
    const local = await freePort();
    const forward = spawn("ssh", [...sshOptions(path.join(keys, "id")), "-N", "-L", `${local}:127.0.0.1:${env.port}`, "user@devbox"], {
      env: { ...process.env, REMOTEGPU_TOKEN: tokens.member },
    });
    try {
      const res = await eventually("the forwarded port answers", async () => {
        const r = await fetch(`http://127.0.0.1:${local}/`).catch(() => undefined);
        return r?.status === 200 && r;
      });
      assert.match(await res.text(), /Directory listing/);
    } finally {
      forward.kill();
    }
    // A port the environment did not declare (here: the control plane's own) is not forwarded.
    const denied = await ssh(["-W", `127.0.0.1:${server.port}`, "user@devbox"]);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /open failed|administratively prohibited|stdio forwarding failed/);
  });

  it("refuses a key the environment does not have, a viewer, and a token of another workspace before any key", async () => {
    const wrongKey = await ssh(["user@devbox", "true"], { key: path.join(keys, "other") });
    assert.equal(wrongKey.code, 255);
    assert.match(wrongKey.stderr, /Permission denied \(publickey\)/);

    const viewer = await ssh(["user@devbox", "true"], { token: tokens.viewer });
    assert.equal(viewer.code, 255);
    assert.match(viewer.stderr, /remotegpu: permission_denied:/);

    const stranger = await ssh([`user@${env.id}`, "true"], { token: tokens.stranger });
    assert.equal(stranger.code, 255);
    assert.match(stranger.stderr, /remotegpu: not_found: environment/);
    assert.doesNotMatch(stranger.stderr, /Permission denied \(publickey\)/, "no key was tried");
    // The tunnel itself, not only the CLI's lookup, refuses another workspace's token.
    const direct = server.client(EnvironmentService, { token: tokens.stranger }).openSshTunnel(
      (async function* () {
        yield { environmentId: env.id, data: new Uint8Array(0) };
      })(),
    );
    await assert.rejects(async () => {
      for await (const _ of direct);
    }, /not found/);
  });

  it("refuses the next connection after its key is removed, and takes a key added to a running environment", async () => {
    const envs = server.client(EnvironmentService, { token: tokens.member });
    const other = (await readFile(path.join(keys, "other.pub"), "utf8")).trim();
    await envs.addSshKey({ environmentId: env.id, sshPublicKey: other });
    const withOther = await ssh(["user@devbox", "echo added"], { key: path.join(keys, "other") });
    assert.equal(withOther.code, 0, withOther.stderr);
    await envs.removeSshKey({ environmentId: env.id, sshPublicKey: other.replace(/other@test$/, "another comment") });
    const removed = await ssh(["user@devbox", "true"], { key: path.join(keys, "other") });
    assert.equal(removed.code, 255);
    assert.match(removed.stderr, /Permission denied \(publickey\)/);
  });

  it("prints an ssh-config with which `ssh rgpu.NAME` works unchanged", async () => {
    const printed = await run(CLI, ["--url", server.baseUrl, "ssh-config"], { REMOTEGPU_TOKEN: tokens.member });
    assert.equal(printed.code, 0, printed.stderr);
    assert.match(printed.stdout, /^Host rgpu\.devbox$/m);
    const config = path.join(keys, "config");
    await writeFile(
      config,
      `${printed.stdout}\nHost *\n  IdentityFile ${path.join(keys, "id")}\n  IdentitiesOnly yes\n  BatchMode yes\n  LogLevel ERROR\n`,
    );
    const r = await run(
      "ssh",
      ["-F", config, "-o", `UserKnownHostsFile=${path.join(keys, "known_hosts")}`, "rgpu.devbox", "echo via-config"],
      {
        REMOTEGPU_TOKEN: tokens.member,
      },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "via-config");
    assert.match(
      await readFile(path.join(keys, "known_hosts"), "utf8"),
      /^rgpu\.host-[0-9a-f-]{36} ssh-ed25519 /m,
      "the host key is kept under its host's alias",
    );
  });

  it("ends a session's programs when the SSH client is killed", async () => {
    const client = spawn("ssh", [...sshOptions(path.join(keys, "id")), "user@devbox", "sleep 62"], {
      env: { ...process.env, REMOTEGPU_TOKEN: tokens.member },
    });
    const running = async () => (await run("pgrep", ["-f", "^sleep 62$"], {})).code === 0;
    await eventually("the session's program", running);
    client.kill("SIGKILL");
    await eventually("the program ended", async () => !(await running()));
  });

  it("serves 20 connections to one environment at once", async () => {
    const runs = await Promise.all(Array.from({ length: 20 }, (_, i) => ssh(["user@devbox", `echo session-${i}`])));
    for (const [i, r] of runs.entries()) assert.equal(r.stdout.trim(), `session-${i}`, r.stderr);
  });

  it("records each connection in the audit trail: who, which key, how long, how many bytes", async () => {
    const { events } = await server.client(WorkspaceService).listAuditEvents({ workspaceId, pageSize: 1000 });
    // A refusal before the handler names no environment; the handler's own events do.
    const ssh = events.filter((e) => e.method.endsWith("/OpenSshTunnel"));
    const closed = ssh.filter((e) => e.targetId === env.id && e.detail.startsWith("closed after"));
    const fingerprint = (await run("ssh-keygen", ["-l", "-f", path.join(keys, "id.pub")], {})).stdout.split(" ")[1]!;
    assert.ok(
      closed.some((e) => e.detail.includes(`key ${fingerprint}`) && /\d{8,} bytes in/.test(e.detail)),
      "the scp upload's connection",
    );
    assert.ok(
      ssh.some((e) => e.code === "permission_denied"),
      "the viewer's refusal",
    );
    assert.ok(
      closed.some((e) => e.detail.includes("no key accepted")),
      "the wrong key's connection",
    );
  });

  it("reaches the environment through a replica that does not hold its agent's stream", async () => {
    replica = await startTestServer({
      db: server.db,
      clock: systemClock,
      env: { ...cluster, SSH_MAX_CONNECTIONS_PER_ENVIRONMENT: "3", SSH_MAX_CONNECTIONS_PER_TOKEN: "2" },
    });
    const url = replica.baseUrl;
    const exec = await ssh(["user@devbox", "echo relayed; exit 5"], { url });
    assert.equal(exec.code, 5, exec.stderr);
    assert.equal(exec.stdout.trim(), "relayed");

    // 16 MiB each way: many times the relay's window of unread chunks.
    const local = path.join(keys, "relayed.bin");
    const data = randomBytes(16 << 20);
    await writeFile(local, data);
    const scp = (from: string, to: string) =>
      run("scp", [...sshOptions(path.join(keys, "id"), url), "-q", from, to], { REMOTEGPU_TOKEN: tokens.member });
    const up = await scp(local, "user@devbox:relayed.bin");
    assert.equal(up.code, 0, up.stderr);
    const down = await scp("user@devbox:relayed.bin", `${local}.back`);
    assert.equal(down.code, 0, down.stderr);
    assert.ok(data.equals(await readFile(`${local}.back`)), "the file came back unchanged");
  });

  it("limits connections per token and per environment, and a replica shutting down ends its tunnels with unavailable", async () => {
    assert.ok(replica, "the replica of the test before");
    const url = replica.baseUrl;
    const sleeping = [ssh(["user@devbox", "sleep 60"], { url }), ssh(["user@devbox", "sleep 60"], { url })];
    await new Promise((r) => setTimeout(r, 2000));
    const tokenFull = await ssh(["user@devbox", "true"], { url });
    assert.equal(tokenFull.code, 255);
    assert.match(tokenFull.stderr, /resource_exhausted: this token has 2 SSH connections open/);
    sleeping.push(ssh(["user@devbox", "sleep 60"], { url, token: tokens.member2 }));
    await new Promise((r) => setTimeout(r, 2000));
    const environmentFull = await ssh(["user@devbox", "true"], { url, token: tokens.member2 });
    assert.equal(environmentFull.code, 255);
    assert.match(environmentFull.stderr, /resource_exhausted: environment \S+ has 3 SSH connections open/);
    // The limits hold per replica: the first one still lets this token in.
    assert.equal((await ssh(["user@devbox", "true"])).code, 0);

    const closing = Date.now();
    await replica.close();
    replica = undefined;
    for (const ended of await Promise.all(sleeping)) {
      assert.equal(ended.code, 255);
      assert.match(ended.stderr, /remotegpu: unavailable: the server is shutting down/);
    }
    assert.ok(Date.now() - closing < 20_000, "the sessions ended with the replica");
  });

  it("does the same in a podman container: exec, a pty, scp, and ssh -L to a port of the container", async () => {
    await preparePodman();
    const hosts = server.client(HostService);
    const { host, agentToken } = await hosts.createHost({ name: "ssh-containers", address: "127.0.0.1" });
    const containerDir = await agentTempDir("remotegpu-ssh-podman-");
    // Without --process-mode the agent runs podman; the process-mode host is cordoned meanwhile.
    const flags = simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 0, dataDir: containerDir });
    containerAgent = spawn(process.execPath, agentArgv(flags.filter((f) => f !== "--process-mode")), {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
    containerAgent.stderr!.setEncoding("utf8").on("data", (c: string) => (agentErr += c));
    await eventually("the container agent", async () => (await hosts.getHost({ id: host!.id })).host!.agentVersion !== "");
    const processHost = (await hosts.listHosts({})).hosts.find((h) => h.name === "ssh-box")!.id;
    const envs = server.client(EnvironmentService, { token: tokens.member });
    // Both "hosts" are this machine: devbox's host port would be the container's too. Stopping it
    // ends its open SSH sessions.
    const open = ssh(["user@devbox", "sleep 60"]);
    await new Promise((r) => setTimeout(r, 3000));
    const stopped = Date.now();
    await envs.stopEnvironment({ id: env.id });
    const ended = await open;
    assert.notEqual(ended.code, 0);
    assert.ok(Date.now() - stopped < 20_000, "the session ended with its environment");
    await eventually(
      "devbox stopped",
      async () => (await envs.getEnvironment({ id: env.id })).environment!.status === EnvironmentStatus.STOPPED,
    );
    await hosts.cordonHost({ id: processHost });
    const publicKey = (await readFile(path.join(keys, "id.pub"), "utf8")).trim();
    const boxed = await envs
      .createEnvironment({
        workspaceId,
        name: "boxed",
        image: TEST_IMAGE,
        command: ["python3", "-m", "http.server", "8000"],
        ports: [{ name: "web", containerPort: 8000 }],
        sshPublicKeys: [publicKey],
      })
      .finally(() => hosts.uncordonHost({ id: processHost }));
    const id = boxed.environment!.id;
    try {
      let seen = "";
      await eventually("RUNNING", async () => {
        const e = (await envs.getEnvironment({ id })).environment!;
        seen = `${EnvironmentStatus[e.status]}: ${e.statusMessage}`;
        return e.status === EnvironmentStatus.RUNNING;
      }).catch((err: Error) => {
        throw new Error(`${err.message}; it is ${seen}\n${agentErr.slice(-2000)}`);
      });

      const exec = await ssh(["user@boxed", 'echo "in $(pwd)"; exit 3']);
      assert.equal(exec.code, 3, exec.stderr);
      assert.equal(exec.stdout.trim(), "in /workspace");

      const inner = `stty rows 33 cols 101; ssh ${sshOptions(path.join(keys, "id"))
        .map((a) => `'${a}'`)
        .join(" ")} -tt user@boxed 'echo "term=$TERM"; python3 -c "import os; print(os.get_terminal_size())"'`;
      const pty = await run("script", ["-qec", inner, "/dev/null"], { REMOTEGPU_TOKEN: tokens.member, TERM: "xterm-boxed" }, null);
      assert.match(pty.stdout, /term=xterm-boxed/, pty.stdout + pty.stderr);
      assert.match(pty.stdout, /columns=101, lines=33/, pty.stdout);

      const local = path.join(keys, "boxed.bin");
      const data = randomBytes(4 << 20);
      await writeFile(local, data);
      const scp = (from: string, to: string) =>
        run("scp", [...sshOptions(path.join(keys, "id")), "-q", from, to], { REMOTEGPU_TOKEN: tokens.member });
      const up = await scp(local, "user@boxed:/workspace/boxed.bin");
      assert.equal(up.code, 0, up.stderr);
      const down = await scp("user@boxed:/workspace/boxed.bin", `${local}.back`);
      assert.equal(down.code, 0, down.stderr);
      assert.ok(data.equals(await readFile(`${local}.back`)));

      const port = await freePort();
      const forward = spawn("ssh", [...sshOptions(path.join(keys, "id")), "-N", "-L", `${port}:127.0.0.1:8000`, "user@boxed"], {
        env: { ...process.env, REMOTEGPU_TOKEN: tokens.member },
      });
      try {
        const res = await eventually("the container's port through ssh -L", async () => {
          const r = await fetch(`http://127.0.0.1:${port}/`).catch(() => undefined);
          return r?.status === 200 && r;
        });
        assert.match(await res.text(), /boxed\.bin/);
      } finally {
        forward.kill();
      }
    } finally {
      await envs.deleteEnvironment({ id });
      await eventually("the container removed", async () => (await envs.getEnvironment({ id }).catch(() => undefined)) === undefined);
      containerAgent.kill("SIGTERM");
      await rm(containerDir, { recursive: true, force: true });
    }
  });

  it("ends a session whose agent goes away, saying so", async () => {
    const envs = server.client(EnvironmentService, { token: tokens.member });
    await envs.startEnvironment({ id: env.id });
    await eventually(
      "devbox RUNNING again",
      async () => (await envs.getEnvironment({ id: env.id })).environment!.status === EnvironmentStatus.RUNNING,
    );
    const open = ssh(["user@devbox", "sleep 60"]);
    await eventually("the session", async () => (await run("pgrep", ["-f", "^sleep 60$"], {})).code === 0);
    agent!.kill("SIGKILL");
    const ended = await open;
    assert.equal(ended.code, 255);
    assert.match(ended.stderr, /remotegpu: unavailable: the agent of host \S+ went away; the SSH connection is lost/);
  });
});
