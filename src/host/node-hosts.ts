import { LockMode } from "@mikro-orm/core";
import type { Knex } from "@mikro-orm/knex";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import type { Clock } from "../platform/clock.js";
import type { KubeChange, NodeWatchListener, ObservedLease, ObservedNode } from "../platform/kube-node-watch.js";
import type { Logger } from "../platform/logger.js";
import { Host } from "./host.js";
import type { HostRegistry } from "./host-registry.js";
import { applyInventory, inventoryChanged } from "./inventory-sync.js";
import { describeNode, type LeaseSeen, type NodeFacts } from "./node-facts.js";

/** How often a replica that does not lead asks to. */
const FOLLOWER_ASKS_EVERY_MS = 5_000;

/** Watches of the selected nodes and the node leases, made when this replica begins to lead. */
export type NodeWatchFactory = (listener: NodeWatchListener) => { start(): void; stop(): Promise<void> };

export interface NodeHostsOptions {
  /** `K8S_NODE_SELECTOR`: the label selector of the nodes that are hosts. */
  selector: string;
  /** How often the leader checks lease ages and that it still leads. @default 1000 */
  tickMs?: number;
  /** How often every node's host is written again, repairing what changed behind its back. @default 30000 */
  resyncMs?: number;
}

/**
 * Kubernetes nodes as hosts. On the leader only, it lists and watches the Nodes that match the
 * selector, and the node leases; each node is a KUBERNETES host of the same name whose status,
 * cordon and GPUs follow the Node:
 * - ONLINE while the Node is Ready and its kubelet renews its lease in time, OFFLINE otherwise (a
 *   DRAINING or MAINTENANCE host keeps that status, which an operator set);
 * - cordoned when the Node becomes unschedulable, uncordoned when it becomes schedulable again;
 * - GPUs `k8s-<node>-<index>`, as many as the Node's allocatable `nvidia.com/gpu` (else GFD's
 *   `nvidia.com/gpu.count`), of the model and memory GFD's labels give; none of that while an agent
 *   on the node reports the GPUs itself;
 * - OFFLINE when the Node is deleted or stops matching (never deleted: it may hold environments).
 * Writes happen only when what a node says changes (and at each resync, only what differs).
 */
export class NodeHosts implements NodeWatchListener {
  private readonly tickMs: number;
  private readonly resyncMs: number;
  private readonly nodes = new Map<string, ObservedNode>();
  private readonly leases = new Map<string, LeaseSeen>();
  /** Each node's facts as last written, so an unchanged node costs no write. */
  private readonly written = new Map<string, string>();
  /** Nodes gone from the selection, with why, waiting for their host to be set OFFLINE. */
  private readonly gone = new Map<string, string>();
  /** Host names taken by hosts of other nodes or runtimes, warned about once. */
  private readonly clashes = new Set<string>();
  private watch?: ReturnType<NodeWatchFactory>;
  /** Whether the nodes were listed since this replica began to lead: until then nothing is known. */
  private listed = false;
  /** A re-list happened: hosts of nodes missing from it are looked for. */
  private relisted = false;
  private resyncAt = 0;
  /** When a follower last asked to lead: it asks every few seconds, not at every tick. */
  private askedAt = Number.NEGATIVE_INFINITY;
  private timer?: NodeJS.Timeout;
  private pass?: Promise<void>;
  private again = false;
  private closed = false;

  constructor(
    private readonly watchNodes: NodeWatchFactory,
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly hosts: Pick<HostRegistry, "announce" | "announceAdded">,
    private readonly isLeader: () => Promise<boolean>,
    private readonly logger: Logger,
    private readonly options: NodeHostsOptions,
  ) {
    this.tickMs = options.tickMs ?? 1000;
    this.resyncMs = options.resyncMs ?? 30_000;
  }

  start(): void {
    this.timer = setInterval(() => this.kick(), this.tickMs);
    this.timer.unref();
    this.kick();
  }

  /** Stops watching and waits for a pass under way. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.pass;
    await this.stepDown();
  }

  /** Runs a pass now, or right after the one under way. */
  private kick(): void {
    if (this.closed) return;
    if (this.pass) {
      this.again = true;
      return;
    }
    this.pass = this.round()
      .catch((err: unknown) => this.logger.error({ err }, "updating hosts from Kubernetes nodes failed"))
      .finally(() => {
        this.pass = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async round(): Promise<void> {
    if (!this.watch) {
      if (Date.now() - this.askedAt < FOLLOWER_ASKS_EVERY_MS) return;
      this.askedAt = Date.now();
    }
    if (!(await this.isLeader())) return this.stepDown();
    this.lead();
    if (!this.listed) return;
    const now = this.clock.now().getTime();
    if (now - this.resyncAt >= this.resyncMs || this.relisted) {
      const full = now - this.resyncAt >= this.resyncMs;
      this.resyncAt = full ? now : this.resyncAt;
      this.relisted = false;
      if (full) this.written.clear();
      await this.findOrphans();
    }
    for (const [name, why] of [...this.gone]) {
      await this.release(name, why);
      this.gone.delete(name);
    }
    for (const [name, node] of this.nodes) {
      const facts = describeNode(node, this.leases.get(name), now);
      const key = JSON.stringify(facts);
      if (this.written.get(name) === key) continue;
      if (await this.write(facts)) this.written.set(name, key);
    }
  }

  private lead(): void {
    if (this.watch) return;
    this.logger.info({ selector: this.options.selector }, "this replica registers Kubernetes nodes as hosts");
    this.watch = this.watchNodes(this);
    this.watch.start();
  }

  /** This replica no longer leads: another one keeps the hosts, from its own list. */
  private async stepDown(): Promise<void> {
    const watch = this.watch;
    if (!watch) return;
    this.watch = undefined;
    await watch.stop();
    this.nodes.clear();
    this.leases.clear();
    this.written.clear();
    this.gone.clear();
    this.listed = false;
  }

  nodesListed(items: ObservedNode[]): void {
    const names = new Set(items.map((n) => n.name));
    for (const name of this.nodes.keys()) if (!names.has(name)) this.gone.set(name, goneReason(name, this.options.selector));
    this.nodes.clear();
    for (const node of items) {
      this.nodes.set(node.name, node);
      this.gone.delete(node.name);
    }
    this.listed = true;
    this.relisted = true;
    this.kick();
  }

  nodeChanged(type: KubeChange, node: ObservedNode): void {
    if (type === "DELETED") {
      this.nodes.delete(node.name);
      this.gone.set(node.name, goneReason(node.name, this.options.selector));
    } else {
      this.nodes.set(node.name, node);
      this.gone.delete(node.name);
    }
    this.kick();
  }

  leasesListed(items: ObservedLease[]): void {
    const names = new Set(items.map((l) => l.node));
    for (const name of [...this.leases.keys()]) if (!names.has(name)) this.leases.delete(name);
    for (const lease of items) this.leaseChanged("MODIFIED", lease);
  }

  leaseChanged(type: KubeChange, lease: ObservedLease): void {
    if (type === "DELETED") {
      this.leases.delete(lease.node);
      return;
    }
    const known = this.leases.get(lease.node);
    const durationMs = lease.durationSeconds * 1000;
    // A renewal counts from when it was seen here, and so does a lease seen for the first time (as
    // Kubernetes' node lifecycle controller does): the kubelet's clock may be off, this one decides.
    if (known?.renewTime === lease.renewTime) known.durationMs = durationMs;
    else this.leases.set(lease.node, { renewTime: lease.renewTime, durationMs, observedAt: this.clock.now().getTime() });
  }

  /** Makes the node's host say what the node says. Returns false when there is no host it may use. */
  private async write(facts: NodeFacts): Promise<boolean> {
    const now = this.clock.now();
    const changed = await this.orm.em.fork().transactional(async (em) => {
      const found = await this.hostOf(em, facts.name);
      const host = found ?? (await this.register(em, facts, now));
      if (!host) return undefined;
      let dirty = host.nodeState === null;
      const set = <K extends keyof Host>(key: K, value: Host[K]) => {
        if (host[key] === value) return;
        host[key] = value;
        dirty = true;
      };
      set("address", facts.address);
      set("cpuMillicores", facts.cpuMillicores);
      set("memoryBytes", facts.memoryBytes);
      set("diskBytes", facts.diskBytes);
      // Its status follows no heartbeats now; an old heartbeat time would read as an agent gone silent.
      set("lastHeartbeatAt", null);
      // Only a change of the node's cordon counts, so a cordon made through the API outlasts an unchanged node.
      const before = host.nodeState;
      if (before ? before.unschedulable !== facts.unschedulable : facts.unschedulable) set("schedulable", !facts.unschedulable);
      if (host.status === "ONLINE" || host.status === "OFFLINE") {
        set("status", facts.ready ? "ONLINE" : "OFFLINE");
        set("statusMessage", facts.reason);
      }
      const state = { ready: facts.ready, reason: facts.reason, unschedulable: facts.unschedulable };
      if (JSON.stringify(before) !== JSON.stringify(state)) {
        host.nodeState = state;
        dirty = true;
      }
      if (dirty) host.updatedAt = now;
      await em.flush();
      // An agent on the node, once connected, reports the real GPUs: they are not replaced.
      const gpus =
        host.agentConnectedAt === null &&
        inventoryChanged(await applyInventory(em.getTransactionContext<Knex.Transaction>()!, host.id, facts.gpus, now));
      return { id: host.id, added: !found, changed: dirty || gpus };
    });
    if (!changed) return false;
    if (changed.added) await this.hosts.announceAdded(changed.id);
    else if (changed.changed) this.hosts.announce([changed.id]);
    return true;
  }

  /** The host of a node: the one already following it, else one registered by hand for it, oldest first. */
  private async hostOf(em: EntityManager, node: string): Promise<Host | null> {
    const [row] = await em.getConnection().execute<{ id: string }[]>(
      `select id from hosts where runtime = 'KUBERNETES' and kubernetes_node_name = ?
         order by node_state is null, created_at limit 1`,
      [node],
      "all",
      em.getTransactionContext(),
    );
    return row ? em.findOne(Host, row.id, { lockMode: LockMode.PESSIMISTIC_WRITE }) : null;
  }

  private async register(em: EntityManager, facts: NodeFacts, now: Date): Promise<Host | null> {
    if (await em.count(Host, { name: facts.name })) {
      if (!this.clashes.has(facts.name)) {
        this.clashes.add(facts.name);
        this.logger.warn(
          { node: facts.name },
          "a host of this name exists for another node or runtime; the Kubernetes node is not registered as a host",
        );
      }
      return null;
    }
    this.clashes.delete(facts.name);
    this.logger.info({ node: facts.name }, "registering a Kubernetes node as a host");
    return em.create(Host, {
      name: facts.name,
      address: facts.address,
      runtime: "KUBERNETES",
      kubernetesNodeName: facts.name,
      status: facts.ready ? "ONLINE" : "OFFLINE",
      statusMessage: facts.reason,
      schedulable: !facts.unschedulable,
      agentVersion: "",
      createdAt: now,
      updatedAt: now,
    });
  }

  /** The node is gone from the selection: its host goes OFFLINE and stops following it. */
  private async release(node: string, why: string): Promise<void> {
    const now = this.clock.now();
    const rows: { id: string }[] = await this.orm.em.getConnection().execute(
      `update hosts set node_state = null, updated_at = ?,
         status = case when status = 'ONLINE' then 'OFFLINE' else status end,
         status_message = case when status in ('ONLINE', 'OFFLINE') then ? else status_message end
       where runtime = 'KUBERNETES' and kubernetes_node_name = ? and node_state is not null
       returning id`,
      [now, why, node],
    );
    this.written.delete(node);
    if (rows.length > 0) {
      this.logger.warn({ node }, "Kubernetes node gone: its host is OFFLINE");
      this.hosts.announce(rows.map((r) => r.id));
    }
  }

  /** Hosts that follow a node the last list did not have (deleted, or relabelled, while no one watched). */
  private async findOrphans(): Promise<void> {
    const rows: { node: string }[] = await this.orm.em
      .getConnection()
      .execute(`select distinct kubernetes_node_name as node from hosts where node_state is not null`);
    for (const { node } of rows)
      if (!this.nodes.has(node) && !this.gone.has(node)) this.gone.set(node, goneReason(node, this.options.selector));
  }
}

function goneReason(node: string, selector: string): string {
  return `Kubernetes node ${node} was deleted or no longer matches K8S_NODE_SELECTOR (${selector})`;
}
