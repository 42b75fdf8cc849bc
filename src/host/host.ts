import { randomUUID } from "node:crypto";
import { BigIntType, EntitySchema, OptionalProps, raw, type FilterQuery } from "@mikro-orm/core";

export type HostStatus = "ONLINE" | "OFFLINE" | "DRAINING" | "MAINTENANCE";
export type HostRuntime = "AGENT" | "KUBERNETES";

/** What a host's Kubernetes Node said when last looked at, for hosts registered from their Node. */
export interface NodeState {
  /** Ready, with a lease renewed in time: what the host's status follows while ONLINE or OFFLINE. */
  ready: boolean;
  /** Why it is (not) ready, in words. */
  reason: string;
  /** `spec.unschedulable` as last applied: only a change of it cordons or uncordons the host. */
  unschedulable: boolean;
}

export class Host {
  declare [OptionalProps]?:
    | "labels"
    | "cpuMillicores"
    | "memoryBytes"
    | "diskBytes"
    | "agentVersion"
    | "status"
    | "statusMessage"
    | "schedulable"
    | "lastHeartbeatAt"
    | "runtime"
    | "kubernetesNodeName"
    | "containersSupported"
    | "agentConnectedAt"
    | "runtimeUnavailableReason"
    | "nodeState"
    | "version";
  id: string = randomUUID();
  name!: string;
  address!: string;
  labels: Record<string, string> = {};
  cpuMillicores = 0;
  memoryBytes = 0;
  diskBytes = 0;
  agentVersion = "";
  status: HostStatus = "OFFLINE";
  statusMessage = "waiting for the first heartbeat";
  schedulable = true;
  lastHeartbeatAt: Date | null = null;
  runtime: HostRuntime = "AGENT";
  kubernetesNodeName = "";
  /** What its agent said in its last hello: it runs containers (docker or podman), not host processes. */
  containersSupported = false;
  /** When its agent last opened its stream (null if it never did): from then on, the agent reports the GPUs. */
  agentConnectedAt: Date | null = null;
  /**
   * Why its agent cannot run environments, as it said in its last hello (no container engine and
   * process mode not asked for, say); "" when it can. Placement skips a host with one.
   */
  runtimeUnavailableReason = "";
  /**
   * Set for a host registered from its Kubernetes Node (K8S_NODE_SELECTOR): the Node, not heartbeats,
   * decides whether it is ONLINE. Null for hosts registered through the API.
   */
  nodeState: NodeState | null = null;
  createdAt!: Date;
  updatedAt!: Date;
  version = 1;
}

export const HostSchema = new EntitySchema<Host>({
  class: Host,
  tableName: "hosts",
  indexes: [
    // Label selectors (hasLabels): containment of the selector's pairs.
    { name: "hosts_labels_index", expression: `create index "hosts_labels_index" on "hosts" using gin ("labels" jsonb_path_ops)` },
  ],
  properties: {
    id: { type: "uuid", primary: true },
    name: { type: "string", length: 253, unique: "hosts_name_unique" },
    address: { type: "string", length: 255 },
    labels: { type: "json" },
    cpuMillicores: { type: new BigIntType("number") },
    memoryBytes: { type: new BigIntType("number") },
    diskBytes: { type: new BigIntType("number") },
    agentVersion: { type: "string", length: 64 },
    status: { type: "string", length: 16, index: "hosts_status_index" },
    statusMessage: { type: "text" },
    schedulable: { type: "boolean" },
    lastHeartbeatAt: { type: "Date", columnType: "timestamptz", nullable: true },
    runtime: { type: "string", length: 16 },
    kubernetesNodeName: { type: "string", length: 253 },
    containersSupported: { type: "boolean" },
    agentConnectedAt: { type: "Date", columnType: "timestamptz", nullable: true },
    runtimeUnavailableReason: { type: "text" },
    nodeState: { type: "json", nullable: true },
    createdAt: { type: "Date", columnType: "timestamptz" },
    updatedAt: { type: "Date", columnType: "timestamptz" },
    version: { type: "integer", version: true },
  },
});

/**
 * A filter for hosts carrying all of `labels`: jsonb containment, which treats every key as data
 * (a key like "constructor" or "toString" is just a key) and can use a GIN index.
 */
export function hasLabels(labels: Record<string, string>): FilterQuery<Host> {
  return { id: { $in: raw("(select id from hosts where labels @> ?::jsonb)", [JSON.stringify(labels)]) } };
}

/**
 * Whether a port change reaches the host's workloads without a restart: an agent that runs host
 * processes forwards their ports itself and opens or closes forwarders in place; a container's
 * published ports and a pod's are fixed when it starts.
 */
export function changesPortsInPlace(host: Pick<Host, "runtime" | "containersSupported">): boolean {
  return host.runtime === "AGENT" && !host.containersSupported;
}

/**
 * The host's status message as operators read it: why it has its status, and why it takes no
 * environments while its agent says it cannot run them.
 */
export function hostStatusMessage(host: Pick<Host, "statusMessage" | "runtimeUnavailableReason">): string {
  if (!host.runtimeUnavailableReason) return host.statusMessage;
  const runtime = `cannot run environments: ${host.runtimeUnavailableReason}`;
  return host.statusMessage ? `${host.statusMessage}; ${runtime}` : runtime;
}
