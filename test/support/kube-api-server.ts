import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { constants, tmpdir } from "node:os";
import path from "node:path";
import type { Duplex, Writable } from "node:stream";
import { KubeConfig } from "@kubernetes/client-node";
import { type WebSocket, WebSocketServer } from "ws";
import { PTY_RELAY } from "../../agent/src/ssh-server.js";

/**
 * A Kubernetes API test server: plain HTTP + JSON on the real REST paths, enough for the unmodified
 * @kubernetes/client-node (CoreV1Api, NetworkingV1Api, Watch, Log) to run against it through a
 * kubeconfig. No cluster can run on these machines; this stands in for one in integration tests.
 * Objects live in memory; nothing is scheduled or run: tests drive pods with `setPodPhase`.
 * Exec and port-forward speak the real WebSocket channel protocol, and a Running pod's "container"
 * is this machine: exec runs the command here (in a directory of the pod's, with its container's
 * env; on a pty through python3 when tty=true), and port-forward connects to 127.0.0.1.
 */

// Kubernetes objects are open-ended JSON; a test fake reads and writes them loosely.
// biome-ignore lint/suspicious/noExplicitAny: open-ended JSON, as the comment above says
export type KubeObject = Record<string, any>;

interface Resource {
  plural: string;
  kind: string;
  apiVersion: string;
  namespaced: boolean;
  /** The real API answers DELETE with the object for some kinds and with a Status for the others. */
  deleteReturnsObject: boolean;
  /** Kinds with a status subresource ignore `status` on writes to the main resource, and vice versa. */
  hasStatus: boolean;
}

const RESOURCES: Resource[] = [
  { plural: "namespaces", kind: "Namespace", apiVersion: "v1", namespaced: false, deleteReturnsObject: false, hasStatus: true },
  { plural: "pods", kind: "Pod", apiVersion: "v1", namespaced: true, deleteReturnsObject: true, hasStatus: true },
  { plural: "services", kind: "Service", apiVersion: "v1", namespaced: true, deleteReturnsObject: true, hasStatus: true },
  {
    plural: "persistentvolumeclaims",
    kind: "PersistentVolumeClaim",
    apiVersion: "v1",
    namespaced: true,
    deleteReturnsObject: true,
    hasStatus: true,
  },
  { plural: "secrets", kind: "Secret", apiVersion: "v1", namespaced: true, deleteReturnsObject: false, hasStatus: false },
  { plural: "configmaps", kind: "ConfigMap", apiVersion: "v1", namespaced: true, deleteReturnsObject: false, hasStatus: false },
  {
    plural: "ingresses",
    kind: "Ingress",
    apiVersion: "networking.k8s.io/v1",
    namespaced: true,
    deleteReturnsObject: false,
    hasStatus: true,
  },
  { plural: "nodes", kind: "Node", apiVersion: "v1", namespaced: false, deleteReturnsObject: true, hasStatus: true },
  { plural: "leases", kind: "Lease", apiVersion: "coordination.k8s.io/v1", namespaced: true, deleteReturnsObject: false, hasStatus: false },
];

/** A kind ("Pod") or plural ("pods") naming one of the supported resources. */
export type ResourceName =
  | "Namespace"
  | "namespaces"
  | "Pod"
  | "pods"
  | "Service"
  | "services"
  | "PersistentVolumeClaim"
  | "persistentvolumeclaims"
  | "Secret"
  | "secrets"
  | "ConfigMap"
  | "configmaps"
  | "Ingress"
  | "ingresses"
  | "Node"
  | "nodes"
  | "Lease"
  | "leases";

const prefixOf = (r: Resource) => (r.apiVersion === "v1" ? "/api/v1" : `/apis/${r.apiVersion}`);
/** How the real API names a resource in messages: `pods`, `ingresses.networking.k8s.io`. */
const qualified = (r: Resource) => (r.apiVersion.includes("/") ? `${r.plural}.${r.apiVersion.split("/")[0]}` : r.plural);

function resourceFor(name: string): Resource {
  const r = RESOURCES.find((x) => x.kind === name || x.plural === name);
  if (!r) throw new Error(`kube-api-server: unsupported resource ${name}`);
  return r;
}

const DISCOVERY: Record<string, KubeObject> = {
  "/version": { major: "1", minor: "30", gitVersion: "v1.30.0-remotegpu-test", platform: "linux/amd64" },
  "/api": { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [] },
  "/apis": {
    kind: "APIGroupList",
    apiVersion: "v1",
    groups: [
      {
        name: "networking.k8s.io",
        versions: [{ groupVersion: "networking.k8s.io/v1", version: "v1" }],
        preferredVersion: { groupVersion: "networking.k8s.io/v1", version: "v1" },
      },
      {
        name: "coordination.k8s.io",
        versions: [{ groupVersion: "coordination.k8s.io/v1", version: "v1" }],
        preferredVersion: { groupVersion: "coordination.k8s.io/v1", version: "v1" },
      },
    ],
  },
};
for (const groupVersion of ["v1", "networking.k8s.io/v1", "coordination.k8s.io/v1"]) {
  const resources = RESOURCES.filter((r) => r.apiVersion === groupVersion).map((r) => ({
    name: r.plural,
    singularName: r.kind.toLowerCase(),
    namespaced: r.namespaced,
    kind: r.kind,
    verbs: ["create", "delete", "get", "list", "patch", "update", "watch"],
  }));
  DISCOVERY[groupVersion === "v1" ? "/api/v1" : `/apis/${groupVersion}`] = {
    kind: "APIResourceList",
    apiVersion: "v1",
    groupVersion,
    resources,
  };
}

/** An error answered as a Kubernetes `Status` object, as the real API does. */
class StatusError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: KubeObject,
  ) {
    super(message);
  }
  toStatus(): KubeObject {
    return {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message: this.message,
      reason: this.reason,
      details: this.details,
      code: this.code,
    };
  }
}
const notFound = (r: Resource, name: string) =>
  new StatusError(404, "NotFound", `${qualified(r)} "${name}" not found`, { name, kind: r.plural });

/** Equality-based selectors (`a=b,a==b,a!=b,a,!a`) over a value lookup; set-based ones are not supported. */
function selector(expr: string | null, read: (o: KubeObject, key: string) => unknown): (o: KubeObject) => boolean {
  const tests = (expr ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((term): ((o: KubeObject) => boolean) => {
      const m = /^([^!=\s]+)\s*(!=|==|=)\s*(\S*)$/.exec(term);
      if (m) return (o) => (String(read(o, m[1]) ?? "") === m[3]) === (m[2] !== "!=");
      const exists = /^(!?)([^!=\s]+)$/.exec(term);
      if (exists) return (o) => (read(o, exists[2]) !== undefined) !== (exists[1] === "!");
      throw new StatusError(400, "BadRequest", `unable to parse requirement: ${term}`);
    });
  return (o) => tests.every((t) => t(o));
}
const labelValue = (o: KubeObject, key: string) => o.metadata?.labels?.[key];
const fieldValue = (o: KubeObject, key: string) => key.split(".").reduce<KubeObject | undefined>((v, k) => v?.[k], o);

/** RFC 7386 JSON merge patch; strategic merge patches are applied the same way (lists replace). */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out: KubeObject = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** RFC 6902 JSON patch (add, replace, remove, test): client-node 2.0.1 sends it unless told otherwise. */
function jsonPatch(doc: KubeObject, ops: KubeObject[]): KubeObject {
  for (const op of ops) {
    const parts = String(op.path)
      .split("/")
      .slice(1)
      .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
    const last = parts.pop() ?? "";
    const parent = parts.reduce<KubeObject | undefined>((v, k) => v?.[k], doc);
    if (parent === null || typeof parent !== "object") throw new StatusError(422, "Invalid", `doc is missing path: "${op.path}"`);
    const index = last === "-" ? parent.length : Number(last);
    if (op.op !== "add" && !(last in parent)) throw new StatusError(422, "Invalid", `doc is missing key: "${op.path}"`);
    if (op.op === "add") {
      if (Array.isArray(parent)) parent.splice(index, 0, op.value);
      else parent[last] = op.value;
    } else if (op.op === "replace") parent[last] = op.value;
    else if (op.op === "remove") Array.isArray(parent) ? parent.splice(index, 1) : delete parent[last];
    else if (op.op === "test") {
      if (JSON.stringify(parent[last]) !== JSON.stringify(op.value))
        throw new StatusError(422, "Invalid", `testing value ${op.path} failed`);
    } else throw new StatusError(422, "Invalid", `unsupported JSON patch op ${op.op}`);
  }
  return doc;
}

const clone = <T>(o: T): T => structuredClone(o);

interface WatchEvent {
  rv: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  resource: Resource;
  object: KubeObject;
}
interface Watcher {
  resource: Resource;
  matches(o: KubeObject): boolean;
  send(type: string, object: KubeObject): void;
  res: http.ServerResponse;
}
interface Follower {
  key: string;
  res: http.ServerResponse;
  timestamps: boolean;
}
interface LogLine {
  /** RFC3339Nano, as the kubelet stamps lines. */
  time: string;
  text: string;
}
const logText = (l: LogLine, timestamps: boolean) => (timestamps ? `${l.time} ${l.text}\n` : `${l.text}\n`);

/** States a test drives a pod into; each one replaces `status` as the kubelet would report it. */
export type PodDrive =
  | { state: "Scheduled"; nodeName?: string }
  | { state: "Running"; podIP?: string; ready?: boolean }
  | { state: "ImagePullBackOff"; message?: string }
  | { state: "Evicted"; message?: string }
  | { state: "Terminated"; exitCode: number; reason?: string };

/** How a test node starts out (see `addNode`). */
export interface NodeDrive {
  labels?: Record<string, string>;
  /** Merged over 16 CPUs, 64 GiB of memory and 500 GiB of ephemeral storage: `{"nvidia.com/gpu": "4"}`. */
  allocatable?: Record<string, string>;
  /** @default true */
  ready?: boolean;
  unschedulable?: boolean;
  /** Its InternalIP. @default "10.0.0.1" */
  address?: string;
  /** @default 40 */
  leaseDurationSeconds?: number;
}

/** Where kubelets keep their node leases. */
export const NODE_LEASE_NAMESPACE = "kube-node-lease";

/** Now as a Kubernetes MicroTime (microsecond precision). */
const microTime = () => new Date().toISOString().replace("Z", "000Z");

function readyCondition(ready: boolean | "Unknown", reason?: string): KubeObject {
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const status = ready === "Unknown" ? "Unknown" : ready ? "True" : "False";
  return {
    type: "Ready",
    status,
    reason: reason ?? (ready === true ? "KubeletReady" : ready === false ? "KubeletNotReady" : "NodeStatusUnknown"),
    message:
      ready === true
        ? "kubelet is posting ready status"
        : ready === false
          ? "container runtime is down"
          : "Kubelet stopped posting node status.",
    lastHeartbeatTime: now,
    lastTransitionTime: now,
  };
}

export interface KubeApiServerOptions {
  /** Watch events kept for resuming watches; older resourceVersions get 410 Expired. @default 1000 */
  historyLimit?: number;
  /** Bearer token the kubeconfig carries and the server requires. @default random */
  token?: string;
  /** How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK event. @default 60000 */
  bookmarkIntervalMs?: number;
}

export class KubeApiTestServer {
  /** Every request received, in order, for assertions. `query` is the raw search string ("" or "?a=b"). */
  readonly requests: { method: string; path: string; query: string }[] = [];
  url = "";
  kubeconfigPath = "";
  /** Exec and port-forward sessions opened, in order. */
  readonly sessions: {
    kind: "exec" | "portforward";
    pod: string;
    protocol: string;
    command?: string[];
    tty?: boolean;
    port?: number;
    /** The client closed the WebSocket (or it broke). */
    closed: boolean;
  }[] = [];
  /** Terminal sizes received on exec resize channels, in order. */
  readonly resizes: { rows: number; cols: number }[] = [];
  private readonly server = http
    .createServer((req, res) => void this.handle(req, res))
    .on("upgrade", (req, socket, head) => this.upgrade(req, socket, head));
  // client-node offers v5.channel.k8s.io first (stdin can be closed): exec takes it, as API servers
  // from 1.30 do; port-forward takes v4 at most, as the kubelet's does (no closing one direction).
  private readonly sockets = new WebSocketServer({
    noServer: true,
    handleProtocols: (offered, req) => {
      const protocols = [...offered].filter((p) => !(req.url?.includes("/portforward") && p === "v5.channel.k8s.io"));
      return protocols[0] ?? false;
    },
  });
  private readonly children = new Set<ChildProcess>();
  private readonly objects = new Map<string, KubeObject>();
  private readonly logs = new Map<string, LogLine[]>();
  private readonly watchers = new Set<Watcher>();
  private readonly followers = new Set<Follower>();
  private history: WatchEvent[] = [];
  /** Watches may resume from any resourceVersion >= floor; events after it are all in `history`. */
  private floor = 0;
  private rv = 0;
  private port = 0;
  private dir = "";
  private readonly token: string;
  private readonly historyLimit: number;
  private readonly bookmarkIntervalMs: number;

  constructor(options: KubeApiServerOptions = {}) {
    this.token = options.token ?? randomBytes(16).toString("hex");
    this.historyLimit = options.historyLimit ?? 1000;
    this.bookmarkIntervalMs = options.bookmarkIntervalMs ?? 60_000;
  }

  /** Listens on a free port, writes the kubeconfig and creates the `default` namespace. */
  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
    this.url = `http://127.0.0.1:${this.port}`;
    this.dir = await mkdtemp(path.join(tmpdir(), "remotegpu-kube-"));
    this.kubeconfigPath = path.join(this.dir, "kubeconfig.yaml");
    // client-node refuses plain http unless the cluster entry skips TLS verification.
    await writeFile(
      this.kubeconfigPath,
      [
        "apiVersion: v1",
        "kind: Config",
        "current-context: test",
        "clusters:",
        "- name: test",
        "  cluster:",
        `    server: ${this.url}`,
        "    insecure-skip-tls-verify: true",
        "users:",
        "- name: test",
        "  user:",
        `    token: ${this.token}`,
        "contexts:",
        "- name: test",
        "  context:",
        "    cluster: test",
        "    user: test",
        "    namespace: default",
        "",
      ].join("\n"),
    );
    this.create(resourceFor("namespaces"), undefined, { metadata: { name: "default" } });
  }

  /** A KubeConfig loaded from `kubeconfigPath`. */
  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromFile(this.kubeconfigPath);
    return kc;
  }

  /** Ends every stream, stops listening and removes the kubeconfig. */
  async close(): Promise<void> {
    await this.down();
    await rm(this.dir, { recursive: true, force: true });
  }

  /** The API server becomes unreachable: open connections are cut and new ones refused. */
  async down(): Promise<void> {
    if (!this.server.listening) return;
    for (const ws of this.sockets.clients) ws.terminate();
    for (const child of this.children) killGroup(child);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  /** Accepts connections again, on the same port. */
  async up(): Promise<void> {
    if (this.server.listening) return;
    await new Promise<void>((resolve) => this.server.listen(this.port, "127.0.0.1", resolve));
  }

  /** A copy of a stored object, or undefined. `namespace` is ignored for namespaces. */
  get(kind: ResourceName, namespace: string | undefined, name: string): KubeObject | undefined {
    const o = this.objects.get(this.key(resourceFor(kind), namespace, name));
    return o && clone(o);
  }

  /** Copies of the stored objects of a kind, in every namespace or in one. */
  list(kind: ResourceName, namespace?: string): KubeObject[] {
    return this.select(resourceFor(kind), namespace, () => true);
  }

  /** Changes a stored object as a controller would: bumps resourceVersion and emits MODIFIED. */
  modify(kind: ResourceName, namespace: string | undefined, name: string, change: (o: KubeObject) => void): KubeObject {
    const r = resourceFor(kind);
    const current = this.objects.get(this.key(r, namespace, name));
    if (!current) throw new Error(`kube-api-server: no ${r.kind} ${namespace ?? ""}/${name}`);
    const next = clone(current);
    change(next);
    return clone(this.store(r, next, "MODIFIED"));
  }

  /** Drives a pod's status as the scheduler and kubelet would; terminal states end log follows. */
  setPodPhase(namespace: string, name: string, drive: PodDrive): KubeObject {
    const pod = this.modify("pods", namespace, name, (p) => {
      const now = new Date().toISOString();
      const containers = (state: KubeObject, ready: boolean) =>
        (p.spec?.containers ?? []).map((c: KubeObject) => ({
          name: c.name,
          image: c.image,
          imageID: "",
          restartCount: 0,
          ready,
          started: ready,
          state,
        }));
      const conditions = (ready: boolean, reason?: string) => [
        { type: "PodScheduled", status: "True", lastTransitionTime: now },
        { type: "Initialized", status: "True", lastTransitionTime: now },
        ...["ContainersReady", "Ready"].map((type) => ({
          type,
          status: ready ? "True" : "False",
          lastTransitionTime: now,
          ...(reason && { reason }),
        })),
      ];
      const started = { hostIP: "10.0.0.1", startTime: p.status?.startTime ?? now };
      p.spec = { ...p.spec, nodeName: p.spec?.nodeName ?? (drive.state === "Scheduled" ? drive.nodeName : undefined) ?? "node-1" };
      if (drive.state === "Scheduled") {
        p.status = {
          phase: "Pending",
          conditions: conditions(false, "ContainersNotReady"),
          containerStatuses: containers({ waiting: { reason: "ContainerCreating" } }, false),
          ...started,
        };
      } else if (drive.state === "Running") {
        const podIP = drive.podIP ?? "10.244.0.10";
        const ready = drive.ready ?? true; // not ready: started, its readiness probe not yet passing
        p.status = {
          phase: "Running",
          podIP,
          podIPs: [{ ip: podIP }],
          conditions: conditions(ready, ready ? undefined : "ContainersNotReady"),
          containerStatuses: containers({ running: { startedAt: now } }, ready),
          ...started,
        };
      } else if (drive.state === "ImagePullBackOff") {
        const message = drive.message ?? `Back-off pulling image "${p.spec?.containers?.[0]?.image}"`;
        p.status = {
          phase: "Pending",
          conditions: conditions(false, "ContainersNotReady"),
          containerStatuses: containers({ waiting: { reason: "ImagePullBackOff", message } }, false),
          ...started,
        };
      } else if (drive.state === "Evicted") {
        const message = drive.message ?? "The node was low on resource: ephemeral-storage.";
        p.status = {
          phase: "Failed",
          reason: "Evicted",
          message,
          conditions: conditions(false, "PodFailed"),
          containerStatuses: containers({ terminated: { exitCode: 137, reason: "ContainerStatusUnknown", finishedAt: now } }, false),
          ...started,
        };
      } else {
        const reason = drive.reason ?? (drive.exitCode === 0 ? "Completed" : "Error");
        const terminated = { exitCode: drive.exitCode, reason, startedAt: started.startTime, finishedAt: now };
        p.status = {
          phase: drive.exitCode === 0 ? "Succeeded" : "Failed",
          conditions: conditions(false, "PodCompleted"),
          containerStatuses: containers({ terminated }, false),
          ...started,
        };
      }
    });
    if (pod.status.phase === "Failed" || pod.status.phase === "Succeeded")
      this.endFollowers(this.key(resourceFor("pods"), namespace, name));
    return pod;
  }

  /**
   * Appends a line to a container's log (the pod's first container by default) and to open follows,
   * stamped with the current time (milliseconds, written as RFC3339Nano): lines appended in one go
   * share a timestamp, as a burst does on a real node.
   */
  appendLog(namespace: string, pod: string, line: string, container?: string): void {
    const podKey = this.key(resourceFor("pods"), namespace, pod);
    const key = `${podKey}/${container ?? this.objects.get(podKey)?.spec?.containers?.[0]?.name ?? ""}`;
    const entry = { time: new Date().toISOString().replace(/Z$/, "000000Z"), text: line };
    this.logs.set(key, [...(this.logs.get(key) ?? []), entry]);
    for (const f of this.followers) if (f.key === key) f.res.write(logText(entry, f.timestamps));
  }

  /** Cuts every open log follow (the connection drops, as in a network failure); returns how many. */
  breakLogFollows(): number {
    const n = this.followers.size;
    for (const f of [...this.followers]) f.res.destroy();
    this.followers.clear();
    return n;
  }

  /** Forgets all watch history: a watch resuming from any earlier resourceVersion gets 410 Expired. */
  compact(): void {
    this.history = [];
    this.floor = this.rv;
  }

  /**
   * Ends every open watch: "destroy" cuts the connection (a network failure), "end" finishes the
   * response cleanly (as the real server does at its timeout). Returns how many were open.
   */
  breakWatches(how: "destroy" | "end" = "destroy"): number {
    const n = this.watchers.size;
    for (const w of [...this.watchers]) how === "destroy" ? w.res.destroy() : w.res.end();
    this.watchers.clear();
    return n;
  }

  /** The current global resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  // ---- Nodes and their leases: what the kubelet and the node lifecycle controller would write ----

  /**
   * Registers a node as its kubelet would: Ready (unless told otherwise), with the given labels and
   * allocatable resources, and its Lease in `kube-node-lease`, renewed every quarter of its duration
   * until `stopRenewingLease`.
   */
  addNode(name: string, node: NodeDrive = {}): KubeObject {
    if (!this.objects.has(this.key(resourceFor("namespaces"), undefined, NODE_LEASE_NAMESPACE)))
      this.create(resourceFor("namespaces"), undefined, { metadata: { name: NODE_LEASE_NAMESPACE } });
    const created = this.create(resourceFor("nodes"), undefined, {
      metadata: { name, labels: { "kubernetes.io/hostname": name, ...node.labels } },
      spec: { ...(node.unschedulable && { unschedulable: true }) },
      status: {
        addresses: [
          { type: "InternalIP", address: node.address ?? "10.0.0.1" },
          { type: "Hostname", address: name },
        ],
        allocatable: { cpu: "16", memory: "64Gi", "ephemeral-storage": "500Gi", pods: "110", ...node.allocatable },
        capacity: { cpu: "16", memory: "64Gi", "ephemeral-storage": "500Gi", pods: "110", ...node.allocatable },
        conditions: [readyCondition(node.ready ?? true)],
        nodeInfo: { kubeletVersion: "v1.30.0" },
      },
    });
    this.create(resourceFor("leases"), NODE_LEASE_NAMESPACE, {
      metadata: {
        name,
        ownerReferences: [{ apiVersion: "v1", kind: "Node", name, uid: created.metadata.uid }],
      },
      spec: { holderIdentity: name, leaseDurationSeconds: node.leaseDurationSeconds ?? 40, renewTime: microTime() },
    });
    this.startRenewingLease(name);
    return clone(created);
  }

  /** Sets the node's Ready condition, as the kubelet (True) or the node lifecycle controller (False, Unknown) would. */
  setNodeReady(name: string, ready: boolean | "Unknown", reason?: string): KubeObject {
    return this.modify("nodes", undefined, name, (n) => {
      const others = (n.status.conditions ?? []).filter((c: KubeObject) => c.type !== "Ready");
      n.status.conditions = [...others, readyCondition(ready, reason)];
    });
  }

  /** Cordons (true) or uncordons (false) a node, as `kubectl cordon` and `kubectl uncordon` do. */
  setNodeUnschedulable(name: string, unschedulable: boolean): KubeObject {
    return this.modify("nodes", undefined, name, (n) => {
      n.spec = { ...n.spec, unschedulable: unschedulable || undefined };
    });
  }

  /** Adds or changes labels of a node; a null value removes the label. */
  setNodeLabels(name: string, labels: Record<string, string | null>): KubeObject {
    return this.modify("nodes", undefined, name, (n) => {
      n.metadata.labels = mergePatch(n.metadata.labels ?? {}, labels);
    });
  }

  /** Changes the node's allocatable (and capacity) resources; a null value removes the resource. */
  setNodeAllocatable(name: string, allocatable: Record<string, string | null>): KubeObject {
    return this.modify("nodes", undefined, name, (n) => {
      n.status.allocatable = mergePatch(n.status.allocatable ?? {}, allocatable);
      n.status.capacity = mergePatch(n.status.capacity ?? {}, allocatable);
    });
  }

  /** Deletes a node; its lease (owned by the node) goes with it. */
  deleteNode(name: string): void {
    this.stopRenewingLease(name);
    const node = this.objects.get(this.key(resourceFor("nodes"), undefined, name));
    if (!node) throw new Error(`kube-api-server: no Node ${name}`);
    this.remove(resourceFor("nodes"), node);
  }

  /** Renews the node's lease now (once). */
  renewLease(name: string): KubeObject {
    return this.modify("leases", NODE_LEASE_NAMESPACE, name, (l) => {
      l.spec.renewTime = microTime();
    });
  }

  /** The node's kubelet renews its lease again, at once and then every quarter of its duration. */
  startRenewingLease(name: string): void {
    this.stopRenewingLease(name);
    this.renewLease(name);
    const seconds = Number(this.get("leases", NODE_LEASE_NAMESPACE, name)?.spec.leaseDurationSeconds ?? 40);
    const timer = setInterval(
      () => {
        if (this.objects.has(this.key(resourceFor("leases"), NODE_LEASE_NAMESPACE, name))) this.renewLease(name);
      },
      (seconds * 1000) / 4,
    );
    timer.unref();
    this.leaseRenewals.set(name, timer);
  }

  /** The node's kubelet stops renewing its lease (it hung, or lost the network), leaving Ready as it was. */
  stopRenewingLease(name: string): void {
    clearInterval(this.leaseRenewals.get(name));
    this.leaseRenewals.delete(name);
  }

  private readonly leaseRenewals = new Map<string, NodeJS.Timeout>();

  // ---- end of nodes and leases ----

  private key(r: Resource, namespace: string | undefined, name: string): string {
    return `${r.plural}/${r.namespaced ? (namespace ?? "") : ""}/${name}`;
  }

  private select(r: Resource, namespace: string | undefined, matches: (o: KubeObject) => boolean): KubeObject[] {
    return [...this.objects.entries()]
      .filter(([k, o]) => k.startsWith(`${r.plural}/`) && (!namespace || !r.namespaced || o.metadata.namespace === namespace) && matches(o))
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([, o]) => clone(o));
  }

  /** Writes an object under a new resourceVersion and tells the watchers. */
  private store(r: Resource, o: KubeObject, type: WatchEvent["type"]): KubeObject {
    o.metadata.resourceVersion = String(++this.rv);
    const key = this.key(r, o.metadata.namespace, o.metadata.name);
    const before = this.objects.get(key);
    if (type === "DELETED") this.objects.delete(key);
    else this.objects.set(key, o);
    this.history.push({ rv: this.rv, type, resource: r, object: clone(o) });
    while (this.history.length > this.historyLimit) this.floor = this.history.shift()!.rv;
    for (const w of this.watchers) {
      if (w.resource !== r) continue;
      // As the real API does, a selector's watch sees an object that stops matching as DELETED, one that starts as ADDED.
      const [now, was] = [w.matches(o), before !== undefined && w.matches(before)];
      if (type === "MODIFIED" && now !== was) w.send(now ? "ADDED" : "DELETED", o);
      else if (now) w.send(type, o);
    }
    return o;
  }

  private create(r: Resource, namespace: string | undefined, body: KubeObject): KubeObject {
    const meta = body?.metadata;
    if (!meta || typeof meta !== "object") throw new StatusError(400, "BadRequest", "metadata is required");
    const name: string | undefined =
      meta.name || (meta.generateName && `${meta.generateName}${randomBytes(3).toString("hex").slice(0, 5)}`);
    if (!name)
      throw new StatusError(422, "Invalid", `${r.kind} "" is invalid: metadata.name: Required value: name or generateName is required`);
    if (r.namespaced) {
      if (meta.namespace && meta.namespace !== namespace)
        throw new StatusError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request");
      if (!this.objects.has(this.key(resourceFor("namespaces"), undefined, namespace!)))
        throw notFound(resourceFor("namespaces"), namespace!);
    }
    if (this.objects.has(this.key(r, namespace, name))) {
      throw new StatusError(409, "AlreadyExists", `${qualified(r)} "${name}" already exists`, { name, kind: r.plural });
    }
    const o: KubeObject = { ...clone(body), apiVersion: r.apiVersion, kind: r.kind };
    o.metadata = {
      ...o.metadata,
      name,
      ...(r.namespaced && { namespace }),
      uid: randomUUID(),
      creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      generation: 1,
    };
    // Defaults the real API or its controllers fill in right away.
    if (r.kind === "Namespace") o.status = { phase: "Active" };
    if (r.kind === "Pod" || r.kind === "PersistentVolumeClaim") o.status = { phase: "Pending" };
    if (r.kind === "Service") o.spec = { type: "ClusterIP", clusterIP: `10.96.${(this.rv >> 8) & 255}.${this.rv & 255}`, ...o.spec };
    return this.store(r, o, "ADDED");
  }

  /** PUT and PATCH: keeps identity fields, checks a given resourceVersion, splits spec from status. */
  private update(r: Resource, current: KubeObject, next: KubeObject, subresource?: string): KubeObject {
    const given = next?.metadata?.resourceVersion;
    if (given && given !== current.metadata.resourceVersion) {
      throw new StatusError(
        409,
        "Conflict",
        `Operation cannot be fulfilled on ${qualified(r)} "${current.metadata.name}": the object has been modified; please apply your changes to the latest version and try again`,
        { name: current.metadata.name, kind: r.plural },
      );
    }
    const { name, namespace, uid, creationTimestamp, generation } = current.metadata;
    const o: KubeObject =
      subresource === "status"
        ? { ...clone(current), status: next.status }
        : { ...next, ...(r.hasStatus && { status: clone(current.status) }) };
    o.apiVersion = r.apiVersion;
    o.kind = r.kind;
    const specChanged = JSON.stringify(o.spec) !== JSON.stringify(current.spec);
    o.metadata = { ...o.metadata, name, namespace, uid, creationTimestamp, generation: generation + (specChanged ? 1 : 0) };
    return this.store(r, o, "MODIFIED");
  }

  /** Deletes an object and, unless orphaning, what it owns (and a namespace's contents). */
  private remove(r: Resource, o: KubeObject, propagationPolicy?: string): KubeObject {
    const deleted = this.store(r, { ...o, metadata: { ...o.metadata, deletionTimestamp: new Date().toISOString() } }, "DELETED");
    if (r.kind === "Pod") {
      const key = this.key(r, o.metadata.namespace, o.metadata.name);
      this.endFollowers(key);
      for (const k of this.logs.keys()) if (k.startsWith(`${key}/`)) this.logs.delete(k);
    }
    for (const dr of RESOURCES.filter((x) => x.namespaced)) {
      for (const d of this.select(dr, undefined, () => true)) {
        const inNamespace = r.kind === "Namespace" && d.metadata.namespace === o.metadata.name;
        const owned =
          propagationPolicy !== "Orphan" && d.metadata.ownerReferences?.some((ref: KubeObject) => ref.uid === deleted.metadata.uid);
        if ((inNamespace || owned) && this.objects.has(this.key(dr, d.metadata.namespace, d.metadata.name)))
          this.remove(dr, d, propagationPolicy);
      }
    }
    return deleted;
  }

  private endFollowers(key: string): void {
    for (const f of [...this.followers])
      if (f.key.startsWith(`${key}/`)) {
        f.res.end();
        this.followers.delete(f);
      }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.url);
    const method = req.method ?? "GET";
    this.requests.push({ method, path: url.pathname, query: url.search });
    try {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString("utf8");
      if (req.headers.authorization !== `Bearer ${this.token}`) throw new StatusError(401, "Unauthorized", "Unauthorized");
      let body: KubeObject | undefined;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        throw new StatusError(400, "BadRequest", "the request body is not valid JSON");
      }
      if (DISCOVERY[url.pathname] && method === "GET") return json(res, 200, DISCOVERY[url.pathname]);
      const route = parseRoute(url.pathname);
      if (!route) throw new StatusError(404, "NotFound", "the server could not find the requested resource");
      const { resource: r, namespace, name, subresource } = route;
      const q = url.searchParams;
      if (name === undefined) {
        const [labels, fields] = [selector(q.get("labelSelector"), labelValue), selector(q.get("fieldSelector"), fieldValue)];
        const matches = (o: KubeObject) => labels(o) && fields(o);
        if (method === "GET" && ["true", "1"].includes(q.get("watch") ?? "")) return this.watch(res, r, namespace, matches, q);
        if (method === "GET")
          return json(res, 200, {
            kind: `${r.kind}List`,
            apiVersion: r.apiVersion,
            metadata: { resourceVersion: this.resourceVersion },
            items: this.select(r, namespace, matches),
          });
        if (method === "POST" && (namespace || !r.namespaced)) return json(res, 201, this.create(r, namespace, body ?? {}));
        throw new StatusError(405, "MethodNotAllowed", `${method} is not supported here`);
      }
      const current = this.objects.get(this.key(r, namespace, name));
      if (!current) throw notFound(r, name);
      if (subresource === "log" && method === "GET") return this.podLog(res, current, q);
      if (method === "GET") return json(res, 200, current);
      if (method === "PUT") return json(res, 200, this.update(r, current, body ?? {}, subresource));
      if (method === "PATCH") {
        const type = (req.headers["content-type"] ?? "").split(";")[0].trim();
        if (type === "application/json-patch+json")
          return json(res, 200, this.update(r, current, jsonPatch(clone(current), Array.isArray(body) ? body : []), subresource));
        if (type === "application/merge-patch+json" || type === "application/strategic-merge-patch+json") {
          return json(res, 200, this.update(r, current, mergePatch(clone(current), body) as KubeObject, subresource));
        }
        throw new StatusError(
          415,
          "UnsupportedMediaType",
          `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`,
        );
      }
      if (method === "DELETE") {
        const deleted = this.remove(r, current, q.get("propagationPolicy") ?? body?.propagationPolicy);
        if (r.deleteReturnsObject) return json(res, 200, deleted);
        return json(res, 200, {
          kind: "Status",
          apiVersion: "v1",
          metadata: {},
          status: "Success",
          details: { name, kind: r.plural, uid: current.metadata.uid },
        });
      }
      throw new StatusError(405, "MethodNotAllowed", `${method} is not supported here`);
    } catch (err) {
      // A bug in this fake still answers, as a 500 Status, rather than hanging the client.
      const e = err instanceof StatusError ? err : new StatusError(500, "InternalError", String(err));
      if (!res.headersSent) json(res, e.code, e.toStatus());
      else res.destroy();
    }
  }

  /** Exec and port-forward: a WebSocket upgrade of GET .../pods/NAME/exec or /portforward. */
  private upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const refused = this.openStream(req, socket, head);
    if (!refused) return;
    const body = JSON.stringify(refused.toStatus());
    socket.end(
      `HTTP/1.1 ${refused.code} ${refused.reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  }

  /** Upgrades to an exec or a port-forward, or says why not. */
  private openStream(req: http.IncomingMessage, socket: Duplex, head: Buffer): StatusError | undefined {
    const url = new URL(req.url ?? "/", this.url);
    this.requests.push({ method: req.method ?? "GET", path: url.pathname, query: url.search });
    if (req.headers.authorization !== `Bearer ${this.token}`) return new StatusError(401, "Unauthorized", "Unauthorized");
    const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/(exec|portforward)$/.exec(url.pathname);
    if (!m) return new StatusError(404, "NotFound", "the server could not find the requested resource");
    const [, namespace, name, kind] = m as unknown as [string, string, string, "exec" | "portforward"];
    const pod = this.objects.get(this.key(resourceFor("pods"), namespace, name));
    if (!pod) return notFound(resourceFor("pods"), name);
    if (pod.status?.phase !== "Running") {
      return new StatusError(400, "BadRequest", `unable to upgrade connection: pod ${name} is not running`);
    }
    const q = url.searchParams;
    const container = (pod.spec.containers as KubeObject[]).find((c) => c.name === (q.get("container") ?? pod.spec.containers[0].name));
    if (kind === "exec" && !container) {
      return new StatusError(400, "BadRequest", `container ${q.get("container")} is not valid for pod ${name}`);
    }
    const port = Number(q.get("ports"));
    if (kind === "portforward" && !(Number.isInteger(port) && port > 0 && port < 65536)) {
      return new StatusError(400, "BadRequest", "invalid port");
    }
    this.sockets.handleUpgrade(req, socket, head, (ws) => {
      const command = q.getAll("command");
      const tty = q.get("tty") === "true";
      const session = {
        kind,
        pod: `${namespace}/${name}`,
        protocol: ws.protocol,
        closed: false,
        ...(kind === "portforward" ? { port } : { command, tty }),
      };
      this.sessions.push(session);
      ws.once("close", () => (session.closed = true));
      if (kind === "portforward") return this.portForward(ws, port);
      const env = Object.fromEntries(
        ((container!.env ?? []) as KubeObject[]).filter((e) => typeof e.value === "string").map((e) => [e.name, e.value]),
      );
      const dir = path.join(this.dir, "pods", namespace, name);
      mkdirSync(dir, { recursive: true });
      this.exec(ws, command, tty, { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, ...env }, dir);
    });
    return undefined;
  }

  /**
   * Runs an exec's command here. Channels: 0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4
   * terminal sizes; on v5, 255 closes stdin. With a TTY the command starts on the first size (or
   * after a second without one) and later sizes resize its pty.
   */
  private exec(ws: WebSocket, command: string[], tty: boolean, env: Record<string, string>, cwd: string): void {
    const send = (channel: number, data: Buffer | string) => {
      if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(data)]));
    };
    const finish = (status: KubeObject) => {
      send(3, JSON.stringify({ metadata: {}, ...status }));
      ws.close(1000);
    };
    let child: ChildProcess | undefined;
    const early: Buffer[] = [];
    let stdinClosed = false;
    const start = (rows = 24, cols = 80) => {
      const argv = tty ? ["python3", "-c", PTY_RELAY, String(rows), String(cols), ...command] : command;
      const started = spawn(argv[0]!, argv.slice(1), {
        cwd,
        env,
        detached: true,
        stdio: ["pipe", "pipe", "pipe", tty ? "pipe" : "ignore"],
      });
      child = started;
      this.children.add(started);
      started.stdout!.on("data", (d: Buffer) => send(1, d));
      started.stderr!.on("data", (d: Buffer) => send(tty ? 1 : 2, d));
      started.stdin!.on("error", () => undefined);
      started.stdio[3]?.on("error", () => undefined);
      for (const chunk of early) started.stdin!.write(chunk);
      if (stdinClosed) started.stdin!.end();
      started.once("error", (err) => {
        this.children.delete(started);
        finish({ status: "Failure", reason: "InternalError", message: `exec failed: ${err.message}` });
      });
      started.once("close", (code, signal) => {
        this.children.delete(started);
        const status = code ?? 128 + (signal ? constants.signals[signal] : 0);
        if (status === 0) return finish({ status: "Success" });
        finish({
          status: "Failure",
          message: `command terminated with non-zero exit code: exit status ${status}`,
          reason: "NonZeroExitCode",
          details: { causes: [{ reason: "ExitCode", message: String(status) }] },
        });
      });
    };
    ws.on("message", (data: Buffer) => {
      const body = data.subarray(1);
      if (data[0] === 0) {
        if (child) child.stdin!.write(body);
        else early.push(body);
      } else if (data[0] === 4) {
        const size = JSON.parse(body.toString()) as { Width?: number; Height?: number; width?: number; height?: number };
        const rows = size.Height ?? size.height ?? 24;
        const cols = size.Width ?? size.width ?? 80;
        this.resizes.push({ rows, cols });
        if (!child) start(rows, cols);
        else (child.stdio[3] as Writable | null)?.write(`${rows} ${cols}\n`);
      } else if (data[0] === 255 && body[0] === 0) {
        stdinClosed = true;
        child?.stdin?.end();
      }
    });
    // A closed stream hangs up a TTY (its command gets SIGHUP); without one the command runs on, as in a real pod.
    ws.on("close", () => tty && child && child.exitCode === null && killGroup(child));
    if (!tty) start();
    else setTimeout(() => child ?? start(), 1000);
  }

  /** Port-forward of one port: channel 0 carries its data, 1 its errors; each starts with the port (2 bytes, little-endian). */
  private portForward(ws: WebSocket, port: number): void {
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16LE(port);
    const send = (channel: number, data: Buffer) => {
      if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.from([channel]), data]));
    };
    send(0, prefix);
    send(1, prefix);
    const upstream = net.connect(port, "127.0.0.1");
    upstream.on("data", (d: Buffer) => send(0, d));
    upstream.on("error", (err) => {
      send(1, Buffer.from(`error forwarding port ${port}: ${err.message}`));
      ws.close(1000);
    });
    upstream.on("close", () => ws.close(1000));
    ws.on("message", (data: Buffer) => {
      if (data[0] === 0) upstream.write(data.subarray(1));
    });
    ws.on("close", () => upstream.destroy());
  }

  /**
   * A watch: newline-delimited JSON events. Without a resourceVersion (or with "0") it starts with
   * ADDED for what exists; with one it replays the kept events after it, or sends ERROR 410 Expired
   * and ends when that version is older than the kept history, so the client re-lists.
   */
  private watch(
    res: http.ServerResponse,
    r: Resource,
    namespace: string | undefined,
    matches: (o: KubeObject) => boolean,
    q: URLSearchParams,
  ): void {
    // Flush now: the client's fetch resolves on the headers, and a quiet watch may send nothing for a while.
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-cache" }).flushHeaders();
    const send = (type: string, object: KubeObject) => {
      if (!res.destroyed && !res.writableEnded) res.write(`${JSON.stringify({ type, object })}\n`);
    };
    const from = q.get("resourceVersion");
    if (from && from !== "0") {
      if (Number(from) < this.floor) {
        const expired = new StatusError(410, "Expired", `too old resource version: ${from} (${this.floor})`);
        send("ERROR", expired.toStatus());
        res.end();
        return;
      }
      for (const e of this.history)
        if (e.rv > Number(from) && e.resource === r && (!namespace || e.object.metadata.namespace === namespace) && matches(e.object))
          send(e.type, e.object);
    } else {
      for (const o of this.select(r, namespace, matches)) send("ADDED", o);
    }
    const watcher: Watcher = { resource: r, matches: (o) => (!namespace || o.metadata.namespace === namespace) && matches(o), send, res };
    this.watchers.add(watcher);
    const timers: NodeJS.Timeout[] = [];
    const timeout = Number(q.get("timeoutSeconds") ?? 0);
    if (timeout > 0) timers.push(setTimeout(() => res.end(), timeout * 1000));
    if (q.get("allowWatchBookmarks") === "true") {
      timers.push(
        setInterval(
          () => send("BOOKMARK", { kind: r.kind, apiVersion: r.apiVersion, metadata: { resourceVersion: this.resourceVersion } }),
          this.bookmarkIntervalMs,
        ),
      );
    }
    res.on("close", () => {
      this.watchers.delete(watcher);
      for (const t of timers) clearTimeout(t);
    });
  }

  /**
   * Pod logs as plain text. Like the real API, a container that has not started answers 400; with
   * `follow=true` on a running container the response stays open and streams appended lines until
   * the pod is deleted, its container terminates, or the server goes down.
   */
  private podLog(res: http.ServerResponse, pod: KubeObject, q: URLSearchParams): void {
    const { name, namespace } = pod.metadata;
    const container = q.get("container") || pod.spec?.containers?.[0]?.name;
    if (!pod.spec?.containers?.some((c: KubeObject) => c.name === container)) {
      throw new StatusError(400, "BadRequest", `container ${container} is not valid for pod ${name}`);
    }
    const state = pod.status?.containerStatuses?.find((c: KubeObject) => c.name === container)?.state;
    if (!state?.running && !state?.terminated) {
      throw new StatusError(
        400,
        "BadRequest",
        `container "${container}" in pod "${name}" is waiting to start: ${state?.waiting?.reason ?? "ContainerCreating"}`,
      );
    }
    const key = `${this.key(resourceFor("pods"), namespace, name)}/${container}`;
    const since = q.get("sinceTime");
    if (since !== null && !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(since))
      throw new StatusError(400, "BadRequest", `parsing time "${since}" as "2006-01-02T15:04:05Z07:00": cannot parse`);
    // Like the kubelet: lines at or after sinceTime (whole seconds), compared by their timestamps.
    const lines = (this.logs.get(key) ?? []).filter((l) => since === null || Date.parse(l.time) >= Date.parse(since));
    const tail = q.get("tailLines");
    const shown = tail === null ? lines : lines.slice(Math.max(0, lines.length - Number(tail)));
    const timestamps = q.get("timestamps") === "true";
    res.writeHead(200, { "content-type": "text/plain" }).flushHeaders();
    if (shown.length > 0) res.write(shown.map((l) => logText(l, timestamps)).join(""));
    if (q.get("follow") !== "true" || !state.running) return void res.end();
    const follower = { key, res, timestamps };
    this.followers.add(follower);
    res.on("close", () => this.followers.delete(follower));
  }
}

function parseRoute(pathname: string): { resource: Resource; namespace?: string; name?: string; subresource?: string } | undefined {
  for (const prefix of ["/api/v1", "/apis/networking.k8s.io/v1", "/apis/coordination.k8s.io/v1"]) {
    if (!pathname.startsWith(`${prefix}/`)) continue;
    let parts = pathname
      .slice(prefix.length + 1)
      .split("/")
      .map(decodeURIComponent);
    let namespace: string | undefined;
    if (parts[0] === "namespaces" && parts.length >= 3) [namespace, parts] = [parts[1], parts.slice(2)];
    const [plural, name, subresource, ...rest] = parts;
    const resource = RESOURCES.find((r) => r.plural === plural && prefixOf(r) === prefix);
    if (!resource || rest.length > 0 || (!resource.namespaced && namespace !== undefined)) return undefined;
    // Namespaced kinds are listed across namespaces at /api/v1/pods, but addressed only inside one.
    if (resource.namespaced && namespace === undefined && name !== undefined) return undefined;
    if (subresource !== undefined && subresource !== "status" && !(subresource === "log" && resource.kind === "Pod")) return undefined;
    return { resource, namespace, name, subresource };
  }
  return undefined;
}

/** Ends an exec'd command and what it started. */
function killGroup(child: ChildProcess): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
  } catch {
    // already gone
  }
}

function json(res: http.ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** Starts a Kubernetes API test server on a free port; `close()` it in `after`. */
export async function startKubeApiServer(options?: KubeApiServerOptions): Promise<KubeApiTestServer> {
  const server = new KubeApiTestServer(options);
  await server.start();
  return server;
}
