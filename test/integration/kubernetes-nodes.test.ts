import { strict as assert } from "node:assert";
import { readFile } from "node:fs/promises";
import { loadAllYaml } from "@kubernetes/client-node";
import { Code } from "@connectrpc/connect";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, GpuStatus } from "../../gen/remotegpu/v1/gpu_pb.js";
import { type Host, HostRuntime, HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { describeNode, quantity } from "../../src/host/node-facts.js";
import { systemClock } from "../../src/platform/clock.js";
import type { ObservedNode } from "../../src/platform/kube-node-watch.js";
import { eventually } from "../support/eventually.js";
import { expectCode } from "../support/expect.js";
import { startKubeApiServer, type KubeApiTestServer } from "../support/kube-api-server.js";
import { startTestServer, type TestServer } from "../support/server.js";

const SELECTOR = "remotegpu.io/pool=gpu";
const IN_POOL = { "remotegpu.io/pool": "gpu" };
const A100 = {
  ...IN_POOL,
  "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
  "nvidia.com/gpu.memory": "81920",
  "nvidia.com/gpu.count": "4",
  "nvidia.com/cuda.driver.major": "550",
  "nvidia.com/cuda.driver.minor": "54",
  "nvidia.com/cuda.driver.rev": "15",
};

describe("Kubernetes nodes as hosts (K8S_NODE_SELECTOR)", function () {
  this.timeout(60_000);
  let kube: KubeApiTestServer;
  let server: TestServer;
  let hostApi: ReturnType<typeof server.client<typeof HostService>>;
  let gpuApi: ReturnType<typeof server.client<typeof GpuService>>;
  /** Set once the first replica's app was closed (its database stays for the second one). */
  let firstClosed = false;

  const polling = { ms: 15_000, everyMs: 50 };
  const env = (kubeconfig: string) => ({
    RUNTIME: "kubernetes",
    KUBECONFIG: kubeconfig,
    K8S_NODE_SELECTOR: SELECTOR,
    HOST_PORT_RANGE: "30100-30199",
    // Short, so that a host that heartbeats would have expired many times over during these tests.
    HEARTBEAT_INTERVAL_SECONDS: "1",
    HOST_GRACE_SECONDS: "2",
  });
  const hostNamed = async (name: string): Promise<Host | undefined> =>
    (await hostApi.listHosts({ pageSize: 100 })).hosts.find((h) => h.name === name);
  const hostBecomes = (name: string, what: string, check: (h: Host) => boolean) =>
    eventually(
      `host ${name} ${what}`,
      async () => {
        const h = await hostNamed(name);
        return h && check(h) && h;
      },
      polling,
    );
  const gpusOf = async (hostId: string) => (await gpuApi.listGpus({ hostId, pageSize: 100 })).gpus.sort((a, b) => a.index - b.index);

  before(async () => {
    kube = await startKubeApiServer();
    kube.addNode("gpu-a", { labels: A100, allocatable: { "nvidia.com/gpu": "4" }, address: "10.1.0.1", leaseDurationSeconds: 2 });
    kube.addNode("cpu-only", { labels: { "remotegpu.io/pool": "cpu" } });
    server = await startTestServer({ clock: systemClock, env: env(kube.kubeconfigPath) });
    hostApi = server.client(HostService);
    gpuApi = server.client(GpuService);
  });
  after(async () => {
    if (firstClosed) await server.db.drop();
    else await server?.close();
    await kube?.close();
  });

  it("registers a matching node as an ONLINE Kubernetes host with its GPUs, with no agent and no call", async () => {
    const host = await hostBecomes("gpu-a", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    assert.equal(host.runtime, HostRuntime.KUBERNETES);
    assert.equal(host.kubernetesNodeName, "gpu-a");
    assert.equal(host.address, "10.1.0.1");
    assert.equal(host.schedulable, true);
    assert.equal(host.capacity?.cpuMillicores, 16_000n);
    assert.equal(host.capacity?.memoryBytes, 64n << 30n);
    assert.equal(host.gpuCount, 4);
    assert.equal(host.availableGpuCount, 4);
    assert.match(host.statusMessage, /gpu-a is Ready/);
    const gpus = await gpusOf(host.id);
    assert.deepEqual(
      gpus.map((g) => [g.index, g.uuid, g.model, g.memoryBytes, g.driverVersion, g.status]),
      [0, 1, 2, 3].map((i) => [i, `k8s-gpu-a-${i}`, "NVIDIA-A100-SXM4-80GB", 80n << 30n, "550.54.15", GpuStatus.AVAILABLE]),
    );
    // Nothing heartbeats for it, and it stays ONLINE well past the heartbeat grace period (2 s here).
    await new Promise((r) => setTimeout(r, 3_000));
    assert.equal((await hostNamed("gpu-a"))?.status, HostStatus.ONLINE);
  });

  it("ignores a node that does not match the selector, registers it once it matches, sets it OFFLINE once it stops", async () => {
    await hostBecomes("gpu-a", "is registered", () => true);
    assert.equal(await hostNamed("cpu-only"), undefined);
    kube.setNodeLabels("cpu-only", IN_POOL);
    const host = await hostBecomes("cpu-only", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    assert.equal(host.gpuCount, 0, "a node without GPUs is a host without GPUs");
    kube.setNodeLabels("cpu-only", { "remotegpu.io/pool": "cpu" });
    const gone = await hostBecomes("cpu-only", "is OFFLINE", (h) => h.status === HostStatus.OFFLINE);
    assert.match(gone.statusMessage, /no longer matches K8S_NODE_SELECTOR/);
  });

  it("goes OFFLINE when the node is NotReady and ONLINE when it is Ready again; its GPUs follow", async () => {
    kube.setNodeReady("gpu-a", false);
    const down = await hostBecomes("gpu-a", "is OFFLINE", (h) => h.status === HostStatus.OFFLINE);
    assert.match(down.statusMessage, /not Ready/);
    assert.deepEqual(
      (await gpusOf(down.id)).map((g) => g.status),
      Array(4).fill(GpuStatus.OFFLINE),
    );
    kube.setNodeReady("gpu-a", "Unknown");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await hostNamed("gpu-a"))?.status, HostStatus.OFFLINE, "Unknown is not Ready");
    kube.setNodeReady("gpu-a", true);
    const up = await hostBecomes("gpu-a", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    assert.equal(up.availableGpuCount, 4);
  });

  it("goes OFFLINE when the kubelet stops renewing the node's lease, though Ready still says True", async () => {
    kube.stopRenewingLease("gpu-a");
    // The lease lasts 2 s; it lapses after 2.5 s without renewal.
    const down = await hostBecomes("gpu-a", "is OFFLINE", (h) => h.status === HostStatus.OFFLINE);
    assert.match(down.statusMessage, /has not renewed its lease/);
    kube.startRenewingLease("gpu-a");
    await hostBecomes("gpu-a", "is ONLINE again", (h) => h.status === HostStatus.ONLINE);
  });

  it("is cordoned while the node is unschedulable: no environment is placed there until it is uncordoned", async () => {
    const ws = (await server.client(WorkspaceService).createWorkspace({ name: "node-team" })).workspace!.id;
    const envs = server.client(EnvironmentService);
    kube.setNodeUnschedulable("gpu-a", true);
    const cordoned = await hostBecomes("gpu-a", "is cordoned", (h) => !h.schedulable);
    assert.equal(cordoned.status, HostStatus.ONLINE);
    await expectCode(envs.createEnvironment({ workspaceId: ws, name: "nb", image: "busybox", gpuCount: 1 }), Code.ResourceExhausted);

    kube.setNodeUnschedulable("gpu-a", false);
    await hostBecomes("gpu-a", "is schedulable", (h) => h.schedulable);
    const created = (await envs.createEnvironment({ workspaceId: ws, name: "nb", image: "busybox", gpuCount: 2 })).environment!;
    assert.equal(created.hostId, cordoned.id);
    const pod = await eventually(
      "the environment's pod",
      () => kube.list("pods", `rgpu-${ws}`).find((p) => p.metadata.labels["remotegpu.io/environment-id"] === created.id),
      polling,
    );
    assert.equal(pod.spec.nodeName, "gpu-a");
  });

  it("follows the node's GPU count and model", async () => {
    const host = await hostBecomes("gpu-a", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    kube.setNodeAllocatable("gpu-a", { "nvidia.com/gpu": "3" });
    await eventually("GPU 3 OFFLINE", async () => (await gpusOf(host.id))[3]?.status === GpuStatus.OFFLINE, polling);
    kube.setNodeAllocatable("gpu-a", { "nvidia.com/gpu": "4" });
    kube.setNodeLabels("gpu-a", { "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" });
    const gpus = await eventually(
      "four H100s",
      async () => {
        const g = await gpusOf(host.id);
        return g.every((x) => x.model === "NVIDIA-H100-80GB-HBM3" && x.status !== GpuStatus.OFFLINE) && g;
      },
      polling,
    );
    assert.equal(gpus.length, 4);
  });

  it("recovers from a broken watch and from 410 Gone, and stays quiet while nothing changes", async () => {
    await hostBecomes("gpu-a", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    assert.ok(kube.breakWatches("destroy") >= 2, "the node and lease watches were open");
    kube.setNodeReady("gpu-a", false);
    await hostBecomes("gpu-a", "is OFFLINE after the break", (h) => h.status === HostStatus.OFFLINE);

    const lists = () => kube.requests.filter((r) => r.path === "/api/v1/nodes" && !r.query.includes("watch=true")).length;
    const before = lists();
    kube.renewLease("gpu-a"); // the API's resourceVersion moves past the last one the node watch saw
    kube.compact();
    kube.breakWatches("end"); // resumes from a resourceVersion that is now too old: 410, then a new list
    kube.setNodeReady("gpu-a", true);
    await hostBecomes("gpu-a", "is ONLINE after the 410", (h) => h.status === HostStatus.ONLINE);
    assert.ok(lists() > before, "the nodes were listed again");

    // Idle: the two watches stay open, nothing more is asked of the API server about nodes.
    await new Promise((r) => setTimeout(r, 1_000));
    const idleFrom = kube.requests.length;
    await new Promise((r) => setTimeout(r, 3_000));
    assert.deepEqual(
      kube.requests.slice(idleFrom).filter((r) => /\/(nodes|leases)\b/.test(r.path)),
      [],
    );
  });

  it("keeps manual registration working beside it, heartbeats and all", async () => {
    const { host, agentToken } = await hostApi.createHost({
      name: "manual-k8s",
      address: "10.9.0.1",
      runtime: HostRuntime.KUBERNETES,
      kubernetesNodeName: "not-selected",
    });
    assert.ok(agentToken);
    assert.equal(host?.status, HostStatus.OFFLINE);
    await gpuApi.createGpu({ hostId: host!.id, index: 0, uuid: "GPU-manual-0", model: "L4", memoryBytes: 24n << 30n });
    await hostApi.heartbeat({ hostId: host!.id });
    assert.equal((await hostNamed("manual-k8s"))?.status, HostStatus.ONLINE);
    // No more heartbeats: it expires after the grace period, as a manually registered host does.
    await hostBecomes("manual-k8s", "is OFFLINE without heartbeats", (h) => h.status === HostStatus.OFFLINE);
    assert.equal((await hostNamed("manual-k8s"))?.gpuCount, 1);
    assert.equal((await hostNamed("gpu-a"))?.status, HostStatus.ONLINE);
  });

  it("sets the host OFFLINE, and keeps it, when its node is deleted", async () => {
    const host = await hostBecomes("gpu-a", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    kube.deleteNode("gpu-a");
    const gone = await hostBecomes("gpu-a", "is OFFLINE", (h) => h.status === HostStatus.OFFLINE);
    assert.equal(gone.id, host.id);
    assert.match(gone.statusMessage, /was deleted/);
    assert.equal(gone.gpuCount, 4, "its GPUs are kept (one of its environments holds some)");
    // Back under the same name: the same host again.
    kube.addNode("gpu-a", { labels: A100, allocatable: { "nvidia.com/gpu": "4" }, address: "10.1.0.1", leaseDurationSeconds: 2 });
    const back = await hostBecomes("gpu-a", "is ONLINE", (h) => h.status === HostStatus.ONLINE);
    assert.equal(back.id, host.id);
  });

  it("asks only for nodes and leases, with verbs deploy/rbac.yaml allows", async () => {
    const role = loadAllYaml(await readFile(new URL("../../deploy/rbac.yaml", import.meta.url), "utf8")).find(
      (d) => d.kind === "ClusterRole",
    );
    const rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[] = role.rules;
    const asked = new Set<string>();
    for (const r of kube.requests) {
      const m = /^\/(?:api\/v1|apis\/([^/]+)\/v1)\/(?:namespaces\/([^/]+)\/)?(nodes|leases)(?:\/([^/]+))?$/.exec(r.path);
      if (!m) continue;
      const [, group = "", namespace = "", plural, name] = m;
      const verb = r.method !== "GET" ? r.method : name ? "get" : r.query.includes("watch=true") ? "watch" : "list";
      asked.add(`${verb} ${group}/${plural}${namespace && ` in ${namespace}`}`);
      assert.ok(
        rules.some((rule) => rule.apiGroups.includes(group) && rule.resources.includes(plural!) && rule.verbs.includes(verb)),
        `${verb} ${group}/${plural} is not allowed by deploy/rbac.yaml`,
      );
    }
    assert.deepEqual([...asked].sort(), [
      "list /nodes",
      "list coordination.k8s.io/leases in kube-node-lease",
      "watch /nodes",
      "watch coordination.k8s.io/leases in kube-node-lease",
    ]);
  });

  it("is done by one replica: another takes over when the leader goes", async () => {
    const second = await startTestServer({ clock: systemClock, db: server.db, env: env(kube.kubeconfigPath) });
    try {
      const nodeCalls = () => kube.requests.filter((r) => r.path === "/api/v1/nodes").length;
      const before = nodeCalls();
      await new Promise((r) => setTimeout(r, 6_000)); // past a follower's asking to lead
      assert.equal(nodeCalls(), before, "the second replica does not watch nodes while the first leads");

      await server.app.close();
      firstClosed = true;
      hostApi = second.client(HostService);
      gpuApi = second.client(GpuService);
      kube.setNodeReady("gpu-a", false);
      await hostBecomes("gpu-a", "is OFFLINE, as the new leader saw", (h) => h.status === HostStatus.OFFLINE);
      assert.ok(nodeCalls() > before, "the new leader lists and watches the nodes");
    } finally {
      await second.close();
    }
  });
});

describe("what a Node says of its host", () => {
  const node = (over: Partial<ObservedNode> = {}): ObservedNode => ({
    name: "n1",
    labels: A100,
    unschedulable: false,
    allocatable: { cpu: "15500m", memory: "6553600Ki", "ephemeral-storage": "1e12", "nvidia.com/gpu": "2" },
    ready: { status: "True", reason: "KubeletReady", message: "" },
    addresses: [{ type: "Hostname", address: "n1.local" }],
    ...over,
  });

  it("takes capacity and GPUs from allocatable and the GFD labels", () => {
    const facts = describeNode(node(), undefined, 0);
    assert.equal(facts.cpuMillicores, 15_500);
    assert.equal(facts.memoryBytes, 6_553_600 * 1024);
    assert.equal(facts.diskBytes, 1e12);
    assert.equal(facts.address, "n1.local");
    assert.deepEqual(
      facts.gpus.map((g) => g.uuid),
      ["k8s-n1-0", "k8s-n1-1"],
      "allocatable (2) wins over GFD's count (4)",
    );
    assert.equal(describeNode(node({ allocatable: {} }), undefined, 0).gpus.length, 4, "without a device plugin, GFD's count");
  });

  describe("in the MIG 'mixed' strategy", () => {
    // An H100 node as NVIDIA's device plugin and GFD show it: GPUs 0 and 1 in MIG mode (four 1g.10gb
    // and one 3g.40gb slices in all), GPU 2 whole.
    const H100_MIXED = {
      ...IN_POOL,
      "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
      "nvidia.com/gpu.memory": "81559",
      "nvidia.com/gpu.count": "3",
      "nvidia.com/mig.strategy": "mixed",
      "nvidia.com/mig-1g.10gb.count": "4",
      "nvidia.com/mig-1g.10gb.memory": "9856",
      "nvidia.com/mig-1g.10gb.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
      "nvidia.com/mig-1g.10gb.multiprocessors": "16",
      "nvidia.com/mig-1g.10gb.slices.gi": "1",
      "nvidia.com/mig-1g.10gb.slices.ci": "1",
      "nvidia.com/mig-3g.40gb.count": "1",
      "nvidia.com/mig-3g.40gb.memory": "40192",
      "nvidia.com/mig-3g.40gb.product": "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb",
      "nvidia.com/mig-3g.40gb.multiprocessors": "60",
      "nvidia.com/mig-3g.40gb.slices.gi": "3",
      "nvidia.com/mig-3g.40gb.slices.ci": "3",
      "nvidia.com/cuda.driver.major": "550",
      "nvidia.com/cuda.driver.minor": "54",
      "nvidia.com/cuda.driver.rev": "15",
    };
    const mixed = (allocatable: Record<string, string>, labels: Record<string, string> = {}) =>
      describeNode(
        node({ labels: { ...H100_MIXED, ...labels }, allocatable: { cpu: "64", memory: "512Gi", ...allocatable } }),
        undefined,
        0,
      ).gpus;
    const MiB = 2 ** 20;
    /** index, uuid, model, memory in MiB, and for a slice its parent's uuid, profile and device index. */
    const rows = (gpus: ReturnType<typeof mixed>) =>
      gpus.map((g) => [
        g.index,
        g.uuid,
        g.model,
        g.memoryBytes / MiB,
        ...(g.migEnabled ? ["MIG mode"] : []),
        ...(g.mig ? [g.mig.parentUuid, g.mig.profile, g.mig.deviceIndex] : []),
      ]);

    it("lists the whole GPUs, then each GPU in MIG mode with its slices laid out after it", () => {
      const gpus = mixed({ "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "4", "nvidia.com/mig-3g.40gb": "1" });
      const h100 = "NVIDIA-H100-80GB-HBM3";
      assert.deepEqual(rows(gpus), [
        [0, "k8s-n1-0", h100, 81559],
        // GFD counts 3 GPUs, 1 of them whole: 2 in MIG mode, though the 7 compute slices fit on one.
        [1, "k8s-n1-1", h100, 81559, "MIG mode"],
        [2000, "k8s-n1-1-mig-0-3g.40gb", h100, 40192, "k8s-n1-1", "3g.40gb", 0],
        [2001, "k8s-n1-1-mig-1-1g.10gb", h100, 9856, "k8s-n1-1", "1g.10gb", 1],
        [2002, "k8s-n1-1-mig-2-1g.10gb", h100, 9856, "k8s-n1-1", "1g.10gb", 2],
        [2003, "k8s-n1-1-mig-3-1g.10gb", h100, 9856, "k8s-n1-1", "1g.10gb", 3],
        [2004, "k8s-n1-1-mig-4-1g.10gb", h100, 9856, "k8s-n1-1", "1g.10gb", 4],
        [2, "k8s-n1-2", h100, 81559, "MIG mode"],
      ]);
      assert.ok(gpus.every((g) => g.driverVersion === "550.54.15"));
      assert.equal(new Set(gpus.map((g) => g.uuid)).size, gpus.length, "every UUID is its own");
      // The same node gives the same inventory every time.
      assert.deepEqual(mixed({ "nvidia.com/mig-3g.40gb": "1", "nvidia.com/mig-1g.10gb": "4", "nvidia.com/gpu": "1" }), gpus);
    });

    it("follows a change of the MIG layout: more GPUs when the slices need them, other slices when the profiles change", () => {
      // Two 4g.40gb and two 3g.40gb: no two 4g fit on one GPU, a 4g and a 3g do.
      const gpus = mixed({ "nvidia.com/gpu": "0", "nvidia.com/mig-3g.40gb": "2", "nvidia.com/mig-4g.40gb": "2" });
      assert.deepEqual(
        gpus.map((g) => [g.index, g.mig?.profile ?? (g.migEnabled ? "MIG mode" : "whole")]),
        [
          [0, "MIG mode"],
          [1000, "4g.40gb"],
          [1001, "3g.40gb"],
          [1, "MIG mode"],
          [2000, "4g.40gb"],
          [2001, "3g.40gb"],
          [2, "MIG mode"],
        ],
      );
      assert.equal(gpus[1]!.memoryBytes, 40 * 1024 * MiB, "without GFD's label, the memory the profile names");
      // Nine 1g.10gb, more than one GPU holds, on a node whose GFD count is behind: as many GPUs as it takes.
      const more = mixed({ "nvidia.com/mig-1g.10gb": "9" }, { "nvidia.com/gpu.count": "1" });
      assert.deepEqual(
        more.filter((g) => g.migEnabled).map((g) => g.uuid),
        ["k8s-n1-0", "k8s-n1-1"],
      );
      assert.deepEqual(
        more.filter((g) => g.mig).map((g) => g.index),
        [1000, 1001, 1002, 1003, 1004, 1005, 1006, 2000, 2001],
      );
      // A slice whose profile changed is another slice: the one that was there is no longer reported.
      const before = new Set(
        mixed({ "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "4", "nvidia.com/mig-3g.40gb": "1" }).map((g) => g.uuid),
      );
      const after = mixed({ "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-3g.40gb": "2" });
      assert.deepEqual(
        after.filter((g) => g.mig).map((g) => [g.uuid, before.has(g.uuid)]),
        [
          ["k8s-n1-1-mig-0-3g.40gb", true],
          ["k8s-n1-1-mig-1-3g.40gb", false],
          ["k8s-n1-1-mig-2-1g.10gb", true],
        ],
      );
      // MIG turned off again: whole GPUs, as before MIG.
      assert.deepEqual(rows(mixed({ "nvidia.com/gpu": "3" })), [
        [0, "k8s-n1-0", "NVIDIA-H100-80GB-HBM3", 81559],
        [1, "k8s-n1-1", "NVIDIA-H100-80GB-HBM3", 81559],
        [2, "k8s-n1-2", "NVIDIA-H100-80GB-HBM3", 81559],
      ]);
    });

    it("keeps the GPUs not offered whole in MIG mode while no slice is offered (the device plugin restarting)", () => {
      const h100 = "NVIDIA-H100-80GB-HBM3";
      const before = mixed({ "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "4", "nvidia.com/mig-3g.40gb": "1" });
      // While the device plugin is away, the kubelet offers 0 of each of its resources.
      assert.deepEqual(rows(mixed({ "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "0", "nvidia.com/mig-3g.40gb": "0" })), [
        [0, "k8s-n1-0", h100, 81559],
        [1, "k8s-n1-1", h100, 81559, "MIG mode"],
        [2, "k8s-n1-2", h100, 81559, "MIG mode"],
      ]);
      // Nothing offered, or the resources gone from the Node after a long outage: none of GFD's GPUs is whole.
      const nothingOffered: Record<string, string>[] = [
        { "nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "0" },
        { "nvidia.com/mig-1g.10gb": "0" },
        {},
      ];
      for (const allocatable of nothingOffered) {
        assert.deepEqual(
          mixed(allocatable).map((g) => [g.uuid, g.migEnabled, g.mig]),
          [
            ["k8s-n1-0", true, undefined],
            ["k8s-n1-1", true, undefined],
            ["k8s-n1-2", true, undefined],
          ],
          JSON.stringify(allocatable),
        );
      }
      // Back: the same parents, the same slices under them.
      assert.deepEqual(mixed({ "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "4", "nvidia.com/mig-3g.40gb": "1" }), before);

      // Without the mixed strategy, a node that offers no slice has GFD's count of whole GPUs, as before MIG.
      const withoutStrategy = Object.fromEntries(Object.entries(H100_MIXED).filter(([k]) => k !== "nvidia.com/mig.strategy"));
      for (const labels of [
        withoutStrategy,
        { ...H100_MIXED, "nvidia.com/mig.strategy": "none" },
        { ...H100_MIXED, "nvidia.com/mig.strategy": "single" },
      ]) {
        const gpus = describeNode(node({ labels, allocatable: { "nvidia.com/mig-1g.10gb": "0" } }), undefined, 0).gpus;
        assert.deepEqual(
          gpus.map((g) => [g.uuid, g.migEnabled]),
          [
            ["k8s-n1-0", undefined],
            ["k8s-n1-1", undefined],
            ["k8s-n1-2", undefined],
          ],
          labels["nvidia.com/mig.strategy"] ?? "no strategy label",
        );
      }
    });

    it("leaves nodes without MIG resources as they were", () => {
      // Mixed, every GPU offered whole: the same GPUs as without the label.
      const allGpus = { allocatable: { cpu: "15500m", "nvidia.com/gpu": "4" } };
      const plain = describeNode(node({ labels: { ...A100, "nvidia.com/mig.strategy": "mixed" }, ...allGpus }), undefined, 0).gpus;
      assert.deepEqual(plain, describeNode(node(allGpus), undefined, 0).gpus);
      assert.equal(plain.length, 4);
      assert.deepEqual(Object.keys(plain[0]!), ["index", "uuid", "model", "memoryBytes", "driverVersion", "cudaVersion"]);
      // A resource that only looks like a MIG one, or none left of a profile, is no slice.
      const odd = describeNode(
        node({ allocatable: { "nvidia.com/gpu": "2", "nvidia.com/mig-foo": "3", "nvidia.com/mig-1g.10gb": "0" } }),
        undefined,
        0,
      );
      assert.deepEqual(odd.gpus, describeNode(node(), undefined, 0).gpus);
    });
  });

  it("is not ready with a lapsed lease, nor without a Ready condition", () => {
    const lease = { renewTime: 1, durationMs: 40_000, observedAt: 0 };
    assert.equal(describeNode(node(), lease, 49_000).ready, true);
    assert.equal(describeNode(node(), lease, 51_000).ready, false);
    assert.equal(describeNode(node({ ready: undefined }), undefined, 0).ready, false);
    assert.equal(describeNode(node({ ready: { status: "Unknown", reason: "NodeStatusUnknown", message: "" } }), undefined, 0).ready, false);
  });

  it("reads quantities", () => {
    assert.deepEqual(["1", "250m", "2Gi", "1k", "1.5", "", "x", "-1"].map(quantity), [1, 0.25, 2 ** 31, 1000, 1.5, 0, 0, 0]);
  });
});
