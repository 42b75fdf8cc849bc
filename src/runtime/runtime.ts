import type { PortProtocol } from "../environment/environment.js";

/** Everything a runtime needs to run one environment's workload. */
export interface WorkloadSpec {
  environmentId: string;
  /** The environment's name, for names users see (ingress hosts). */
  name: string;
  workspaceId: string;
  workspaceName: string;
  hostId: string;
  /** Kubernetes node of the host, for runtimes that place pods. */
  nodeName: string;
  image: string;
  command: string[];
  args: string[];
  env: Record<string, string>;
  gpuUuids: string[];
  gpuIndices: number[];
  /**
   * Set when the GPUs are MIG slices of this profile (e.g. "1g.10gb"): gpuUuids are then the slices'
   * UUIDs ("MIG-…", or synthetic ids on Kubernetes nodes).
   */
  migProfile?: string;
  ports: { name: string; containerPort: number; hostPort: number; protocol: PortProtocol }[];
  cpuMillicores: number;
  memoryBytes: number;
  storageBytes: number;
  sshPublicKeys: string[];
  /** Grows on every (re)start: a run of a higher generation replaces the workload. */
  generation: number;
}

/** A workload's state as a runtime observed it. */
export type WorkloadState = "STARTING" | "RUNNING" | "STOPPED" | "FAILED" | "REMOVED";

/**
 * Where environments run (the host's agent, or Kubernetes). Every call is idempotent and only asks:
 * outcomes arrive later through `observe` as workload states, and the reconciler repeats a call
 * whose outcome does not come. A call that cannot be delivered now throws, and is retried too.
 */
export interface Runtime {
  run(spec: WorkloadSpec): Promise<void>;
  /**
   * Stops the workload and keeps its volume; its STOPPED report carries at least `generation`.
   * `workspaceId` tells a runtime that keeps workspaces apart (Kubernetes namespaces) where to look.
   */
  stop(environmentId: string, hostId: string, generation: number, workspaceId?: string): Promise<void>;
  /** Stops the workload and removes everything it had, volume included; REMOVED carries at least `generation`. */
  remove(environmentId: string, hostId: string, generation: number, workspaceId?: string): Promise<void>;
}
