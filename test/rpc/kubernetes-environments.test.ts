import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { EnvironmentService, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostRuntime, HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { eventually } from "../support/eventually.js";
import { expectCode } from "../support/expect.js";
import { startKubeApiServer, type KubeObject } from "../support/kube-api-server.js";
import { startTestServer } from "../support/server.js";
import { WorkloadAgent } from "../support/workload-agent.js";

const L4 = "NVIDIA L4";
const H100 = "NVIDIA H100 80GB HBM3";
const web = { name: "web", containerPort: 8888, protocol: PortProtocol.HTTP };
const ssh = { name: "ssh", containerPort: 22 };

/** A server with the Kubernetes runtime on a Kubernetes API test server, one Kubernetes host (L4s) and one agent host (H100s). */
async function kubernetesServer(env: Record<string, string>) {
  const kube = await startKubeApiServer();
  const server = await startTestServer({
    clock: systemClock,
    env: { RUNTIME: "kubernetes", KUBECONFIG: kube.kubeconfigPath, HOST_PORT_RANGE: "30100-30199", ...env },
  });
  const hosts = server.client(HostService);
  const node = await hosts.createHost({
    name: "k8s-node",
    address: "10.5.0.1",
    runtime: HostRuntime.KUBERNETES,
    kubernetesNodeName: "gpu-node-1",
  });
  const box = await hosts.createHost({ name: "agent-box", address: "10.1.0.7" });
  // Both report GPUs through an agent stream; only the Kubernetes host's workloads go to Kubernetes.
  const agents = [
    new WorkloadAgent(
      server,
      node.agentToken,
      node.host!.id,
      [0, 1, 2, 3, 4, 5, 6, 7].map((i) => ({ index: i, uuid: `GPU-node-${i}`, model: L4 })),
    ),
    new WorkloadAgent(
      server,
      box.agentToken,
      box.host!.id,
      [0, 1].map((i) => ({ index: i, uuid: `GPU-box-${i}`, model: H100 })),
    ),
  ];
  await Promise.all(agents.map((a) => a.welcome));
  return {
    kube,
    server,
    nodeHostId: node.host!.id,
    envs: server.client(EnvironmentService),
    gpus: server.client(GpuService),
    workspace: async (name: string) => (await server.client(WorkspaceService).createWorkspace({ name })).workspace!.id,
    /** The environment's pod, found by its label (its name is the runtime's business). */
    pod: (ws: string, id: string) =>
      eventually(
        "the pod",
        async () => kube.list("pods", `rgpu-${ws}`).find((p) => p.metadata.labels["remotegpu.io/environment-id"] === id),
        { ms: 15_000, everyMs: 50 },
      ),
    async close() {
      await Promise.all(agents.map((a) => a.close()));
      await server.close();
      await kube.close();
    },
  };
}

const containerEnv = (pod: KubeObject): Record<string, string> =>
  Object.fromEntries((pod.spec.containers[0].env ?? []).map((e: { name: string; value: string }) => [e.name, e.value]));

describe("Kubernetes environments through the API (visible-devices, ingresses with cert-manager)", function () {
  this.timeout(60_000);
  let k: Awaited<ReturnType<typeof kubernetesServer>>;

  before(async () => {
    k = await kubernetesServer({ K8S_INGRESS_BASE_DOMAIN: "gpu.example.com", K8S_INGRESS_CERT_ISSUER: "letsencrypt" });
  });
  after(async () => k?.close());

  it("shows an HTTP port at its own https ingress host, the one the Ingress serves, even for names that read alike", async () => {
    // Joined by '-', workspace team-x / environment nb and workspace x / environment nb-team read the same.
    const teamX = await k.workspace("team-x");
    const x = await k.workspace("x");
    const a = (
      await k.envs.createEnvironment({ workspaceId: teamX, name: "nb", image: "jupyter", gpuCount: 1, gpuModel: L4, ports: [web, ssh] })
    ).environment!;
    const b = (
      await k.envs.createEnvironment({ workspaceId: x, name: "nb-team", image: "jupyter", gpuCount: 1, gpuModel: L4, ports: [web] })
    ).environment!;
    const urlOf = (e: typeof a, port: string) => e.portMappings.find((m) => m.name === port)!.url;
    assert.match(urlOf(a, "web"), /^https:\/\/web-nb-team-x-[a-z2-7]{13}\.gpu\.example\.com\/$/);
    assert.match(urlOf(b, "web"), /^https:\/\/web-nb-team-x-[a-z2-7]{13}\.gpu\.example\.com\/$/);
    assert.notEqual(urlOf(a, "web"), urlOf(b, "web"));
    assert.equal(urlOf(a, "ssh"), "", "TCP ports have no URL");
    // GetEnvironment and ListPortMappings say the same.
    assert.equal(urlOf((await k.envs.getEnvironment({ id: a.id })).environment!, "web"), urlOf(a, "web"));
    const listed = (await k.envs.listPortMappings({ environmentId: a.id })).portMappings.find((m) => m.name === "web")!;
    assert.equal(listed.url, urlOf(a, "web"));

    for (const [ws, e] of [
      [teamX, a],
      [x, b],
    ] as const) {
      const ingress = await eventually("the Ingress", async () => k.kube.get("ingresses", `rgpu-${ws}`, `env-${e.id}`), {
        ms: 15_000,
        everyMs: 50,
      });
      const host = new URL(urlOf(e, "web")).hostname;
      assert.deepEqual(
        ingress.spec.rules.map((r: { host: string }) => r.host),
        [host],
      );
      assert.deepEqual(ingress.spec.tls, [{ hosts: [host], secretName: `env-${e.id}-tls` }]);
      assert.equal(ingress.metadata.annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
    }

    // A port added later gets its ingress URL at once; an agent host's HTTP port keeps the host's address.
    const { portMapping } = await k.envs.addPortMapping({
      environmentId: a.id,
      port: { name: "api", containerPort: 9000, protocol: PortProtocol.HTTP },
    });
    assert.match(portMapping!.url, /^https:\/\/api-nb-team-x-[a-z2-7]{13}\.gpu\.example\.com\/$/);
    const onAgent = (
      await k.envs.createEnvironment({ workspaceId: x, name: "box", image: "jupyter", gpuCount: 1, gpuModel: H100, ports: [web] })
    ).environment!;
    assert.equal(onAgent.portMappings[0]!.url, `http://10.1.0.7:${onAgent.portMappings[0]!.hostPort}/`);
  });

  it("refuses environment variables that select devices, naming them, on either runtime's hosts, and creates nothing", async () => {
    const ws = await k.workspace("sneaky");
    const names = [
      "NVIDIA_VISIBLE_DEVICES",
      "nvidia_visible_devices",
      "CUDA_VISIBLE_DEVICES",
      "NVIDIA_DRIVER_CAPABILITIES",
      "NVIDIA_REQUIRE_CUDA",
      "NVIDIA_MIG_CONFIG_DEVICES",
      "NVIDIA_MIG_MONITOR_DEVICES",
      "ROCR_VISIBLE_DEVICES",
      "HIP_VISIBLE_DEVICES",
      "GPU_DEVICE_ORDINAL",
    ];
    for (const name of names)
      for (const [gpuCount, gpuModel] of [
        [0, ""],
        [1, L4],
        [1, H100],
      ] as const) {
        const err = await expectCode(
          k.envs.createEnvironment({ workspaceId: ws, name: "grab", image: "x", gpuCount, gpuModel, env: { MODE: "dev", [name]: "all" } }),
          Code.InvalidArgument,
          `env.${name}`,
        );
        assert.match(err.rawMessage, /selects devices/);
      }
    assert.equal((await k.envs.listEnvironments({ workspaceId: ws })).totalSize, 0);

    // Variables that merely mention NVIDIA or CUDA are the user's.
    const ok = (
      await k.envs.createEnvironment({
        workspaceId: ws,
        name: "tf32",
        image: "x",
        gpuCount: 1,
        gpuModel: L4,
        env: { NVIDIA_TF32_OVERRIDE: "0", CUDA_LAUNCH_BLOCKING: "1" },
      })
    ).environment!;
    assert.deepEqual(ok.env, { NVIDIA_TF32_OVERRIDE: "0", CUDA_LAUNCH_BLOCKING: "1" });
  });

  it("runs the pod on exactly the GPUs GetEnvironment lists", async () => {
    const ws = await k.workspace("truthful");
    const env = (await k.envs.createEnvironment({ workspaceId: ws, name: "two", image: "x", gpuCount: 2, gpuModel: L4 })).environment!;
    assert.equal(env.gpuIds.length, 2);
    const uuids = await Promise.all(env.gpuIds.map(async (id) => (await k.gpus.getGpu({ id })).gpu!.uuid));
    const pod = await k.pod(ws, env.id);
    assert.equal(containerEnv(pod).NVIDIA_VISIBLE_DEVICES, uuids.join(","));
    assert.equal(pod.spec.runtimeClassName, "nvidia");
    assert.equal(pod.spec.containers[0].resources?.limits?.["nvidia.com/gpu"], undefined);
  });
});

describe("Kubernetes environments through the API (device-plugin, plain HTTP ingresses)", function () {
  this.timeout(60_000);
  let k: Awaited<ReturnType<typeof kubernetesServer>>;

  before(async () => {
    k = await kubernetesServer({ K8S_GPU_MODE: "device-plugin", K8S_INGRESS_BASE_DOMAIN: "apps.example.org" });
  });
  after(async () => k?.close());

  it("holds a Kubernetes host's GPUs by count and lists no GPU ids it cannot vouch for; agent hosts list theirs", async () => {
    const ws = await k.workspace("counted");
    const env = (await k.envs.createEnvironment({ workspaceId: ws, name: "two", image: "x", gpuCount: 2, gpuModel: L4, ports: [web] }))
      .environment!;
    assert.equal(env.gpuCount, 2);
    assert.deepEqual(env.gpuIds, [], "the device plugin picks the devices");
    assert.deepEqual((await k.envs.getEnvironment({ id: env.id })).environment!.gpuIds, []);
    assert.deepEqual(
      (await k.envs.listEnvironments({ workspaceId: ws })).environments.map((e) => e.gpuIds),
      [[]],
    );
    // Without TLS the ingress URL is plain http.
    assert.match(env.portMappings[0]!.url, /^http:\/\/web-two-counted-[a-z2-7]{13}\.apps\.example\.org\/$/);

    const pod = await k.pod(ws, env.id);
    assert.equal(pod.spec.containers[0].resources.limits["nvidia.com/gpu"], "2");
    assert.equal(containerEnv(pod).NVIDIA_VISIBLE_DEVICES, undefined);
    // The count is still reserved: two of the node's eight GPUs are taken.
    const allocated = (await k.gpus.listGpus({ hostId: k.nodeHostId, status: GpuStatus.ALLOCATED })).gpus;
    assert.equal(allocated.length, 2);
    await expectCode(
      k.envs.createEnvironment({ workspaceId: ws, name: "seven", image: "x", gpuCount: 7, gpuModel: L4 }),
      Code.ResourceExhausted,
    );

    const onAgent = (await k.envs.createEnvironment({ workspaceId: ws, name: "box", image: "x", gpuCount: 1, gpuModel: H100 }))
      .environment!;
    assert.equal(onAgent.gpuIds.length, 1, "an agent runs its workload on the GPU it was given");
  });

  it("gives a pod without GPUs NVIDIA_VISIBLE_DEVICES=void", async () => {
    const ws = await k.workspace("cpu-only");
    // Only the Kubernetes host is schedulable, so the GPU-less environment lands there.
    const hosts = k.server.client(HostService);
    const box = (await hosts.listHosts({})).hosts.find((h) => h.name === "agent-box")!;
    await hosts.cordonHost({ id: box.id });
    try {
      const env = (await k.envs.createEnvironment({ workspaceId: ws, name: "cpu", image: "x", env: { MODE: "cpu" } })).environment!;
      assert.equal(env.hostId, k.nodeHostId);
      const pod = await k.pod(ws, env.id);
      assert.deepEqual(containerEnv(pod), { MODE: "cpu", NVIDIA_VISIBLE_DEVICES: "void" });
    } finally {
      await hosts.uncordonHost({ id: box.id });
    }
  });
});
