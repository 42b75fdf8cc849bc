import type { ObservedNode } from "../platform/kube-node-watch.js";
import type { ReportedGpu } from "./inventory-sync.js";

/** GPU feature discovery (NVIDIA GPU operator) labels a node carries. */
export const GFD_PRODUCT = "nvidia.com/gpu.product";
export const GFD_MEMORY_MIB = "nvidia.com/gpu.memory";
export const GFD_COUNT = "nvidia.com/gpu.count";
/** The device plugin's extended resource. */
export const GPU_RESOURCE = "nvidia.com/gpu";

/**
 * A node's lease as this replica saw it. `observedAt` is this replica's time when the renewal was
 * first seen, not the kubelet's `renewTime`: the kubelet's clock may be off, ours decides.
 */
export interface LeaseSeen {
  /** The kubelet's renewTime, only to tell a renewal from the same one seen again. */
  renewTime: number;
  durationMs: number;
  observedAt: number;
}

/**
 * A lease counts as lapsed once it went unrenewed for its duration plus a quarter of it: 50 s for the
 * kubelet's default of 40 s, what Kubernetes itself waits (node-monitor-grace-period) before it calls
 * a node's readiness Unknown.
 */
export const LEASE_GRACE_FACTOR = 1.25;

/** What a host registered from a Node is made of. */
export interface NodeFacts {
  name: string;
  address: string;
  ready: boolean;
  /** Why it is (not) ready, as the host's status message. */
  reason: string;
  unschedulable: boolean;
  cpuMillicores: number;
  memoryBytes: number;
  diskBytes: number;
  gpus: ReportedGpu[];
}

/** The synthetic UUID of a node's GPU: the node's GPUs are known by index only (pods get them by index). */
export function nodeGpuUuid(node: string, index: number): string {
  return `k8s-${node}-${index}`;
}

/** What a Node and its lease say, at `now` (ms). */
export function describeNode(node: ObservedNode, lease: LeaseSeen | undefined, now: number): NodeFacts {
  const { name, labels, allocatable, ready: condition } = node;
  let ready = condition?.status === "True";
  let reason = ready
    ? `Kubernetes node ${name} is Ready`
    : condition
      ? `Kubernetes node ${name} is not Ready (${condition.status})${detail(condition.reason, condition.message)}`
      : `Kubernetes node ${name} has no Ready condition yet`;
  const limitMs = lease ? lease.durationMs * LEASE_GRACE_FACTOR : 0;
  if (ready && lease && now - lease.observedAt > limitMs) {
    ready = false;
    // No running count of seconds here: the reason is written only when it changes.
    reason = `the kubelet of Kubernetes node ${name} has not renewed its lease for more than ${Math.round(limitMs / 1000)} s`;
  }

  // The device plugin's count is what pods can have; without a device plugin (visible-devices mode), GFD's.
  const allocatableGpus = allocatable[GPU_RESOURCE];
  const count = count0(allocatableGpus !== undefined ? allocatableGpus : labels[GFD_COUNT]);
  const memoryMib = quantity(labels[GFD_MEMORY_MIB]);
  const driverVersion =
    labels["nvidia.com/cuda.driver-version.full"] ?? dotted(labels, "nvidia.com/cuda.driver", ["major", "minor", "rev"]);
  const cudaVersion = labels["nvidia.com/cuda.runtime-version.full"] ?? dotted(labels, "nvidia.com/cuda.runtime", ["major", "minor"]);
  const gpus = Array.from({ length: count }, (_, index) => ({
    index,
    uuid: nodeGpuUuid(name, index),
    model: (labels[GFD_PRODUCT] ?? "").slice(0, 128),
    memoryBytes: Math.round(memoryMib * 1024 * 1024),
    driverVersion: driverVersion.slice(0, 64),
    cudaVersion: cudaVersion.slice(0, 32),
  }));

  const address =
    ["InternalIP", "ExternalIP", "Hostname"].map((t) => node.addresses.find((a) => a.type === t)?.address).find(Boolean) ?? name;
  return {
    name,
    address,
    ready,
    reason,
    unschedulable: node.unschedulable,
    cpuMillicores: Math.round(quantity(allocatable.cpu) * 1000),
    memoryBytes: Math.round(quantity(allocatable.memory)),
    diskBytes: Math.round(quantity(allocatable["ephemeral-storage"])),
    gpus,
  };
}

const SUFFIXES: Record<string, number> = {
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A Kubernetes resource quantity ("15500m", "64Gi", "1e3") as a number; 0 when absent or not one. */
export function quantity(q: string | undefined): number {
  const m = /^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$/.exec((q ?? "").trim());
  const factor = m ? SUFFIXES[m[2]!] : undefined;
  if (!m || factor === undefined) return 0;
  const n = Number(m[1]) * factor;
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/** A non-negative whole count from a label or resource value; 0 when absent or not a count. */
function count0(value: string | undefined): number {
  const n = Number.parseInt(value ?? "", 10);
  return Number.isSafeInteger(n) && n > 0 ? Math.min(n, 1024) : 0;
}

function dotted(labels: Record<string, string>, prefix: string, parts: string[]): string {
  const values = parts.map((p) => labels[`${prefix}.${p}`]);
  return values[0] === undefined ? "" : values.filter((v) => v !== undefined).join(".");
}

function detail(reason: string | undefined, message: string | undefined): string {
  const text = [reason, message].filter(Boolean).join(": ");
  return text ? `: ${text}` : "";
}
