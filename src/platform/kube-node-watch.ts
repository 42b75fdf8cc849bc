import { CoordinationV1Api, CoreV1Api, type KubeConfig, type V1Lease, type V1Node } from "@kubernetes/client-node";
import { type KubeChange, KubeListWatch } from "./kube-list-watch.js";
import type { Logger } from "./logger.js";

export type { KubeChange } from "./kube-list-watch.js";

/** Where kubelets keep their node leases (one per node, named after it). */
export const NODE_LEASE_NAMESPACE = "kube-node-lease";

/** What a Node says, as plain data. */
export interface ObservedNode {
  name: string;
  labels: Record<string, string>;
  /** `spec.unschedulable`: cordoned. */
  unschedulable: boolean;
  allocatable: Record<string, string>;
  /** Its Ready condition; undefined when it has none yet. */
  ready?: { status: string; reason: string; message: string };
  addresses: { type: string; address: string }[];
}

/** What a node's Lease says, as plain data. */
export interface ObservedLease {
  node: string;
  /** When the kubelet last renewed it, by its own clock (ms since the epoch); 0 when never. */
  renewTime: number;
  durationSeconds: number;
}

/** Told of what the watches see, in order. */
export interface NodeWatchListener {
  /** After each (re-)list of the nodes: every matching node there is now. */
  nodesListed(nodes: ObservedNode[]): void;
  /** A node changed; DELETED also when it stopped matching the selector. */
  nodeChanged(type: KubeChange, node: ObservedNode): void;
  /** After each (re-)list of the leases. */
  leasesListed(leases: ObservedLease[]): void;
  leaseChanged(type: KubeChange, lease: ObservedLease): void;
}

/**
 * The Nodes matching a label selector and the node leases, each with a list and then a watch (one
 * long request each while nothing fails): see KubeListWatch for how breaks and 410 Gone are handled.
 */
export class KubeNodeWatch {
  private readonly nodes: KubeListWatch<V1Node>;
  private readonly leases: KubeListWatch<V1Lease>;

  constructor(kc: KubeConfig, selector: string, listener: NodeWatchListener, logger: Logger) {
    const core = kc.makeApiClient(CoreV1Api);
    const coordination = kc.makeApiClient(CoordinationV1Api);
    this.nodes = new KubeListWatch<V1Node>(
      kc,
      {
        what: "nodes",
        path: "/api/v1/nodes",
        labelSelector: selector,
        list: () => core.listNode({ labelSelector: selector }),
        replaced: (items) => listener.nodesListed(items.map(observeNode)),
        changed: (type, node) => listener.nodeChanged(type, observeNode(node)),
      },
      logger,
    );
    this.leases = new KubeListWatch<V1Lease>(
      kc,
      {
        what: "node leases",
        path: `/apis/coordination.k8s.io/v1/namespaces/${NODE_LEASE_NAMESPACE}/leases`,
        list: () => coordination.listNamespacedLease({ namespace: NODE_LEASE_NAMESPACE }),
        replaced: (items) => listener.leasesListed(items.map(observeLease)),
        changed: (type, lease) => listener.leaseChanged(type, observeLease(lease)),
      },
      logger,
    );
  }

  start(): void {
    this.leases.start();
    this.nodes.start();
  }

  async stop(): Promise<void> {
    await Promise.all([this.nodes.stop(), this.leases.stop()]);
  }
}

function observeNode(node: V1Node): ObservedNode {
  const ready = node.status?.conditions?.find((c) => c.type === "Ready");
  return {
    name: node.metadata?.name ?? "",
    labels: { ...node.metadata?.labels },
    unschedulable: node.spec?.unschedulable === true,
    allocatable: { ...node.status?.allocatable },
    ready: ready && { status: ready.status, reason: ready.reason ?? "", message: ready.message ?? "" },
    addresses: (node.status?.addresses ?? []).map((a) => ({ type: a.type, address: a.address })),
  };
}

function observeLease(lease: V1Lease): ObservedLease {
  // Listed leases carry a Date (client-node parses it), watched ones the wire's string.
  const renew: unknown = lease.spec?.renewTime;
  const renewTime = renew instanceof Date ? renew.getTime() : Date.parse(String(renew ?? ""));
  return {
    node: lease.metadata?.name ?? "",
    renewTime: Number.isFinite(renewTime) ? renewTime : 0,
    durationSeconds: lease.spec?.leaseDurationSeconds ?? 40,
  };
}
