import { strict as assert } from "node:assert";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Pod } from "kubernetes-models/v1/Pod";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { Ingress } from "kubernetes-models/networking.k8s.io/v1/Ingress";
import {
  ingressHost,
  ingressManifest,
  ingressUrl,
  namespaceManifest,
  podManifest,
  secretManifest,
  serviceManifest,
  volumeClaimManifest,
  type KubernetesOptions,
} from "../../src/runtime/kubernetes-manifests.js";
import { podState } from "../../src/runtime/kubernetes-runtime.js";
import type { WorkloadSpec } from "../../src/runtime/runtime.js";

const options: KubernetesOptions = {
  namespacePrefix: "rgpu-",
  accessMode: "ReadWriteOnce",
  mountPath: "/workspace",
  gpuMode: "device-plugin",
  runtimeClass: "nvidia",
  ingressBaseDomain: "gpu.example.com",
  ingressClass: "nginx",
  nodePortRange: { first: 30000, last: 32767 },
  imagePullTimeoutSeconds: 300,
};
const spec: WorkloadSpec = {
  environmentId: "0b7c6f2e-5b1a-4c3d-9e8f-112233445566",
  name: "notebook",
  workspaceId: "9a8b7c6d-1e2f-4a5b-8c9d-aabbccddeeff",
  workspaceName: "ml-team",
  hostId: "h",
  nodeName: "gpu-node-7",
  image: "jupyter/base-notebook:latest",
  command: ["start-notebook.sh"],
  args: ["--port=8888"],
  env: { MODE: "dev" },
  gpuUuids: ["GPU-aaa", "GPU-bbb"],
  gpuIndices: [0, 1],
  ports: [
    { name: "jupyter", containerPort: 8888, hostPort: 30101, protocol: "HTTP" },
    { name: "ssh", containerPort: 22, hostPort: 30102, protocol: "TCP" },
  ],
  cpuMillicores: 4000,
  memoryBytes: 16 * 2 ** 30,
  storageBytes: 50 * 2 ** 30,
  sshPublicKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMock user@laptop"],
  generation: 3,
};
const owner = { apiVersion: "v1", kind: "Secret", name: "env-x", uid: "uid-1", controller: true, blockOwnerDeletion: true };
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** The first label of a host name, the one RemoteGPU makes. */
const labelOf = (host: string) => host.slice(0, host.indexOf("."));
const envOf = (s: WorkloadSpec, o: KubernetesOptions = options) =>
  Object.fromEntries(podManifest(s, o, owner).spec!.containers[0]!.env!.map((e) => [e.name, e.value]));

describe("Kubernetes manifests", () => {
  it("are valid Kubernetes objects in both GPU modes", () => {
    for (const gpuMode of ["device-plugin", "visible-devices"] as const) {
      const o = { ...options, gpuMode };
      new Namespace(namespaceManifest(spec, o) as never).validate();
      new Secret(secretManifest(spec, o) as never).validate();
      new PersistentVolumeClaim(volumeClaimManifest(spec, o, owner) as never).validate();
      new Pod(podManifest(spec, o, owner) as never).validate();
      new Service(serviceManifest(spec, o, owner) as never).validate();
      new Ingress(ingressManifest(spec, o, owner) as never).validate();
    }
    // And the validator does catch a malformed one.
    const broken = podManifest(spec, options, owner);
    (broken.spec!.containers[0] as { name?: unknown }).name = 42;
    assert.throws(() => new Pod(broken as never).validate());
  });

  it("pins the pod to the host's node with its GPUs, resources, volume and SSH keys", () => {
    const pod = podManifest(spec, options, owner);
    const c = pod.spec!.containers[0]!;
    assert.equal(pod.spec!.nodeName, "gpu-node-7");
    assert.equal(pod.metadata!.namespace, `rgpu-${spec.workspaceId}`);
    assert.equal(pod.metadata!.labels!["remotegpu.io/environment-id"], spec.environmentId);
    assert.deepEqual(pod.metadata!.ownerReferences, [owner]);
    assert.equal(c.resources!.limits!["nvidia.com/gpu"], "2");
    assert.equal(c.resources!.requests!.cpu, "4000m");
    assert.deepEqual(
      c.volumeMounts!.map((m) => m.mountPath),
      ["/workspace", "/etc/remotegpu/ssh"],
    );
    assert.equal(pod.spec!.volumes![0]!.persistentVolumeClaim!.claimName, `env-${spec.environmentId}`);

    const visible = podManifest(spec, { ...options, gpuMode: "visible-devices" }, owner);
    assert.equal(visible.spec!.runtimeClassName, "nvidia");
    assert.deepEqual(
      visible.spec!.containers[0]!.env!.find((e) => e.name === "NVIDIA_VISIBLE_DEVICES"),
      { name: "NVIDIA_VISIBLE_DEVICES", value: "GPU-aaa,GPU-bbb" },
    );
    assert.equal(visible.spec!.containers[0]!.resources!.limits!["nvidia.com/gpu"], undefined);
    assert.equal(secretManifest(spec, options).stringData!.authorized_keys, `${spec.sshPublicKeys[0]}\n`);
    assert.equal(volumeClaimManifest(spec, options, owner).spec!.resources!.requests!.storage, "50Gi");
  });

  it("sets PORT as the agent does: the server's PORT when it sent one, else the first port; and PORT_<NAME> per port", () => {
    assert.deepEqual(envOf(spec), { MODE: "dev", PORT: "8888", PORT_JUPYTER: "8888", PORT_SSH: "22" });
    // The environment's first port was removed: the server keeps PORT where it was.
    const kept = {
      ...spec,
      env: { ...spec.env, PORT: "8888" },
      ports: [{ name: "my-ssh", containerPort: 22, hostPort: 30102, protocol: "TCP" as const }],
    };
    assert.deepEqual(envOf(kept), { MODE: "dev", PORT: "8888", PORT_MY_SSH: "22" });
    assert.deepEqual(envOf({ ...spec, ports: [] }), { MODE: "dev" });
  });

  it("gives a pod without GPUs NVIDIA_VISIBLE_DEVICES=void in both GPU modes, and no runtime class", () => {
    const none = { ...spec, gpuUuids: [], gpuIndices: [] };
    for (const gpuMode of ["device-plugin", "visible-devices"] as const) {
      const o = { ...options, gpuMode };
      const pod = podManifest(none, o, owner);
      new Pod(pod as never).validate();
      assert.equal(envOf(none, o).NVIDIA_VISIBLE_DEVICES, "void", gpuMode);
      assert.equal(pod.spec!.runtimeClassName, undefined, gpuMode);
      assert.equal(pod.spec!.containers[0]!.resources!.limits!["nvidia.com/gpu"], undefined, gpuMode);
    }
  });

  it("never lets the environment's own variables choose devices, in either GPU mode", () => {
    // Refused at creation; an environment stored before that still must not reach other GPUs.
    const sneaky = {
      ...spec,
      env: { MODE: "dev", NVIDIA_VISIBLE_DEVICES: "all", cuda_visible_devices: "0,1,2,3", NVIDIA_DRIVER_CAPABILITIES: "all" },
    };
    for (const gpuMode of ["device-plugin", "visible-devices"] as const) {
      const env = envOf(sneaky, { ...options, gpuMode });
      assert.equal(env.MODE, "dev");
      assert.equal(env.cuda_visible_devices, undefined);
      assert.equal(env.NVIDIA_DRIVER_CAPABILITIES, undefined);
      assert.equal(env.NVIDIA_VISIBLE_DEVICES, gpuMode === "visible-devices" ? "GPU-aaa,GPU-bbb" : undefined);
    }
    assert.equal(envOf({ ...sneaky, gpuUuids: [], gpuIndices: [] }).NVIDIA_VISIBLE_DEVICES, "void");
  });

  it("in visible-devices mode names GPUs by UUID (MIG ones too), or by index when some have no real UUID", () => {
    const o = { ...options, gpuMode: "visible-devices" as const };
    const mig = { ...spec, gpuUuids: ["MIG-1234", "GPU-bbb"], gpuIndices: [0, 1] };
    assert.equal(envOf(mig, o).NVIDIA_VISIBLE_DEVICES, "MIG-1234,GPU-bbb");
    // Hosts registered from Node objects have GPUs known only as k8s-<node>-<index>.
    const synthetic = { ...spec, gpuUuids: ["k8s-gpu-node-7-2", "k8s-gpu-node-7-5"], gpuIndices: [2, 5] };
    assert.equal(envOf(synthetic, o).NVIDIA_VISIBLE_DEVICES, "2,5");
    assert.equal(podManifest(synthetic, o, owner).spec!.runtimeClassName, "nvidia");
  });

  describe("with MIG slices", () => {
    // Two 1g.10gb slices: on a Kubernetes node (synthetic ids), and on a host whose agent knows their MIG UUIDs.
    const slices: WorkloadSpec = {
      ...spec,
      gpuUuids: ["k8s-gpu-node-7-0-mig-1-1g.10gb", "k8s-gpu-node-7-1-mig-0-1g.10gb"],
      gpuIndices: [1001, 2000],
      migProfile: "1g.10gb",
    };
    const real = { ...slices, gpuUuids: ["MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f", "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc40"] };
    const limitsOf = (s: WorkloadSpec, o: KubernetesOptions) => podManifest(s, o, owner).spec!.containers[0]!.resources!.limits!;

    it("asks the device plugin for the profile's resource, and never for whole GPUs beside it", () => {
      const pod = podManifest(slices, options, owner);
      new Pod(pod as never).validate();
      assert.deepEqual(limitsOf(slices, options), { cpu: "4000m", memory: String(16 * 2 ** 30), "nvidia.com/mig-1g.10gb": "2" });
      assert.equal(envOf(slices).NVIDIA_VISIBLE_DEVICES, undefined, "the device plugin sets it");
      assert.equal(pod.spec!.runtimeClassName, undefined);
      assert.equal(limitsOf({ ...slices, migProfile: "3g.40gb" }, options)["nvidia.com/mig-3g.40gb"], "2");
    });

    it("in visible-devices mode names the slices by MIG UUID", () => {
      const o = { ...options, gpuMode: "visible-devices" as const };
      const pod = podManifest(real, o, owner);
      new Pod(pod as never).validate();
      assert.equal(envOf(real, o).NVIDIA_VISIBLE_DEVICES, real.gpuUuids.join(","));
      assert.equal(pod.spec!.runtimeClassName, "nvidia");
      assert.deepEqual(limitsOf(real, o), { cpu: "4000m", memory: String(16 * 2 ** 30) });
    });

    it("in visible-devices mode refuses slices without a MIG UUID (node-registered hosts), naming K8S_GPU_MODE=device-plugin", () => {
      const o = { ...options, gpuMode: "visible-devices" as const };
      // Their layout on the GPUs is made up: "0:1,1:0" could be another profile's slices, or none.
      const oneReal = { ...slices, gpuUuids: [real.gpuUuids[0]!, slices.gpuUuids[1]!] };
      for (const s of [slices, oneReal])
        assert.throws(
          () => podManifest(s, o, owner),
          (err: Error) =>
            err.name === "InvalidArgumentError" &&
            /^migProfile: MIG slices on node-registered hosts need K8S_GPU_MODE=device-plugin/.test(err.message),
        );
      // The same slices in device-plugin mode are fine (above); whole GPUs by index are too.
      assert.equal(envOf({ ...spec, gpuUuids: ["k8s-gpu-node-7-2"], gpuIndices: [2] }, o).NVIDIA_VISIBLE_DEVICES, "2");
    });

    it("refuses a profile that makes no Kubernetes resource name", () => {
      for (const migProfile of ["1g.10gb+me", "1g 10gb", `${"1".repeat(60)}g.10gb`, "1g.10gb."])
        assert.throws(
          () => podManifest({ ...slices, migProfile }, options, owner),
          (err: Error) =>
            err.name === "InvalidArgumentError" &&
            err.message.includes(`MIG profile "${migProfile}" makes no valid Kubernetes resource name`),
          migProfile,
        );
      // Visible devices do not name the profile: nothing to refuse there.
      assert.equal(
        envOf({ ...real, migProfile: "1g.10gb+me" }, { ...options, gpuMode: "visible-devices" }).NVIDIA_VISIBLE_DEVICES,
        real.gpuUuids.join(","),
      );
    });

    it("reports a pod the node cannot give the slices to as failed, with the kubelet's reason", () => {
      // What the kubelet says of a pod bound to a node without enough of the extended resource.
      const rejected = podState({
        status: {
          phase: "Failed",
          reason: "OutOfnvidia.com/mig-1g.10gb",
          message: "Pod was rejected: Node didn't have enough resource: nvidia.com/mig-1g.10gb, requested: 2, used: 6, capacity: 7",
        },
      });
      assert.equal(rejected.state, "FAILED");
      assert.match(rejected.message, /^OutOfnvidia\.com\/mig-1g\.10gb: .*nvidia\.com\/mig-1g\.10gb, requested: 2/);
    });
  });

  it("exposes ports on NodePorts when in range (else ClusterIP) and HTTP ports through an Ingress", () => {
    const service = serviceManifest(spec, options, owner)!;
    assert.equal(service.spec!.type, "NodePort");
    assert.deepEqual(
      service.spec!.ports!.map((p) => [p.name, p.port, p.nodePort]),
      [
        ["jupyter", 8888, 30101],
        ["ssh", 22, 30102],
      ],
    );
    assert.equal(serviceManifest({ ...spec, ports: [{ ...spec.ports[0]!, hostPort: 40000 }] }, options, owner)!.spec!.type, "ClusterIP");
    const ingress = ingressManifest(spec, options, owner)!;
    assert.deepEqual(
      ingress.spec!.rules!.map((r) => r.host),
      [ingressHost("jupyter", spec, "gpu.example.com")],
    );
    assert.match(ingress.spec!.rules![0]!.host!, /^jupyter-notebook-ml-team-[a-z2-7]{13}\.gpu\.example\.com$/);
    assert.equal(ingress.spec!.ingressClassName, "nginx");
    assert.equal(ingress.spec!.tls, undefined, "no TLS unless configured");
    assert.equal(ingress.metadata!.annotations, undefined);
    assert.equal(ingressUrl("jupyter", spec, options), `http://${ingress.spec!.rules![0]!.host}/`);
    assert.equal(ingressManifest(spec, { ...options, ingressBaseDomain: undefined }, owner), undefined);
    assert.equal(ingressUrl("jupyter", spec, { ...options, ingressBaseDomain: undefined }), undefined);
  });

  it("gives ingress hosts that differ whenever the environment or port does, even when the names read alike", () => {
    // Joined with '-', workspace team-x / environment nb and workspace x / environment nb-team read the same.
    const a = ingressHost("web", { environmentId: "11111111-1111-4111-8111-111111111111", name: "nb", workspaceName: "team-x" }, "d.io");
    const b = ingressHost("web", { environmentId: "22222222-2222-4222-8222-222222222222", name: "nb-team", workspaceName: "x" }, "d.io");
    assert.notEqual(a, b);
    // Same names, another environment (a deleted one's name reused) or another port: other hosts.
    const again = { ...spec, environmentId: "0b7c6f2e-5b1a-4c3d-9e8f-665544332211" };
    assert.notEqual(ingressHost("jupyter", spec, "d.io"), ingressHost("jupyter", again, "d.io"));
    assert.notEqual(ingressHost("jupyter", spec, "d.io"), ingressHost("jupyter2", spec, "d.io"));
    // The same inputs, the same host, every time (the runtime and the port mapping compute it apart).
    assert.equal(ingressHost("jupyter", { ...spec }, "d.io"), ingressHost("jupyter", spec, "d.io"));
  });

  it("makes ingress hosts valid DNS labels whatever the names are", () => {
    const odd = [
      { port: "web", name: "x".repeat(100), workspaceName: "y".repeat(100) },
      { port: "WEB_UI", name: "My_Notebook", workspaceName: "ML Team" },
      { port: "p".repeat(100), name: "-lead-", workspaceName: "trail-" },
      { port: "web", name: "café-ñandú", workspaceName: "研究室" },
      { port: "__", name: "--", workspaceName: "" },
      { port: "web", name: "a-".repeat(40), workspaceName: "b_".repeat(40) },
    ];
    for (const [i, o] of odd.entries()) {
      const host = ingressHost(o.port, { environmentId: `env-${i}`, name: o.name, workspaceName: o.workspaceName }, "gpu.example.com");
      const label = labelOf(host);
      assert.match(label, DNS_LABEL, `${JSON.stringify(o)} gave ${host}`);
      assert.ok(label.length <= 63, `${label} is ${label.length} characters`);
      assert.ok(host.endsWith(".gpu.example.com"), host);
    }
    // Readable where it can be: lower-cased, accents dropped, other characters as '-'.
    assert.match(
      ingressHost("WEB_UI", { environmentId: "e", name: "My_Notebook", workspaceName: "ML Team" }, "d.io"),
      /^web-ui-my-notebook-ml-team-/,
    );
    assert.match(ingressHost("web", { environmentId: "e", name: "café", workspaceName: "x" }, "d.io"), /^web-cafe-x-/);
    // And a long one still validates as an Ingress.
    const long = { ...spec, name: "n".repeat(63), workspaceName: "w".repeat(63) };
    new Ingress(ingressManifest(long, options, owner) as never).validate();
  });

  it("adds one TLS block for the ingress hosts with a shared secret, or a cert-manager issuer and a secret per environment", () => {
    const web = { name: "web", containerPort: 8080, hostPort: 30103, protocol: "HTTP" as const };
    const two = { ...spec, ports: [...spec.ports, web] };
    const hosts = [ingressHost("jupyter", two, "gpu.example.com"), ingressHost("web", two, "gpu.example.com")];

    const shared = { ...options, ingressTlsSecret: "wildcard-gpu-example-com" };
    const withSecret = ingressManifest(two, shared, owner)!;
    new Ingress(withSecret as never).validate();
    assert.deepEqual(withSecret.spec!.tls, [{ hosts, secretName: "wildcard-gpu-example-com" }]);
    assert.equal(withSecret.metadata!.annotations, undefined);
    assert.equal(ingressUrl("web", two, shared), `https://${hosts[1]}/`);

    const issued = { ...options, ingressCertIssuer: "letsencrypt" };
    const withIssuer = ingressManifest(two, issued, owner)!;
    new Ingress(withIssuer as never).validate();
    assert.deepEqual(withIssuer.metadata!.annotations, { "cert-manager.io/cluster-issuer": "letsencrypt" });
    assert.deepEqual(withIssuer.spec!.tls, [{ hosts, secretName: `env-${spec.environmentId}-tls` }]);
    assert.equal(ingressUrl("jupyter", two, issued), `https://${hosts[0]}/`);
  });

  it("reads workload states from pod statuses", () => {
    assert.equal(podState({ status: { phase: "Pending" } }).state, "STARTING");
    assert.equal(podState({ status: { phase: "Running", conditions: [{ type: "Ready", status: "True" }] } }).state, "RUNNING");
    const pull = podState({
      status: {
        phase: "Pending",
        containerStatuses: [
          {
            name: "workload",
            image: "x",
            imageID: "",
            ready: false,
            restartCount: 0,
            state: { waiting: { reason: "ImagePullBackOff", message: 'Back-off pulling image "nope"' } },
          },
        ],
      },
    });
    assert.deepEqual(pull, { state: "FAILED", message: 'ImagePullBackOff: Back-off pulling image "nope"' });
    assert.deepEqual(podState({ status: { phase: "Failed", reason: "Evicted", message: "The node was low on resource: memory." } }), {
      state: "FAILED",
      message: "Evicted: The node was low on resource: memory.",
    });
    const exited = podState({
      status: {
        phase: "Failed",
        containerStatuses: [
          {
            name: "workload",
            image: "x",
            imageID: "",
            ready: false,
            restartCount: 0,
            state: { terminated: { exitCode: 137, reason: "OOMKilled" } },
          },
        ],
      },
    });
    assert.deepEqual(exited, { state: "FAILED", message: "exited with code 137 (OOMKilled)" });
  });
});
