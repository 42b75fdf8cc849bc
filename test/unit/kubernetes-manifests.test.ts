import { strict as assert } from "node:assert";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Pod } from "kubernetes-models/v1/Pod";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { Ingress } from "kubernetes-models/networking.k8s.io/v1/Ingress";
import {
  ingressManifest,
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
    const envOf = (s: WorkloadSpec) =>
      Object.fromEntries(podManifest(s, options, owner).spec!.containers[0]!.env!.map((e) => [e.name, e.value]));
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
      ["jupyter-notebook-ml-team.gpu.example.com"],
    );
    assert.equal(ingress.spec!.ingressClassName, "nginx");
    assert.equal(ingressManifest(spec, { ...options, ingressBaseDomain: undefined }, owner), undefined);
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
