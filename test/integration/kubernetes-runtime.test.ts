import { strict as assert } from "node:assert";
import { EnvironmentService, EnvironmentStatus, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostRuntime, HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { eventually } from "../support/eventually.js";
import { startKubeApiServer, type KubeApiTestServer } from "../support/kube-api-server.js";
import { deniedByRbac } from "../support/rbac.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";
import { systemClock } from "../../src/platform/clock.js";
import { createLogger } from "../../src/platform/logger.js";
import type { KubernetesOptions } from "../../src/runtime/kubernetes-manifests.js";
import { KubernetesRuntime, type WorkloadObserver } from "../../src/runtime/kubernetes-runtime.js";
import type { WorkloadSpec } from "../../src/runtime/runtime.js";

describe("the Kubernetes runtime against a Kubernetes API test server", function () {
  this.timeout(60_000);
  let kube: KubeApiTestServer;
  let server: TestServer;
  let agent: WorkloadAgent;
  let envs: ReturnType<typeof server.client<typeof EnvironmentService>>;
  let ws: string;
  let namespace: string;

  const polling = { ms: 15_000, everyMs: 50 };
  const status = (id: string, wanted: EnvironmentStatus) =>
    eventually(
      `${EnvironmentStatus[wanted]}`,
      async () => {
        const e = (await envs.getEnvironment({ id })).environment!;
        return e.status === wanted && e;
      },
      polling,
    );
  const podOf = (id: string) => kube.list("pods", namespace).find((p) => p.metadata.labels["remotegpu.io/environment-id"] === id);

  before(async () => {
    kube = await startKubeApiServer();
    server = await startTestServer({
      clock: systemClock,
      env: {
        RUNTIME: "kubernetes",
        KUBECONFIG: kube.kubeconfigPath,
        HOST_PORT_RANGE: "30100-30199",
        K8S_INGRESS_BASE_DOMAIN: "gpu.example.com",
        ENVIRONMENT_START_TIMEOUT_SECONDS: "20",
        K8S_IMAGE_PULL_TIMEOUT_SECONDS: "2",
      },
    });
    envs = server.client(EnvironmentService);
    const host = await server
      .client(HostService)
      .createHost({ name: "k8s-node", address: "10.5.0.1", runtime: HostRuntime.KUBERNETES, kubernetesNodeName: "gpu-node-1" });
    // The node's agent reports its GPUs and telemetry; workloads go through Kubernetes.
    agent = new WorkloadAgent(
      server,
      host.agentToken,
      host.host!.id,
      Array.from({ length: 4 }, (_, i) => ({ index: i, uuid: `GPU-k8s-${i}` })),
    );
    await agent.welcome;
    ws = (await server.client(WorkspaceService).createWorkspace({ name: "kube-team" })).workspace!.id;
    namespace = `rgpu-${ws}`;
  });
  after(async () => {
    await agent?.close();
    await server?.close();
    await kube?.close();
  });

  it("creates the objects with the right spec, is RUNNING when the pod is Ready, streams its log, stops keeping the volume, starts again, deletes everything", async () => {
    const env = (
      await envs.createEnvironment({
        workspaceId: ws,
        name: "nb",
        image: "jupyter/base-notebook",
        gpuCount: 2,
        storageBytes: 10n << 30n,
        ports: [
          { name: "web", containerPort: 8888, protocol: PortProtocol.HTTP },
          { name: "ssh", containerPort: 22 },
        ],
        sshPublicKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMock me@host"],
      })
    ).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    assert.equal(pod.spec.nodeName, "gpu-node-1");
    // visible-devices (the default): exactly the GPUs RemoteGPU allocated, through the NVIDIA runtime.
    const visible = pod.spec.containers[0].env.find((e: { name: string }) => e.name === "NVIDIA_VISIBLE_DEVICES")?.value;
    assert.match(visible, /^GPU-k8s-\d,GPU-k8s-\d$/);
    assert.equal(pod.spec.runtimeClassName, "nvidia");
    assert.deepEqual(
      pod.spec.containers[0].volumeMounts.map((m: { mountPath: string }) => m.mountPath),
      ["/workspace", "/etc/remotegpu/ssh"],
    );
    const name = `env-${env.id}`;
    assert.equal(kube.get("persistentvolumeclaims", namespace, name)?.spec.resources.requests.storage, "10Gi");
    assert.match(
      kube.get("secrets", namespace, name)?.stringData?.authorized_keys ??
        Buffer.from(kube.get("secrets", namespace, name)!.data.authorized_keys, "base64").toString(),
      /ssh-ed25519/,
    );
    const service = kube.get("services", namespace, name)!;
    assert.equal(service.spec.type, "NodePort");
    // In the order the ports were given (the first one is PORT), each on its allocated host port.
    const hostPortOf = (n: string) => env.portMappings.find((m) => m.name === n)?.hostPort;
    assert.deepEqual(
      service.spec.ports.map((p: { name: string; nodePort: number }) => [p.name, p.nodePort]),
      [
        ["web", hostPortOf("web")],
        ["ssh", hostPortOf("ssh")],
      ],
    );
    // Readable names, and a hash that keeps tenants' hosts apart whatever they are called.
    const ingressHost = kube.get("ingresses", namespace, name)?.spec.rules[0].host;
    assert.match(ingressHost, /^web-nb-kube-team-[a-z0-9]+\.gpu\.example\.com$/);
    assert.equal((await envs.getEnvironment({ id: env.id })).environment?.status, EnvironmentStatus.CREATING);

    kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);
    kube.appendLog(namespace, pod.metadata.name, "notebook server started");
    await eventually(
      "the pod's log line",
      async () => {
        for await (const r of envs.streamLogs({ environmentId: env.id }))
          if (r.lines.some((l) => l.text === "notebook server started")) return true;
        return false;
      },
      polling,
    );

    await envs.stopEnvironment({ id: env.id });
    const stopped = await status(env.id, EnvironmentStatus.STOPPED);
    assert.deepEqual(stopped.gpuIds, []);
    assert.equal(podOf(env.id), undefined, "the pod is gone");
    assert.equal(kube.get("services", namespace, name), undefined, "its ports are released");
    assert.ok(kube.get("persistentvolumeclaims", namespace, name), "the volume stays");

    await envs.startEnvironment({ id: env.id });
    const second = await eventually("the new pod", () => podOf(env.id), polling);
    assert.equal(second.metadata.annotations["remotegpu.io/generation"], "2");
    kube.setPodPhase(namespace, second.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);

    // A pod's ports are fixed: a new port runs a new generation, with PORT unchanged.
    const { portMapping } = await envs.addPortMapping({ environmentId: env.id, port: { name: "alt", containerPort: 9001 } });
    const restarting = (await envs.getEnvironment({ id: env.id })).environment!;
    assert.equal(restarting.status, EnvironmentStatus.STARTING);
    assert.match(restarting.statusMessage, /restarting the workload for the port change \(port alt added\)/);
    const third = await eventually(
      "the pod of generation 3",
      () => podOf(env.id)?.metadata.annotations["remotegpu.io/generation"] === "3" && podOf(env.id),
      polling,
    );
    const envVars = Object.fromEntries(third.spec.containers[0].env.map((e: { name: string; value: string }) => [e.name, e.value]));
    assert.equal(envVars.PORT, "8888");
    assert.equal(envVars.PORT_ALT, "9001");
    assert.deepEqual(
      kube.get("services", namespace, name)!.spec.ports.map((p: { name: string; nodePort: number }) => [p.name, p.nodePort]),
      [
        ["web", hostPortOf("web")],
        ["ssh", hostPortOf("ssh")],
        ["alt", portMapping!.hostPort],
      ],
    );
    kube.setPodPhase(namespace, third.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);

    await envs.deleteEnvironment({ id: env.id });
    await eventually(
      "the environment gone",
      async () => (await envs.getEnvironment({ id: env.id }).catch(() => undefined)) === undefined,
      polling,
    );
    for (const kind of ["pods", "services", "ingresses", "persistentvolumeclaims", "secrets"] as const) {
      assert.deepEqual(
        kube.list(kind, namespace).filter((o) => o.metadata.labels?.["remotegpu.io/environment-id"] === env.id),
        [],
        `no ${kind} left`,
      );
    }
  });

  it("fails an environment whose image cannot be pulled once the pull timeout passes, with the reason, and rolls its pod back", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "badimg", image: "no/such:image", gpuCount: 1 })).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    kube.setPodPhase(namespace, pod.metadata.name, { state: "ImagePullBackOff", message: 'Back-off pulling image "no/such:image"' });
    // A registry's hiccup is not the end: STARTING, with the pull's state, until the timeout (2 s here).
    await eventually(
      "the pull's state in the status message",
      async () =>
        /pulling the image failed, retrying for \d+ s more: ImagePullBackOff/.test(
          (await envs.getEnvironment({ id: env.id })).environment!.statusMessage,
        ),
      polling,
    );
    const failed = await status(env.id, EnvironmentStatus.FAILED);
    assert.match(failed.statusMessage, /ImagePullBackOff: Back-off pulling image "no\/such:image"/);
    assert.deepEqual(failed.gpuIds, []);
    await eventually("the pod deleted", () => podOf(env.id) === undefined, polling);
    await envs.deleteEnvironment({ id: env.id });
  });

  it("keeps following pods when the watch breaks, or its resourceVersion expires (410)", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "watched", image: "img" })).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    kube.compact();
    await eventually("an open watch to break", () => kube.breakWatches() > 0, polling);
    kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);
    await envs.deleteEnvironment({ id: env.id });
  });

  it("retries while the API server is down and carries on when it is back", async () => {
    await kube.down();
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "patient", image: "img" })).environment!;
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(
      (await envs.getEnvironment({ id: env.id })).environment?.status,
      EnvironmentStatus.CREATING,
      "not failed while the API is away",
    );
    await kube.up();
    const pod = await eventually("the pod, once the API answers", () => podOf(env.id), { ...polling, ms: 20_000 });
    kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);
  });

  it("applies each pod's statuses in order: after a burst, every environment shows the last one and keeps it", async () => {
    const created = await Promise.all(
      Array.from({ length: 10 }, (_, i) => envs.createEnvironment({ workspaceId: ws, name: `burst-${i}`, image: "img" })),
    );
    const ids = created.map((c) => c.environment!.id);
    const pods = await Promise.all(ids.map((id) => eventually("the pod", () => podOf(id), polling)));
    // Back to back, as a busy kubelet reports them: started, then ready, then exited.
    for (const pod of pods) {
      kube.setPodPhase(namespace, pod.metadata.name, { state: "Running", ready: false });
      kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
      kube.setPodPhase(namespace, pod.metadata.name, { state: "Terminated", exitCode: 3 });
    }
    const shown = async () => Promise.all(ids.map(async (id) => (await envs.getEnvironment({ id })).environment!));
    await eventually("all FAILED", async () => (await shown()).every((e) => e.status === EnvironmentStatus.FAILED), polling);
    await new Promise((r) => setTimeout(r, 1000));
    for (const e of await shown()) {
      assert.equal(e.status, EnvironmentStatus.FAILED, `${e.name} stays FAILED`);
      assert.match(e.statusMessage, /exited with code 3/);
    }
    await Promise.all(ids.map((id) => envs.deleteEnvironment({ id })));
  });

  it("resumes following a pod's log after the API connection is cut, with no line lost or stored twice", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "chatty", image: "img" })).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);
    const texts = async () => {
      const out: string[] = [];
      for await (const r of envs.streamLogs({ environmentId: env.id })) out.push(...r.lines.map((l) => l.text));
      return out;
    };
    // Appended in one go: the same millisecond, so resuming from it must count, not compare times.
    for (const l of ["one", "two", "three"]) kube.appendLog(namespace, pod.metadata.name, l);
    await eventually("the first lines", async () => (await texts()).length === 3, polling);

    await kube.down(); // the follow is cut; the pod runs on and writes
    for (const l of ["four", "five"]) kube.appendLog(namespace, pod.metadata.name, l);
    await new Promise((r) => setTimeout(r, 1500));
    await kube.up();
    kube.appendLog(namespace, pod.metadata.name, "six");
    await eventually("the lines written while cut, and after", async () => (await texts()).length >= 6, { ...polling, ms: 40_000 });
    assert.ok(kube.breakLogFollows() >= 1, "following again");
    kube.appendLog(namespace, pod.metadata.name, "seven");
    await eventually("a line after a second cut", async () => (await texts()).includes("seven"), { ...polling, ms: 40_000 });
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(await texts(), ["one", "two", "three", "four", "five", "six", "seven"]);
    await envs.deleteEnvironment({ id: env.id });
  });

  it("keeps the log of a container that crashed before anyone saw it run", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "crasher", image: "img" })).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    kube.appendLog(namespace, pod.metadata.name, "Traceback (most recent call last):");
    kube.appendLog(namespace, pod.metadata.name, "ModuleNotFoundError: No module named 'torch'");
    kube.setPodPhase(namespace, pod.metadata.name, { state: "Terminated", exitCode: 1 }); // Pending, then Failed
    await status(env.id, EnvironmentStatus.FAILED);
    await eventually(
      "the crash in the environment's log",
      async () => {
        const texts: string[] = [];
        for await (const r of envs.streamLogs({ environmentId: env.id })) texts.push(...r.lines.map((l) => l.text));
        return texts.includes("ModuleNotFoundError: No module named 'torch'");
      },
      polling,
    );
    await envs.deleteEnvironment({ id: env.id });
  });

  it("brings an object whose spec changed back to what the environment asks: the SSH keys, a larger volume", async () => {
    const env = (
      await envs.createEnvironment({ workspaceId: ws, name: "drift", image: "img", sshPublicKeys: ["ssh-ed25519 AAAAkeep me@host"] })
    ).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
    await status(env.id, EnvironmentStatus.RUNNING);
    await envs.stopEnvironment({ id: env.id });
    await status(env.id, EnvironmentStatus.STOPPED);
    const name = `env-${env.id}`;
    const secret = kube.get("secrets", namespace, name)!;
    // Someone (or an older RemoteGPU) left other keys and a smaller claim behind.
    kube.modify("secrets", namespace, name, (s) => {
      s.stringData = { authorized_keys: "ssh-ed25519 AAAAstale intruder@elsewhere\n" };
      delete s.data;
    });
    kube.modify("persistentvolumeclaims", namespace, name, (c) => (c.spec.resources.requests.storage = "1Gi"));
    await envs.startEnvironment({ id: env.id });
    await eventually("the pod of generation 2", () => podOf(env.id)?.metadata.annotations["remotegpu.io/generation"] === "2", polling);
    const keys = kube.get("secrets", namespace, name)!;
    assert.equal(keys.metadata.uid, secret.metadata.uid, "updated in place: what it owns stays owned");
    assert.equal(
      keys.stringData?.authorized_keys ?? Buffer.from(keys.data.authorized_keys, "base64").toString(),
      "ssh-ed25519 AAAAkeep me@host\n",
    );
    assert.equal(kube.get("persistentvolumeclaims", namespace, name)!.spec.resources.requests.storage, "10Gi");
    await envs.deleteEnvironment({ id: env.id });
  });

  it("asks only within the workspace's namespace when deleting, and watches with bookmarks", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "scoped", image: "img" })).environment!;
    await eventually("the pod", () => podOf(env.id), polling);
    const from = kube.requests.length;
    await envs.deleteEnvironment({ id: env.id });
    await eventually(
      "the environment gone",
      async () => (await envs.getEnvironment({ id: env.id }).catch(() => undefined)) === undefined,
      polling,
    );
    const asked = kube.requests.slice(from).filter((r) => !(r.path === "/api/v1/pods" && r.query.includes("watch=true")));
    assert.ok(asked.length > 0);
    for (const r of asked)
      assert.ok(
        r.path.startsWith(`/api/v1/namespaces/${namespace}/`) || r.path.startsWith(`/apis/networking.k8s.io/v1/namespaces/${namespace}/`),
        `${r.method} ${r.path}`,
      );
    const watches = kube.requests.filter((r) => r.path === "/api/v1/pods" && r.query.includes("watch=true"));
    assert.ok(watches.every((r) => r.query.includes("allowWatchBookmarks=true")));
  });

  // Last: it reads every request the tests above made.
  it("makes no request that deploy/rbac.yaml does not allow", async () => {
    assert.deepEqual(await deniedByRbac(kube.requests), []);
  });
});

describe("the Kubernetes runtime with MIG slices, driven directly", function () {
  this.timeout(30_000);
  let kube: KubeApiTestServer;
  let runtime: KubernetesRuntime;
  const reports: { environmentId: string; state: string; message: string }[] = [];
  const observer: WorkloadObserver = {
    status: async (_hostId, r) => void reports.push(r),
    logs: async () => {},
    lastLog: async () => undefined,
  };
  const options: KubernetesOptions = {
    namespacePrefix: "rgpu-",
    accessMode: "ReadWriteOnce",
    mountPath: "/workspace",
    gpuMode: "device-plugin",
    runtimeClass: "nvidia",
    imagePullTimeoutSeconds: 300,
    nodePortRange: { first: 30000, last: 32767 },
  };
  // Two 1g.10gb slices of a node registered from its Node object, as the server would hand them out.
  const spec = (environmentId: string, migProfile: string): WorkloadSpec => ({
    environmentId,
    name: "slices",
    workspaceId: "5e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    workspaceName: "mig-team",
    hostId: "host-1",
    nodeName: "gpu-node-1",
    image: "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
    command: [],
    args: [],
    env: {},
    gpuUuids: [`k8s-gpu-node-1-0-mig-5-${migProfile}`, `k8s-gpu-node-1-0-mig-6-${migProfile}`],
    gpuIndices: [1005, 1006],
    migProfile,
    ports: [],
    cpuMillicores: 2000,
    memoryBytes: 8 * 2 ** 30,
    storageBytes: 2 ** 30,
    sshPublicKeys: [],
    generation: 1,
  });
  const namespace = "rgpu-5e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

  before(async () => {
    kube = await startKubeApiServer();
    runtime = new KubernetesRuntime(kube.kubeConfig(), options, observer, createLogger("silent"));
  });
  after(async () => {
    runtime?.close();
    await kube?.close();
  });

  it("asks the device plugin for nvidia.com/mig-<profile>, as many as the slices, and no whole GPU", async () => {
    const id = "7d1e2f3a-4b5c-4d6e-9f0a-1b2c3d4e5f60";
    await runtime.run(spec(id, "1g.10gb"));
    const pod = kube.get("pods", namespace, `env-${id}-1`);
    assert.ok(pod, "the pod was made");
    assert.equal(pod.spec.nodeName, "gpu-node-1");
    assert.deepEqual(pod.spec.containers[0].resources.limits, { cpu: "2000m", memory: String(8 * 2 ** 30), "nvidia.com/mig-1g.10gb": "2" });
    assert.deepEqual(reports, [], "nothing went wrong");
  });

  it("fails, with why and without a pod, a spec whose profile makes no resource name", async () => {
    const id = "8e2f3a4b-5c6d-4e7f-8a1b-2c3d4e5f6a70";
    await runtime.run(spec(id, "1g.10gb+me"));
    assert.deepEqual(
      reports.map((r) => [r.environmentId, r.state]),
      [[id, "FAILED"]],
    );
    assert.match(
      reports[0]!.message,
      /MIG profile "1g\.10gb\+me" makes no valid Kubernetes resource name \(nvidia\.com\/mig-1g\.10gb\+me\)/,
    );
    assert.equal(kube.get("pods", namespace, `env-${id}-1`), undefined);
  });

  it("fails at once, without a pod, slices of a node-registered host in visible-devices mode", async () => {
    const visible = new KubernetesRuntime(kube.kubeConfig(), { ...options, gpuMode: "visible-devices" }, observer, createLogger("silent"));
    try {
      const id = "9f3a4b5c-6d7e-4f8a-9b2c-3d4e5f6a7b80";
      await visible.run(spec(id, "1g.10gb"));
      const mine = reports.filter((r) => r.environmentId === id);
      assert.deepEqual(
        mine.map((r) => r.state),
        ["FAILED"],
      );
      assert.match(mine[0]!.message, /MIG slices on node-registered hosts need K8S_GPU_MODE=device-plugin/);
      assert.equal(kube.get("pods", namespace, `env-${id}-1`), undefined);
    } finally {
      visible.close();
    }
  });
});

describe("the Kubernetes runtime's log following across a control-plane restart", function () {
  this.timeout(60_000);
  let kube: KubeApiTestServer;
  let db: TestDatabase;
  let server: TestServer | undefined;
  let agent: WorkloadAgent | undefined;
  const env = {
    RUNTIME: "kubernetes",
    HOST_PORT_RANGE: "30100-30199",
    ENVIRONMENT_START_TIMEOUT_SECONDS: "20",
  };

  before(async () => {
    kube = await startKubeApiServer();
    db = await createTestDatabase();
  });
  after(async () => {
    await agent?.close();
    await server?.close();
    await kube?.close();
    await db?.drop();
  });

  it("stores every line once: the new control plane resumes from the newest line stored", async () => {
    server = await startTestServer({ clock: systemClock, db, env: { ...env, KUBECONFIG: kube.kubeconfigPath } });
    const host = await server
      .client(HostService)
      .createHost({ name: "k8s-node", address: "10.5.0.1", runtime: HostRuntime.KUBERNETES, kubernetesNodeName: "gpu-node-1" });
    agent = new WorkloadAgent(server, host.agentToken, host.host!.id, [{ index: 0, uuid: "GPU-k8s-0" }]);
    await agent.welcome;
    const ws = (await server.client(WorkspaceService).createWorkspace({ name: "restarts" })).workspace!.id;
    const created = (await server.client(EnvironmentService).createEnvironment({ workspaceId: ws, name: "long", image: "img" }))
      .environment!;
    const namespace = `rgpu-${ws}`;
    const pod = await eventually("the pod", () => kube.list("pods", namespace)[0], { ms: 15_000, everyMs: 50 });
    kube.setPodPhase(namespace, pod.metadata.name, { state: "Running" });
    const texts = async () => {
      const out: string[] = [];
      for await (const r of server!.client(EnvironmentService).streamLogs({ environmentId: created.id }))
        out.push(...r.lines.map((l) => l.text));
      return out;
    };
    for (const l of ["a", "b", "c"]) kube.appendLog(namespace, pod.metadata.name, l);
    await eventually("the first lines stored", async () => (await texts()).length === 3, { ms: 15_000, everyMs: 100 });

    await agent.close();
    await server.close();
    for (const l of ["d", "e"]) kube.appendLog(namespace, pod.metadata.name, l); // while no control plane runs
    server = await startTestServer({ clock: systemClock, db, env: { ...env, KUBECONFIG: kube.kubeconfigPath } });
    agent = undefined;
    await eventually("the lines written meanwhile", async () => (await texts()).length >= 5, { ms: 20_000, everyMs: 100 });
    kube.appendLog(namespace, pod.metadata.name, "f");
    await eventually("a new line", async () => (await texts()).includes("f"), { ms: 15_000, everyMs: 100 });
    assert.deepEqual(await texts(), ["a", "b", "c", "d", "e", "f"]);
  });
});
