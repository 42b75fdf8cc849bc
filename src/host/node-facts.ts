import { gpuComputeSlices, MIG_PROFILE, sliceModel } from "../gpu/mig.js";
import type { ObservedNode } from "../platform/kube-node-watch.js";
import type { ReportedGpu } from "./inventory-sync.js";

/** GPU feature discovery (NVIDIA GPU operator) labels a node carries. */
export const GFD_PRODUCT = "nvidia.com/gpu.product";
export const GFD_MEMORY_MIB = "nvidia.com/gpu.memory";
export const GFD_COUNT = "nvidia.com/gpu.count";
/** The device plugin's extended resource. */
export const GPU_RESOURCE = "nvidia.com/gpu";
/**
 * MIG on Kubernetes, as NVIDIA's device plugin and GPU feature discovery do it with the "mixed" MIG
 * strategy (NVIDIA/k8s-device-plugin: docs/gfd_labels.md "MIG 'mixed' strategy", internal/lm/
 * mig-strategy.go and resource.go; GPU operator docs "GPU Operator with MIG"): each profile is an
 * extended resource of its own, `nvidia.com/mig-<profile>` (e.g. `nvidia.com/mig-1g.10gb: "7"`),
 * while GPUs not in MIG mode stay `nvidia.com/gpu`; GFD labels each profile
 * `nvidia.com/mig-<profile>.{count,memory (MiB),product,multiprocessors,slices.gi,slices.ci,...}`,
 * sets `nvidia.com/mig.strategy=mixed`, and counts GPUs of both kinds in `nvidia.com/gpu.count`.
 */
export const MIG_RESOURCE_PREFIX = "nvidia.com/mig-";
/** GFD's label for the device plugin's MIG strategy: "none", "single" or "mixed". */
export const GFD_MIG_STRATEGY = "nvidia.com/mig.strategy";

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

/**
 * The synthetic UUID of a MIG slice on a node: its parent's, its place there and its profile, so that
 * a slice whose profile changed is another slice (the one held before is gone), not the same one.
 */
export function nodeMigUuid(node: string, parentIndex: number, deviceIndex: number, profile: string): string {
  return `${nodeGpuUuid(node, parentIndex)}-mig-${deviceIndex}-${profile}`;
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
  // With MIG resources, or the mixed strategy, there is a device plugin, and GFD's count holds the GPUs
  // in MIG mode too. On a mixed node the GPUs it does not offer whole are in MIG mode even while no slice
  // is offered (the device plugin restarting sets them all to 0): reported whole, their slices' environments
  // would fail as if MIG had been turned off, where missing slices only go OFFLINE and come back.
  const slices = migResources(allocatable);
  const mixed = labels[GFD_MIG_STRATEGY] === "mixed";
  const allocatableGpus = allocatable[GPU_RESOURCE];
  const count = count0(allocatableGpus !== undefined || slices.length > 0 || mixed ? allocatableGpus : labels[GFD_COUNT]);
  const memoryMib = quantity(labels[GFD_MEMORY_MIB]);
  const driverVersion =
    labels["nvidia.com/cuda.driver-version.full"] ?? dotted(labels, "nvidia.com/cuda.driver", ["major", "minor", "rev"]);
  const cudaVersion = labels["nvidia.com/cuda.runtime-version.full"] ?? dotted(labels, "nvidia.com/cuda.runtime", ["major", "minor"]);
  const product = labels[GFD_PRODUCT] ?? "";
  const gpu = (index: number, uuid: string, model: string, mib: number): ReportedGpu => ({
    index,
    uuid,
    model,
    memoryBytes: Math.round(mib * 1024 * 1024),
    driverVersion: driverVersion.slice(0, 64),
    cudaVersion: cudaVersion.slice(0, 32),
  });
  const gpus = Array.from({ length: count }, (_, index) => gpu(index, nodeGpuUuid(name, index), product.slice(0, 128), memoryMib));
  // GPUs in MIG mode follow the whole ones, each with its slices after it.
  const parents = slices.length > 0 || mixed ? migLayout(slices, count0(labels[GFD_COUNT]) - count, gpuComputeSlices(product)) : [];
  for (const [p, onParent] of parents.entries()) {
    const parentIndex = count + p;
    gpus.push({ ...gpu(parentIndex, nodeGpuUuid(name, parentIndex), product.slice(0, 128), memoryMib), migEnabled: true });
    for (const [deviceIndex, profile] of onParent.entries()) {
      // The stored model adds " MIG <profile>" to the parent's product name: it must still fit its column.
      const model = product.slice(0, 128 - sliceModel("", profile).length);
      const mib = quantity(labels[`${MIG_RESOURCE_PREFIX}${profile}.memory`]) || profileMib(profile);
      gpus.push({
        ...gpu(1000 * (parentIndex + 1) + deviceIndex, nodeMigUuid(name, parentIndex, deviceIndex, profile), model, mib),
        // Which GPU or compute instance a slice is, a Node does not say.
        mig: { parentUuid: nodeGpuUuid(name, parentIndex), profile, deviceIndex, gpuInstanceId: 0, computeInstanceId: 0 },
      });
    }
  }

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

/** The MIG profiles a node offers (`nvidia.com/mig-<profile>` in its allocatable), with how many of each. */
function migResources(allocatable: Record<string, string>): { profile: string; count: number }[] {
  return Object.entries(allocatable).flatMap(([key, value]) => {
    const profile = key.startsWith(MIG_RESOURCE_PREFIX) ? key.slice(MIG_RESOURCE_PREFIX.length) : "";
    const count = count0(value);
    return MIG_PROFILE.test(profile) && count > 0 ? [{ profile, count }] : [];
  });
}

/**
 * The node's slices on its GPUs in MIG mode: per GPU, its slices' profiles in device order. A Node
 * says how many slices of each profile there are, not which GPU each is on (the device plugin hands
 * out any slice of the profile asked for), so this layout is made up, the same one for the same
 * counts: largest profiles first (by their "Ng" compute slices, then by name), each slice on the first
 * GPU with room for it, `perGpu` compute slices to a GPU, on as many GPUs as GFD counts beyond the
 * whole ones or as many as that takes, whichever is more (without slices: GFD's, each without one).
 */
function migLayout(resources: { profile: string; count: number }[], counted: number, perGpu: number): string[][] {
  const size = (profile: string) => Number(MIG_PROFILE.exec(profile)![2]);
  const ordered = [...resources].sort((a, b) => size(b.profile) - size(a.profile) || (a.profile < b.profile ? -1 : 1));
  const parents: { used: number; profiles: string[] }[] = Array.from({ length: Math.max(0, counted) }, () => ({ used: 0, profiles: [] }));
  for (const { profile, count } of ordered) {
    for (let i = 0; i < count; i++) {
      // A profile larger than a GPU (a made-up one) still gets a GPU of its own.
      let parent = parents.find((p) => p.used + size(profile) <= perGpu || p.used === 0);
      if (!parent) {
        parent = { used: 0, profiles: [] };
        parents.push(parent);
      }
      parent.used += size(profile);
      parent.profiles.push(profile);
    }
  }
  return parents.map((p) => p.profiles);
}

/** A profile's memory from its name ("10gb": GFD names profiles after their memory rounded up to GiB), in MiB. */
function profileMib(profile: string): number {
  return Number(MIG_PROFILE.exec(profile)![3]) * 1024;
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
