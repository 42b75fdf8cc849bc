// The Kubernetes objects of one environment, as plain manifests (pure functions, validated in tests).
import { createHash } from "node:crypto";
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
import { InvalidArgumentError } from "../errors.js";
import { selectsDevices } from "../validation.js";
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
   * How a pod gets its GPUs. "visible-devices": `NVIDIA_VISIBLE_DEVICES` = the GPUs RemoteGPU
   * allocated (UUIDs, or indices for GPUs known only by a synthetic id), with `runtimeClassName`, so
   * the pod has exactly the GPUs GetEnvironment lists. "device-plugin": `nvidia.com/gpu: N`, and the
   * device plugin picks which; RemoteGPU then holds a count, and lists no GPU ids for the environment.
   * MIG slices (`spec.migProfile`): `nvidia.com/mig-<profile>: N` (the device plugin's "mixed"
   * strategy), or their `MIG-…` UUIDs as visible devices; slices without one (node-registered hosts)
   * are refused in visible-devices mode.
   * @default "visible-devices"
   */
  gpuMode: "device-plugin" | "visible-devices";
  /** Runtime class for visible-devices mode. @default "nvidia" */
  runtimeClass: string;
  /** HTTP ports get an Ingress host (see ingressHost) under this domain; none without a domain. */
  ingressBaseDomain?: string;
  ingressClass?: string;
  /** A Secret (in each workspace namespace) with a certificate for every ingress host: turns on TLS. */
  ingressTlsSecret?: string;
  /**
   * A cert-manager ClusterIssuer: each Ingress is annotated `cert-manager.io/cluster-issuer` and gets
   * a TLS block with a Secret of its own (`env-<id>-tls`), which cert-manager fills. Turns on TLS.
   */
  ingressCertIssuer?: string;
  /** How long an image may fail to pull before the environment FAILS. @default 300 */
  imagePullTimeoutSeconds: number;
  /** A label selector (`key=value,...`): matching nodes are registered as Kubernetes hosts. Unset: none. */
  nodeSelector?: string;
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
  // Users cannot set device-selecting variables (refused at creation); ones stored before that are dropped.
  const userEnv = Object.entries(spec.env).filter(([name]) => !selectsDevices(name));
  const env = Object.entries({ ...portEnv(spec), ...Object.fromEntries(userEnv) }).map(([name, value]) => ({ name, value }));
  const gpus = spec.gpuUuids.length;
  if (gpus > 0 && o.gpuMode === "device-plugin") limits[gpuResource(spec)] = String(gpus);
  // "void" keeps a GPU-less pod off the GPUs on nodes whose default container runtime is NVIDIA's.
  if (gpus === 0) env.push({ name: "NVIDIA_VISIBLE_DEVICES", value: "void" });
  else if (o.gpuMode === "visible-devices") env.push({ name: "NVIDIA_VISIBLE_DEVICES", value: visibleDevices(spec) });
  const m = meta(spec, o, owner);
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { ...m, annotations: { [GENERATION_ANNOTATION]: String(spec.generation) } },
    spec: {
      // Placed by the scheduler of RemoteGPU (which chose the GPUs), not by Kubernetes'.
      nodeName: spec.nodeName,
      restartPolicy: "Never",
      runtimeClassName: o.gpuMode === "visible-devices" && gpus > 0 ? o.runtimeClass : undefined,
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

/** Kubernetes' rule for the name part of a qualified name, which an extended resource's name is. */
const QUALIFIED_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

/**
 * The extended resource the device plugin offers the GPUs as: `nvidia.com/gpu`, or for MIG slices
 * `nvidia.com/mig-<profile>` (its "mixed" MIG strategy; a container gets one kind, never both).
 * A profile that makes no valid resource name is refused: the API server would refuse the pod.
 */
function gpuResource(spec: Pick<WorkloadSpec, "migProfile">): string {
  if (!spec.migProfile) return "nvidia.com/gpu";
  const name = `mig-${spec.migProfile}`;
  if (!QUALIFIED_NAME.test(name))
    throw InvalidArgumentError.field(
      "migProfile",
      `MIG profile "${spec.migProfile}" makes no valid Kubernetes resource name (nvidia.com/${name}): at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`,
    );
  return `nvidia.com/${name}`;
}

/**
 * The allocated GPUs as the NVIDIA container runtime takes them: by UUID (`GPU-…`, `MIG-…`) when
 * every one has a real UUID, else by index (hosts made from Node objects have ids of their own).
 * MIG slices only by their `MIG-…` UUIDs: those of a node-registered host have made-up ids and a
 * made-up layout (a Node does not say which GPU holds which slice), so a `<gpu>:<slice>` pair could
 * name another profile's slice, one another pod holds, or none; they are refused.
 */
function visibleDevices(spec: Pick<WorkloadSpec, "gpuUuids" | "gpuIndices" | "migProfile">): string {
  if (spec.migProfile) {
    if (spec.gpuUuids.every((u) => u.startsWith("MIG-"))) return spec.gpuUuids.join(",");
    throw InvalidArgumentError.field(
      "migProfile",
      "MIG slices on node-registered hosts need K8S_GPU_MODE=device-plugin: visible-devices mode names a slice by its MIG UUID only, and a Node does not say which slice is which",
    );
  }
  const real = spec.gpuUuids.every((u) => u.startsWith("GPU-") || u.startsWith("MIG-"));
  return (real ? spec.gpuUuids : spec.gpuIndices.map(String)).join(",");
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

export const CERT_MANAGER_ISSUER_ANNOTATION = "cert-manager.io/cluster-issuer";

/** The Secret cert-manager fills with an environment's certificate (with `ingressCertIssuer`). */
export function ingressTlsSecretName(environmentId: string): string {
  return `${objectName(environmentId)}-tls`;
}

/**
 * An Ingress for the HTTP ports, one host name each; none without a base domain or HTTP ports.
 * With a TLS secret or a cert-manager issuer configured, one TLS block covers all its hosts.
 */
export function ingressManifest(spec: WorkloadSpec, o: KubernetesOptions, owner: V1OwnerReference): V1Ingress | undefined {
  const http = spec.ports.filter((p) => p.protocol === "HTTP");
  if (!o.ingressBaseDomain || http.length === 0) return undefined;
  const hosts = http.map((p) => ingressHost(p.name, spec, o.ingressBaseDomain!));
  const secretName = o.ingressTlsSecret ?? (o.ingressCertIssuer ? ingressTlsSecretName(spec.environmentId) : undefined);
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "Ingress",
    metadata: {
      ...meta(spec, o, owner),
      annotations: o.ingressCertIssuer ? { [CERT_MANAGER_ISSUER_ANNOTATION]: o.ingressCertIssuer } : undefined,
    },
    spec: {
      ingressClassName: o.ingressClass,
      tls: secretName ? [{ hosts, secretName }] : undefined,
      rules: http.map((p, i) => ({
        host: hosts[i],
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

/** Characters of the hash that ends every ingress host label: 13 base32 characters are 65 bits. */
const HOST_HASH_LENGTH = 13;
/** How much of each name goes into the readable part: 15 + 1 + 16 + 1 + 16 + 1 + 13 = 63. */
const HOST_PART_LENGTHS = [15, 16, 16] as const;

/**
 * The host name of an HTTP port: `<port>-<environment>-<workspace>-<hash>.<baseDomain>`, one DNS
 * label before the domain. The names are only for people to read: each is lower-cased, accents are
 * dropped, any other run of characters outside [a-z0-9] becomes one '-', and it is cut to 15, 16 and
 * 16 characters. The hash is what tells hosts apart: the first 65 bits of SHA-256 over
 * `<environment id>/<port name>`, in lowercase base32. The label is at most 63 characters of
 * [a-z0-9-], never starts or ends with '-', and is the same for the same inputs.
 */
export function ingressHost(
  port: string,
  spec: Pick<WorkloadSpec, "environmentId" | "name" | "workspaceName">,
  baseDomain: string,
): string {
  const readable = [port, spec.name, spec.workspaceName].map((part, i) => hostPart(part, HOST_PART_LENGTHS[i]!));
  const hash = base32(createHash("sha256").update(`${spec.environmentId}/${port}`).digest()).slice(0, HOST_HASH_LENGTH);
  return `${[...readable, hash].filter((p) => p !== "").join("-")}.${baseDomain}`;
}

/** `https://<host>/` when ingresses have TLS, else `http://<host>/`; undefined without a base domain. */
export function ingressUrl(
  port: string,
  spec: Pick<WorkloadSpec, "environmentId" | "name" | "workspaceName">,
  o: Pick<KubernetesOptions, "ingressBaseDomain" | "ingressTlsSecret" | "ingressCertIssuer">,
): string | undefined {
  if (!o.ingressBaseDomain) return undefined;
  const scheme = o.ingressTlsSecret || o.ingressCertIssuer ? "https" : "http";
  return `${scheme}://${ingressHost(port, spec, o.ingressBaseDomain)}/`;
}

function hostPart(name: string, max: number): string {
  const plain = name
    .normalize("NFKD")
    .replace(/\p{M}/gu, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-");
  return plain.slice(0, max).replace(/^-+|-+$/g, "");
}

const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

function base32(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return out;
}
