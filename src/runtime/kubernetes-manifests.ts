// The Kubernetes objects of one environment, as plain manifests (pure functions, validated in tests).
import type {
  V1Ingress,
  V1Namespace,
  V1ObjectMeta,
  V1OwnerReference,
  V1PersistentVolumeClaim,
  V1Pod,
  V1Secret,
  V1Service,
} from "@kubernetes/client-node";
import type { WorkloadSpec } from "./runtime.js";

export interface KubernetesOptions {
  /** Namespaces are `<prefix><workspace id>`. @default "rgpu-" */
  namespacePrefix: string;
  /** Storage class of volumes; undefined for the cluster's default. */
  storageClass?: string;
  /** @default "ReadWriteOnce" */
  accessMode: string;
  /** Where the volume is mounted in the container. @default "/workspace" */
  mountPath: string;
  /**
   * "device-plugin": GPUs as `nvidia.com/gpu: N` (the device plugin picks them); "visible-devices":
   * `NVIDIA_VISIBLE_DEVICES` set to the allocated UUIDs, with `runtimeClassName`. @default "device-plugin"
   */
  gpuMode: "device-plugin" | "visible-devices";
  /** Runtime class for visible-devices mode. @default "nvidia" */
  runtimeClass: string;
  /** HTTP ports get an Ingress host `<port>-<env>-<workspace>.<baseDomain>`; none without a domain. */
  ingressBaseDomain?: string;
  ingressClass?: string;
  /** NodePorts the cluster allows; a host port outside them gets a ClusterIP service. @default 30000-32767 */
  nodePortRange: { first: number; last: number };
}

export const ENVIRONMENT_LABEL = "remotegpu.io/environment-id";
export const WORKSPACE_LABEL = "remotegpu.io/workspace";
export const GENERATION_ANNOTATION = "remotegpu.io/generation";
export const CONTAINER = "workload";

export function namespaceOf(spec: Pick<WorkloadSpec, "workspaceId">, o: Pick<KubernetesOptions, "namespacePrefix">): string {
  return `${o.namespacePrefix}${spec.workspaceId}`;
}

/** Every object of an environment has this name; kinds tell them apart. */
export function objectName(environmentId: string): string {
  return `env-${environmentId}`;
}

function meta(spec: WorkloadSpec, o: KubernetesOptions, owner?: V1OwnerReference): V1ObjectMeta {
  return {
    name: objectName(spec.environmentId),
    namespace: namespaceOf(spec, o),
    labels: { [ENVIRONMENT_LABEL]: spec.environmentId, [WORKSPACE_LABEL]: spec.workspaceId, "app.kubernetes.io/managed-by": "remotegpu" },
    ownerReferences: owner ? [owner] : undefined,
  };
}

export function namespaceManifest(spec: WorkloadSpec, o: KubernetesOptions): V1Namespace {
  return {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name: namespaceOf(spec, o), labels: { [WORKSPACE_LABEL]: spec.workspaceId, "app.kubernetes.io/managed-by": "remotegpu" } },
  };
}

/** The Secret carries the SSH keys and owns every other object, so deleting it cascades. */
export function secretManifest(spec: WorkloadSpec, o: KubernetesOptions): V1Secret {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: meta(spec, o),
    type: "Opaque",
    stringData: { authorized_keys: spec.sshPublicKeys.map((k) => `${k}\n`).join("") },
  };
}

export function ownerOf(secret: V1Secret): V1OwnerReference {
  return {
    apiVersion: "v1",
    kind: "Secret",
    name: secret.metadata!.name!,
    uid: secret.metadata!.uid!,
    blockOwnerDeletion: true,
    controller: true,
  };
}

export function volumeClaimManifest(spec: WorkloadSpec, o: KubernetesOptions, owner: V1OwnerReference): V1PersistentVolumeClaim {
  const gib = Math.max(1, Math.ceil(spec.storageBytes / 2 ** 30));
  return {
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: meta(spec, o, owner),
    spec: { accessModes: [o.accessMode], storageClassName: o.storageClass, resources: { requests: { storage: `${gib}Gi` } } },
  };
}

export function podManifest(spec: WorkloadSpec, o: KubernetesOptions, owner: V1OwnerReference): V1Pod {
  const resources: Record<string, string> = {};
  if (spec.cpuMillicores > 0) resources.cpu = `${spec.cpuMillicores}m`;
  if (spec.memoryBytes > 0) resources.memory = String(spec.memoryBytes);
  const limits: Record<string, string> = { ...resources };
  const env = Object.entries({ ...portEnv(spec), ...spec.env }).map(([name, value]) => ({ name, value }));
  if (spec.gpuUuids.length > 0 && o.gpuMode === "device-plugin") limits["nvidia.com/gpu"] = String(spec.gpuUuids.length);
  if (o.gpuMode === "visible-devices")
    env.push({ name: "NVIDIA_VISIBLE_DEVICES", value: spec.gpuUuids.length > 0 ? spec.gpuUuids.join(",") : "void" });
  const m = meta(spec, o, owner);
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { ...m, annotations: { [GENERATION_ANNOTATION]: String(spec.generation) } },
    spec: {
      // Placed by the scheduler of RemoteGPU (which chose the GPUs), not by Kubernetes'.
      nodeName: spec.nodeName,
      restartPolicy: "Never",
      runtimeClassName: o.gpuMode === "visible-devices" && spec.gpuUuids.length > 0 ? o.runtimeClass : undefined,
      containers: [
        {
          name: CONTAINER,
          image: spec.image,
          command: spec.command.length > 0 ? spec.command : undefined,
          args: spec.args.length > 0 ? spec.args : undefined,
          env,
          ports: spec.ports.map((p) => ({ name: p.name, containerPort: p.containerPort, protocol: "TCP" })),
          resources: {
            requests: Object.keys(resources).length > 0 ? resources : undefined,
            limits: Object.keys(limits).length > 0 ? limits : undefined,
          },
          volumeMounts: [
            { name: "volume", mountPath: o.mountPath },
            { name: "ssh", mountPath: "/etc/remotegpu/ssh", readOnly: true },
          ],
        },
      ],
      volumes: [
        { name: "volume", persistentVolumeClaim: { claimName: objectName(spec.environmentId) } },
        { name: "ssh", secret: { secretName: objectName(spec.environmentId), defaultMode: 0o600 } },
      ],
    },
  };
}

/**
 * `PORT` and `PORT_<NAME>`, as the agent sets them: PORT is the server's (spec.env, which wins) or
 * else the first port; each port also by its name, upper-cased with other characters as '_'.
 */
function portEnv(spec: WorkloadSpec): Record<string, string> {
  const env: Record<string, string> = {};
  if (spec.ports[0]) env.PORT = String(spec.ports[0].containerPort);
  for (const p of spec.ports) env[`PORT_${p.name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`] = String(p.containerPort);
  return env;
}

/** A Service for the ports: NodePort on the allocated host port when the cluster allows it, else ClusterIP. */
export function serviceManifest(spec: WorkloadSpec, o: KubernetesOptions, owner: V1OwnerReference): V1Service | undefined {
  if (spec.ports.length === 0) return undefined;
  const nodePorts = spec.ports.every((p) => p.hostPort >= o.nodePortRange.first && p.hostPort <= o.nodePortRange.last);
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: meta(spec, o, owner),
    spec: {
      type: nodePorts ? "NodePort" : "ClusterIP",
      selector: { [ENVIRONMENT_LABEL]: spec.environmentId },
      ports: spec.ports.map((p) => ({
        name: p.name,
        port: p.containerPort,
        targetPort: p.containerPort,
        protocol: "TCP",
        nodePort: nodePorts ? p.hostPort : undefined,
      })),
    },
  };
}

/** An Ingress for the HTTP ports, one host name each; none without a base domain or HTTP ports. */
export function ingressManifest(spec: WorkloadSpec, o: KubernetesOptions, owner: V1OwnerReference): V1Ingress | undefined {
  const http = spec.ports.filter((p) => p.protocol === "HTTP");
  if (!o.ingressBaseDomain || http.length === 0) return undefined;
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "Ingress",
    metadata: meta(spec, o, owner),
    spec: {
      ingressClassName: o.ingressClass,
      rules: http.map((p) => ({
        host: ingressHost(p.name, spec, o.ingressBaseDomain!),
        http: {
          paths: [
            {
              path: "/",
              pathType: "Prefix",
              backend: { service: { name: objectName(spec.environmentId), port: { number: p.containerPort } } },
            },
          ],
        },
      })),
    },
  };
}

export function ingressHost(port: string, spec: Pick<WorkloadSpec, "name" | "workspaceName">, baseDomain: string): string {
  return `${port}-${spec.name}-${spec.workspaceName}.${baseDomain}`;
}
