import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { EnvironmentService, EnvironmentStatus } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostRuntime, HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { freePort, ROOT } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { startKubeApiServer, type KubeApiTestServer } from "../support/kube-api-server.js";
import { deniedByRbac } from "../support/rbac.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { sizesAcrossWindowChange } from "../support/ssh-window.js";
import { WorkloadAgent } from "../support/workload-agent.js";

// SSH into a Kubernetes environment with Debian's OpenSSH client: the control plane serves SSH
// itself and runs each session as an exec into the pod, and ssh -L as a port-forward, through the
// unmodified client-node against the Kubernetes API test server (whose "pod" is this machine).
const CLI = path.join(ROOT, "bin/remotegpu");

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(program: string, args: string[], env: Record<string, string>): Promise<Run> {
  const child = spawn(program, args, { env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  child.stdin.end();
  return new Promise((resolve) => child.once("close", (code) => resolve({ code, stdout, stderr })));
}

describe("e2e: SSH into a Kubernetes environment, through the Kubernetes API's exec and port-forward", function () {
  this.timeout(120_000);
  let kube: KubeApiTestServer;
  let server: TestServer;
  let replica: TestServer | undefined;
  let agent: WorkloadAgent;
  let keys: string;
  let token: string;
  let env: { id: string; namespace: string; pod: string };
  let web: http.Server;

  const sshOptions = (o: { key?: string; url?: string; knownHosts?: string; checking?: string } = {}) => [
    "-F",
    "/dev/null",
    "-i",
    o.key ?? path.join(keys, "id"),
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    `StrictHostKeyChecking=${o.knownHosts ? (o.checking ?? "yes") : "no"}`,
    "-o",
    `UserKnownHostsFile=${o.knownHosts ?? "/dev/null"}`,
    "-o",
    "LogLevel=ERROR",
    "-o",
    `ProxyCommand=${CLI} --url ${o.url ?? server.baseUrl} ssh --stdio %h`,
  ];
  const ssh = (args: string[], o: Parameters<typeof sshOptions>[0] = {}) =>
    run("ssh", [...sshOptions(o), ...args], { REMOTEGPU_TOKEN: token });

  before(async () => {
    keys = await mkdtemp(path.join(tmpdir(), "remotegpu-ssh-kube-"));
    for (const name of ["id", "other"]) {
      const made = await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `${name}@test`, "-f", path.join(keys, name)], {});
      assert.equal(made.code, 0, made.stderr);
    }
    kube = await startKubeApiServer();
    server = await startTestServer({ clock: systemClock, env: { RUNTIME: "kubernetes", KUBECONFIG: kube.kubeconfigPath } });
    const host = await server
      .client(HostService)
      .createHost({ name: "k8s-node", address: "10.5.0.1", runtime: HostRuntime.KUBERNETES, kubernetesNodeName: "gpu-node-1" });
    agent = new WorkloadAgent(server, host.agentToken, host.host!.id, [{ index: 0, uuid: "GPU-kube-ssh-0" }]);
    await agent.welcome;
    const workspaces = server.client(WorkspaceService);
    const workspaceId = (await workspaces.createWorkspace({ name: "kube-ssh" })).workspace!.id;
    token = (await workspaces.createApiToken({ workspaceId, name: "alice", role: ApiTokenRole.MEMBER })).secret;
    const envs = server.client(EnvironmentService, { token });
    const created = (
      await envs.createEnvironment({
        workspaceId,
        name: "podbox",
        image: "python:3.12",
        gpuCount: 1,
        sshPublicKeys: [(await readFile(path.join(keys, "id.pub"), "utf8")).trim()],
      })
    ).environment!;
    const namespace = `rgpu-${workspaceId}`;
    const podOf = () => kube.list("pods", namespace).find((p) => p.metadata.labels["remotegpu.io/environment-id"] === created.id);
    const pod = await eventually("the pod", async () => podOf());
    env = { id: created.id, namespace, pod: pod.metadata.name };
    kube.setPodPhase(namespace, env.pod, { state: "Running" });
    await eventually("RUNNING", async () => (await envs.getEnvironment({ id: env.id })).environment!.status === EnvironmentStatus.RUNNING);
    web = http.createServer((_req, res) => res.end("hello from the pod\n"));
    await new Promise<void>((resolve) => web.listen(0, "127.0.0.1", resolve));
  });

  after(async () => {
    web?.close();
    await agent?.close();
    await replica?.close();
    await server?.close();
    await kube?.close();
    await rm(keys, { recursive: true, force: true });
  });

  it("runs a command in the pod's container, with the pod's environment, and returns its exit code", async () => {
    const r = await ssh(["user@podbox", 'echo "gpus=$NVIDIA_VISIBLE_DEVICES"; echo oops >&2; exit 7']);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout.trim(), "gpus=GPU-kube-ssh-0");
    assert.match(r.stderr, /oops/);
    const exec = kube.sessions.find((s) => s.kind === "exec" && !s.tty);
    assert.ok(exec, "an exec through the Kubernetes API");
    assert.equal(exec.pod, `${env.namespace}/${env.pod}`);
    assert.equal(exec.protocol, "v5.channel.k8s.io", "the protocol that can close stdin");
    assert.ok(
      kube.requests.some(
        (q) => q.path === `/api/v1/namespaces/${env.namespace}/pods/${env.pod}/exec` && q.query.includes("container=workload"),
      ),
    );
  });

  it("passes stdin to its end, so a command reading it finishes", async () => {
    const child = spawn("ssh", [...sshOptions(), "user@podbox", "wc -c"], { env: { ...process.env, REMOTEGPU_TOKEN: token } });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
    child.stdin.end(Buffer.alloc(100_000, 1));
    const code = await new Promise((resolve) => child.once("close", resolve));
    assert.equal(code, 0);
    assert.equal(out.trim(), "100000");
  });

  it("gives a pty session the client's TERM and window size, sent on the resize channel", async () => {
    const inner = `stty rows 40 cols 120; ssh ${sshOptions()
      .map((a) => `'${a}'`)
      .join(" ")} -tt user@podbox 'echo "term=$TERM"; stty size'`;
    const r = await run("script", ["-qec", inner, "/dev/null"], { REMOTEGPU_TOKEN: token, TERM: "xterm-kube" });
    assert.match(r.stdout, /term=xterm-kube/, r.stdout + r.stderr);
    assert.match(r.stdout, /^40 120\r?$/m, r.stdout);
    assert.ok(kube.sessions.some((s) => s.kind === "exec" && s.tty));
    assert.deepEqual(kube.resizes.at(-1), { rows: 40, cols: 120 });
  });

  it("resizes a pty session's terminal when the client's window changes", async () => {
    const key = await readFile(path.join(keys, "id"), "utf8");
    assert.deepEqual(await sizesAcrossWindowChange(CLI, server.baseUrl, "podbox", token, key), ["24 80", "50 132"]);
    assert.deepEqual(kube.resizes.at(-1), { rows: 50, cols: 132 }, "sent on the exec's resize channel");
  });

  it("copies a 16 MiB file up and down with scp (SFTP in the pod), unchanged", async () => {
    const local = path.join(keys, "big.bin");
    const data = randomBytes(16 << 20);
    await writeFile(local, data);
    const scp = (from: string, to: string) => run("scp", [...sshOptions(), "-q", from, to], { REMOTEGPU_TOKEN: token });
    const up = await scp(local, "user@podbox:big.bin");
    assert.equal(up.code, 0, up.stderr);
    const down = await scp("user@podbox:big.bin", `${local}.back`);
    assert.equal(down.code, 0, down.stderr);
    assert.ok(data.equals(await readFile(`${local}.back`)), "the file came back unchanged");
  });

  it("forwards a local port to a port of the pod (ssh -L) through a port-forward", async () => {
    const podPort = (web.address() as AddressInfo).port;
    const local = await freePort();
    const forward = spawn("ssh", [...sshOptions(), "-N", "-L", `${local}:127.0.0.1:${podPort}`, "user@podbox"], {
      env: { ...process.env, REMOTEGPU_TOKEN: token },
    });
    try {
      const res = await eventually("the forwarded port answers", async () => {
        const r = await fetch(`http://127.0.0.1:${local}/`).catch(() => undefined);
        return r?.status === 200 && r;
      });
      assert.equal(await res.text(), "hello from the pod\n");
    } finally {
      forward.kill();
    }
    assert.ok(kube.sessions.some((s) => s.kind === "portforward" && s.port === podPort && s.pod === `${env.namespace}/${env.pod}`));
  });

  it("refuses a key the environment does not have", async () => {
    const r = await ssh(["user@podbox", "true"], { key: path.join(keys, "other") });
    assert.equal(r.code, 255);
    assert.match(r.stderr, /Permission denied \(publickey\)/);
  });

  it("shows the same host key from every replica", async () => {
    const knownHosts = path.join(keys, "known_hosts");
    // The first connection learns the key; a second replica must present the same one.
    const learn = await ssh(["user@podbox", "true"], { knownHosts, checking: "accept-new" });
    assert.equal(learn.code, 0, learn.stderr);
    assert.match(await readFile(knownHosts, "utf8"), /ssh-ed25519/);
    replica = await startTestServer({
      db: server.db,
      clock: systemClock,
      env: { RUNTIME: "kubernetes", KUBECONFIG: kube.kubeconfigPath },
    });
    const url = replica.baseUrl;
    await eventually("the replica sees the pod running", async () => (await ssh(["user@podbox", "true"], { url })).code === 0);
    const strict = await ssh(["user@podbox", "echo same-key"], { url, knownHosts });
    assert.equal(strict.code, 0, strict.stderr);
    assert.equal(strict.stdout.trim(), "same-key");
  });

  it("ends the exec when the SSH client is killed", async () => {
    const client = spawn("ssh", [...sshOptions(), "user@podbox", "sleep 61"], { env: { ...process.env, REMOTEGPU_TOKEN: token } });
    const exec = await eventually("the session's exec", async () => kube.sessions.find((s) => s.command?.includes("sleep 61")));
    client.kill("SIGKILL");
    await eventually("the exec's stream closed", async () => exec.closed);
  });

  it("ends an open session when the pod stops running", async () => {
    const open = ssh(["user@podbox", "sleep 60"]);
    await eventually("the session's exec", async () => kube.sessions.some((s) => s.command?.includes("sleep 60")));
    const stopped = Date.now();
    kube.setPodPhase(env.namespace, env.pod, { state: "Terminated", exitCode: 0 });
    const ended = await open;
    assert.notEqual(ended.code, 0);
    assert.ok(Date.now() - stopped < 20_000, "the session ended with its pod");
    const refused = await ssh(["user@podbox", "true"]);
    assert.equal(refused.code, 255);
    assert.match(refused.stderr, /remotegpu: failed_precondition: .*SSH needs it RUNNING/);
  });

  // Last: it reads every request the tests above made.
  it("makes no request that deploy/rbac.yaml does not allow", async () => {
    assert.ok(kube.requests.some((r) => r.path.endsWith("/portforward")));
    assert.deepEqual(await deniedByRbac(kube.requests), []);
  });
});
