import { strict as assert } from "node:assert";
import { EnvironmentService, EnvironmentStatus, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostRuntime, HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { eventually } from "../support/eventually.js";
import { startKubeApiServer, type KubeApiTestServer } from "../support/kube-api-server.js";
import { startTestServer, type TestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";
import { systemClock } from "../../src/platform/clock.js";

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
    assert.equal(pod.spec.containers[0].resources.limits["nvidia.com/gpu"], "2");
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
    assert.equal(kube.get("ingresses", namespace, name)?.spec.rules[0].host, "web-nb-kube-team.gpu.example.com");
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

  it("fails an environment whose image cannot be pulled, with the reason, and rolls its pod back", async () => {
    const env = (await envs.createEnvironment({ workspaceId: ws, name: "badimg", image: "no/such:image", gpuCount: 1 })).environment!;
    const pod = await eventually("the pod", () => podOf(env.id), polling);
    kube.setPodPhase(namespace, pod.metadata.name, { state: "ImagePullBackOff", message: 'Back-off pulling image "no/such:image"' });
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
});
