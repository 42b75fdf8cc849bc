import { Writable } from "node:stream";
import {
  ApiException,
  CoreV1Api,
  type KubeConfig,
  Log,
  NetworkingV1Api,
  type V1PersistentVolumeClaim,
  type V1Pod,
  type V1Secret,
} from "@kubernetes/client-node";
import { InvalidArgumentError, UnavailableError } from "../errors.js";
import { KubeListWatch } from "../platform/kube-list-watch.js";
import type { Logger } from "../platform/logger.js";
import {
  CONTAINER,
  ENVIRONMENT_LABEL,
  GENERATION_ANNOTATION,
  ingressManifest,
  ingressTlsSecretName,
  namespaceManifest,
  namespaceOf,
  objectName,
  ownerOf,
  podManifest,
  secretManifest,
  serviceManifest,
  volumeClaimManifest,
  type KubernetesOptions,
} from "./kubernetes-manifests.js";
import type { Runtime, WorkloadSpec, WorkloadState } from "./runtime.js";

export const HOST_LABEL = "remotegpu.io/host-id";

/** Where the runtime's observations go (the reconciler and the log store). */
export interface WorkloadObserver {
  status(hostId: string, report: { environmentId: string; generation: number; state: WorkloadState; message: string }): Promise<void>;
  logs(hostId: string, environmentId: string, lines: { time: Date; stream: "STDOUT" | "STDERR" | "SYSTEM"; text: string }[]): Promise<void>;
  /** The newest stored line of the environment's pod logs: its time and how many stored lines share it. */
  lastLog(environmentId: string): Promise<LogCursor | undefined>;
}

/** Where a pod's log was read up to: the time of the newest line taken, and how many lines have that time. */
export interface LogCursor {
  time: Date;
  count: number;
}

const WAITING_FAILURES = new Set(["InvalidImageName", "CreateContainerConfigError", "CreateContainerError"]);
/** Registries fail now and then: these fail the environment only once they outlast the pull timeout. */
const PULL_FAILURES = new Set(["ImagePullBackOff", "ErrImagePull"]);
const SELECTOR = ENVIRONMENT_LABEL; // "has the label": every object this runtime made

/**
 * A pod's state as a workload state. A pull error fails it only `pullTimeoutMs` after the pod was
 * made (0: at once); until then it is STARTING with the error as its message.
 */
export function podState(pod: V1Pod, pullTimeoutMs = 0, now = Date.now()): { state: WorkloadState; message: string } {
  const status = pod.status ?? {};
  const container = status.containerStatuses?.find((c) => c.name === CONTAINER);
  const waiting = container?.state?.waiting;
  const why = `${waiting?.reason}: ${waiting?.message ?? ""}`.trim();
  if (waiting?.reason && WAITING_FAILURES.has(waiting.reason)) return { state: "FAILED", message: why };
  if (pullFailing(pod)) {
    const left = pullDeadline(pod, pullTimeoutMs, now) - now;
    if (left <= 0) return { state: "FAILED", message: why };
    return { state: "STARTING", message: `pulling the image failed, retrying for ${Math.ceil(left / 1000)} s more: ${why}` };
  }
  const terminated = container?.state?.terminated;
  if (status.phase === "Failed" || status.phase === "Succeeded") {
    const why = status.reason
      ? `${status.reason}${status.message ? `: ${status.message}` : ""}`
      : terminated
        ? `exited with code ${terminated.exitCode}${terminated.reason ? ` (${terminated.reason})` : ""}`
        : status.phase;
    return { state: "FAILED", message: why };
  }
  const ready = status.conditions?.some((c) => c.type === "Ready" && c.status === "True");
  if (status.phase === "Running" && ready) return { state: "RUNNING", message: "" };
  return { state: "STARTING", message: waiting?.reason ?? status.phase ?? "Pending" };
}

/**
 * Environments as Kubernetes objects: per workspace a namespace; per environment a Secret (SSH keys,
 * and the owner of the rest), a PersistentVolumeClaim (the volume, kept on stop), a Pod pinned to
 * the host's node, a Service and an Ingress for its ports. States come from a watch on pods (re-listed
 * on 410 Gone, retried with backoff on errors); logs from following each running pod's log.
 */
export class KubernetesRuntime implements Runtime {
  private readonly core: CoreV1Api;
  private readonly net: NetworkingV1Api;
  /** Pod states: a watch on every pod of ours, re-listed on 410 Gone and after failures. */
  private readonly podWatch: KubeListWatch<V1Pod>;
  private closed = false;
  /** Stops asked for, by environment: the generation to report STOPPED with once the pod is gone. */
  private readonly stopping = new Map<string, number>();
  /** Removals asked for: REMOVED is reported once the pod is really gone (its GPUs are free then). */
  private readonly removing = new Map<string, { hostId: string; generation: number }>();
  /** Pods seen, by key, so that a re-list can tell which ones vanished while the watch was down. */
  private readonly known = new Map<string, V1Pod>();
  /** Each pod's events, applied one at a time in the order received. */
  private readonly queues = new Map<string, Promise<void>>();
  /** The newest resourceVersion applied per pod: an older view of it (a re-list racing the watch) is skipped. */
  private readonly applied = new Map<string, bigint>();
  private readonly following = new Map<string, AbortController>();
  /** Pods whose log was read to its end (the pod ended): not read again. */
  private readonly followed = new Set<string>();
  /** Pods waiting on their image pull: a re-check at the pull deadline, when no event may come. */
  private readonly pullChecks = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly kc: KubeConfig,
    private readonly o: KubernetesOptions,
    private readonly observer: WorkloadObserver,
    private readonly logger: Logger,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.net = kc.makeApiClient(NetworkingV1Api);
    this.podWatch = new KubeListWatch<V1Pod>(
      kc,
      {
        what: "pods",
        path: "/api/v1/pods",
        labelSelector: SELECTOR,
        list: () => this.core.listPodForAllNamespaces({ labelSelector: SELECTOR }),
        replaced: (pods) => {
          // Pods that vanished while no watch was open get the DELETED they missed.
          const listed = new Set(pods.map(podKey));
          for (const [key, pod] of [...this.known]) if (!listed.has(key)) void this.enqueue("DELETED", pod);
          for (const pod of pods) void this.enqueue("ADDED", pod);
        },
        changed: (type, pod) => void this.enqueue(type, pod),
      },
      logger,
    );
  }

  async run(spec: WorkloadSpec): Promise<void> {
    try {
      await this.create(spec);
    } catch (err) {
      // The API refused the objects themselves (invalid, forbidden), or the spec makes no valid pod
      // (a MIG profile that is no resource name): retrying cannot help.
      if (!(err instanceof RejectedError || err instanceof InvalidArgumentError)) throw err;
      await this.observer.status(spec.hostId, {
        environmentId: spec.environmentId,
        generation: spec.generation,
        state: "FAILED",
        message: err.message,
      });
    }
  }

  private async create(spec: WorkloadSpec): Promise<void> {
    this.stopping.delete(spec.environmentId); // a run after a stop: the old pod's end is not this one's
    const namespace = namespaceOf(spec, this.o);
    const name = objectName(spec.environmentId);
    await this.call(() => created(this.core.createNamespace({ body: namespaceManifest(spec, this.o) })));
    const secret = await this.ensureSecret(secretManifest(spec, this.o));
    const owner = ownerOf(secret);
    const claim = volumeClaimManifest(spec, this.o, owner);
    const madeClaim = await this.call(() => created(this.core.createNamespacedPersistentVolumeClaim({ namespace, body: claim })));
    if (!madeClaim)
      await this.growClaim((await this.call(() => this.core.readNamespacedPersistentVolumeClaim({ namespace, name })))!, claim);

    // One pod per generation: a newer one replaces the older; the same one again changes nothing.
    const pods = await this.pods(spec.environmentId, namespace);
    if (pods.some((p) => generationOf(p) >= spec.generation)) return;
    for (const old of pods) await this.call(() => missing(this.core.deleteNamespacedPod({ namespace, name: old.metadata!.name! })));
    // Ports may have changed with the generation: the Service and Ingress are made anew.
    await this.deleteRouting(namespace, name);
    const service = serviceManifest(spec, this.o, owner);
    if (service) await this.call(() => created(this.core.createNamespacedService({ namespace, body: service })));
    const ingress = ingressManifest(spec, this.o, owner);
    if (ingress) await this.call(() => created(this.net.createNamespacedIngress({ namespace, body: ingress })));
    const pod = podManifest(spec, this.o, owner);
    pod.metadata!.name = `${name}-${spec.generation}`;
    pod.metadata!.labels![HOST_LABEL] = spec.hostId;
    await this.call(() => created(this.core.createNamespacedPod({ namespace, body: pod })));
  }

  /** Creates the Secret, or brings an existing one up to date (the SSH keys may have changed); returns it. */
  private async ensureSecret(wanted: V1Secret): Promise<V1Secret> {
    const { name, namespace } = wanted.metadata as { name: string; namespace: string };
    const made = await this.call(() => created(this.core.createNamespacedSecret({ namespace, body: wanted })));
    if (made) return made;
    const current = (await this.call(() => this.core.readNamespacedSecret({ namespace, name })))!;
    if (secretText(current, "authorized_keys") === wanted.stringData?.authorized_keys) return current;
    // Replaced in place: the same uid, so what it owns stays owned.
    const body: V1Secret = {
      ...wanted,
      metadata: { ...wanted.metadata, resourceVersion: current.metadata?.resourceVersion },
      data: undefined,
    };
    return (await this.call(() => this.core.replaceNamespacedSecret({ namespace, name, body })))!;
  }

  /** A volume asked to be larger than it is grows (where its storage class allows); it never shrinks. */
  private async growClaim(current: V1PersistentVolumeClaim, wanted: V1PersistentVolumeClaim): Promise<void> {
    const size = (c: V1PersistentVolumeClaim) => gibOf(c.spec?.resources?.requests?.storage);
    const [have, want] = [size(current), size(wanted)];
    if (have === undefined || want === undefined || want <= have) return;
    const { name, namespace } = current.metadata as { name: string; namespace: string };
    const body: V1PersistentVolumeClaim = {
      ...current,
      spec: {
        ...current.spec,
        resources: { ...current.spec?.resources, requests: { ...current.spec?.resources?.requests, storage: `${want}Gi` } },
      },
    };
    try {
      await this.call(() => this.core.replaceNamespacedPersistentVolumeClaim({ namespace, name, body }));
    } catch (err) {
      // A class that cannot expand refuses it: the environment still runs, on the volume it has.
      if (!(err instanceof RejectedError)) throw err;
      this.logger.warn({ claim: `${namespace}/${name}`, error: err.message }, "could not grow an environment's volume");
    }
  }

  /** Deletes the pod and its routing; the volume and the secret stay. STOPPED follows when the pod is gone. */
  async stop(environmentId: string, hostId: string, generation: number, workspaceId?: string): Promise<void> {
    const namespace = this.namespaceFor(environmentId, workspaceId);
    const pods = await this.pods(environmentId, namespace);
    await this.deleteRouting(namespace, objectName(environmentId));
    if (pods.length === 0) {
      this.stopping.delete(environmentId);
      await this.observer.status(hostId, { environmentId, generation, state: "STOPPED", message: "not running" });
      return;
    }
    this.stopping.set(environmentId, Math.max(generation, ...pods.map(generationOf)));
    for (const pod of pods) await this.call(() => missing(this.core.deleteNamespacedPod({ namespace, name: pod.metadata!.name! })));
  }

  /** Deletes every object of the environment, volume included, then reports REMOVED. */
  async remove(environmentId: string, hostId: string, generation: number, workspaceId?: string): Promise<void> {
    const namespace = this.namespaceFor(environmentId, workspaceId);
    const name = objectName(environmentId);
    this.stopping.delete(environmentId);
    const pods = await this.pods(environmentId, namespace);
    for (const pod of pods) await this.call(() => missing(this.core.deleteNamespacedPod({ namespace, name: pod.metadata!.name! })));
    await this.deleteRouting(namespace, name);
    await this.call(() => missing(this.core.deleteNamespacedPersistentVolumeClaim({ namespace, name })));
    await this.call(() => missing(this.core.deleteNamespacedSecret({ namespace, name })));
    // cert-manager's certificate Secret is not ours to own, and it would outlive the environment.
    if (this.o.ingressCertIssuer)
      await this.call(() => missing(this.core.deleteNamespacedSecret({ namespace, name: ingressTlsSecretName(environmentId) })));
    // A pod deletion is graceful: its GPUs are free only once it is gone, which the watch tells.
    if ((await this.pods(environmentId, namespace)).length > 0) this.removing.set(environmentId, { hostId, generation });
    else
      await this.observer.status(hostId, {
        environmentId,
        generation,
        state: "REMOVED",
        message: "its pod, volume and routes were deleted",
      });
  }

  /**
   * The environment's pod of `generation` while it runs (as the pod watch last saw it, so asking
   * costs no API call), for SSH sessions in it.
   */
  runningPod(environmentId: string, generation: number): { namespace: string; name: string } | undefined {
    for (const [key, pod] of this.known) {
      if (!key.startsWith(`${environmentId}/`) || generationOf(pod) !== generation) continue;
      if (pod.status?.phase !== "Running" || pod.metadata?.deletionTimestamp) continue;
      return { namespace: pod.metadata!.namespace!, name: pod.metadata!.name! };
    }
    return undefined;
  }

  /** The environment's namespace: every object of it lives there, so nothing is looked for elsewhere. */
  private namespaceFor(environmentId: string, workspaceId: string | undefined): string {
    if (!workspaceId) throw new Error(`the Kubernetes runtime needs the workspace of environment ${environmentId}`);
    return namespaceOf({ workspaceId }, this.o);
  }

  /** Starts watching pods; runs until close(). */
  start(): void {
    this.podWatch.start();
  }

  close(): void {
    this.closed = true;
    void this.podWatch.stop();
    for (const c of this.following.values()) c.abort();
    this.following.clear();
    for (const t of this.pullChecks.values()) clearTimeout(t);
    this.pullChecks.clear();
  }

  /** Queues a pod event behind the earlier ones of the same pod; resolves once it is applied. */
  private enqueue(type: string, pod: V1Pod, recheck = false): Promise<void> {
    const key = podKey(pod);
    const next = (this.queues.get(key) ?? Promise.resolve())
      .then(() => this.observe(type, pod, recheck))
      .catch((err: unknown) => this.logger.warn({ err, pod: key }, "handling a pod event failed"));
    this.queues.set(key, next);
    void next.then(() => this.queues.get(key) === next && this.queues.delete(key));
    return next;
  }

  private async observe(type: string, pod: V1Pod, recheck: boolean): Promise<void> {
    const environmentId = pod.metadata?.labels?.[ENVIRONMENT_LABEL];
    const hostId = pod.metadata?.labels?.[HOST_LABEL];
    if (!environmentId || !hostId) return;
    const generation = generationOf(pod);
    const key = podKey(pod);
    const version = versionOf(pod);
    const applied = this.applied.get(key);
    if (!recheck && version !== undefined && applied !== undefined && version < applied) return; // older than what was applied
    if (version !== undefined) this.applied.set(key, version);
    clearTimeout(this.pullChecks.get(key));
    this.pullChecks.delete(key);
    if (type === "DELETED") {
      this.known.delete(key);
      this.applied.delete(key);
      this.following.get(key)?.abort();
      this.following.delete(key);
      this.followed.delete(key);
      const removal = this.removing.get(environmentId);
      if (removal) {
        if ([...this.known.keys()].some((k) => k.startsWith(`${environmentId}/`))) return;
        this.removing.delete(environmentId);
        return this.observer.status(removal.hostId, {
          environmentId,
          generation: removal.generation,
          state: "REMOVED",
          message: "its pod, volume and routes were deleted",
        });
      }
      const stopped = this.stopping.get(environmentId);
      if (stopped === undefined)
        return this.observer.status(hostId, { environmentId, generation, state: "FAILED", message: "its pod was deleted" });
      if ((await this.pods(environmentId, pod.metadata!.namespace!)).length > 0) return; // another pod of it is still going away
      this.stopping.delete(environmentId);
      return this.observer.status(hostId, { environmentId, generation: stopped, state: "STOPPED", message: "stopped" });
    }
    this.known.set(key, pod);
    const pullTimeoutMs = this.o.imagePullTimeoutSeconds * 1000;
    const { state, message } = podState(pod, pullTimeoutMs);
    if (state === "STARTING" && pullFailing(pod)) {
      // Nothing may change on the pod before its deadline (the kubelet just backs off): look again then.
      const timer = setTimeout(
        () => {
          const latest = this.known.get(key);
          if (latest) void this.enqueue("MODIFIED", latest, true);
        },
        pullDeadline(pod, pullTimeoutMs) - Date.now() + 50,
      );
      timer.unref();
      this.pullChecks.set(key, timer);
    }
    // Running (ready or not), or already ended: a container that crashed before anyone saw it run has
    // the log its user needs most.
    const started = ["Running", "Succeeded", "Failed"].includes(pod.status?.phase ?? "");
    if (started && !this.following.has(key) && !this.followed.has(key)) this.follow(pod, hostId, environmentId, key);
    await this.observer.status(hostId, { environmentId, generation, state, message });
  }

  /**
   * Follows a pod's log into the log store until the pod ends, resuming after any break (API
   * restart, cut connection) from the last line taken: the read asks for lines since that line's
   * second and drops those already stored. After a control-plane restart the point to resume from
   * is the newest line the store holds.
   */
  private follow(pod: V1Pod, hostId: string, environmentId: string, key: string): void {
    const control = new AbortController();
    this.following.set(key, control);
    const { namespace, name } = pod.metadata as { namespace: string; name: string };
    void (async () => {
      let cursor = await this.observer.lastLog(environmentId).catch(() => undefined);
      let delayMs = 500;
      while (!control.signal.aborted && !this.closed) {
        // A pod that no longer runs gets one last read (what it wrote before it ended), then no more.
        const live = this.known.get(key)?.status?.phase === "Running";
        const opened = Date.now();
        cursor = await this.readLog(namespace, name, hostId, environmentId, cursor, live, control.signal);
        if (!live || control.signal.aborted) break;
        delayMs = Date.now() - opened > 5000 ? 500 : Math.min(30_000, delayMs * 2);
        await sleep(delayMs, control.signal);
      }
      if (this.following.get(key) === control) {
        this.following.delete(key);
        if (this.known.has(key)) this.followed.add(key);
      }
    })();
  }

  /** One read of a pod's log (followed while `follow`), after `from`; resolves with where it got to. */
  private readLog(
    namespace: string,
    pod: string,
    hostId: string,
    environmentId: string,
    from: LogCursor | undefined,
    follow: boolean,
    signal: AbortSignal,
  ): Promise<LogCursor | undefined> {
    return new Promise((resolve) => {
      let taken = from; // advanced only once the store has the lines
      let skip = from?.count ?? 0; // lines at from.time already stored
      let partial = "";
      const sink = new Writable({
        write: (chunk: Buffer, _enc, done) => {
          const parts = (partial + chunk.toString("utf8")).split("\n");
          partial = parts.pop() ?? ""; // an unfinished line waits for its end (or is read again next time)
          const lines: { time: Date; stream: "STDOUT"; text: string }[] = [];
          let next = taken;
          for (const raw of parts) {
            const space = raw.indexOf(" ");
            const time = new Date(raw.slice(0, space));
            if (space < 0 || Number.isNaN(time.getTime())) continue; // every line has a timestamp (timestamps=true)
            const ms = time.getTime();
            if (from && ms < from.time.getTime()) continue;
            if (from && ms === from.time.getTime() && skip > 0) {
              skip--;
              continue;
            }
            next = next && next.time.getTime() === ms ? { time, count: next.count + 1 } : { time, count: 1 };
            lines.push({ time, stream: "STDOUT", text: raw.slice(space + 1) });
          }
          if (lines.length === 0) return done();
          this.observer.logs(hostId, environmentId, lines).then(
            () => {
              taken = next;
              done();
            },
            (err: unknown) => done(err as Error),
          );
        },
      });
      sink.on("error", () => undefined);
      let stopReading = () => {};
      let closed = false;
      sink.on("close", () => {
        closed = true;
        signal.removeEventListener("abort", stopReading);
        resolve(taken);
      });
      // client-node pipes the response into the sink and leaves errors of the source unhandled (an
      // abort or a cut connection would crash the process): route them to the sink.
      sink.on("pipe", (source: NodeJS.ReadableStream) => source.on("error", (err: Error) => sink.destroy(err)));
      // sinceTime has whole seconds: the lines of from's second come again and are skipped above.
      const sinceTime = from && new Date(Math.floor(from.time.getTime() / 1000) * 1000).toISOString().replace(/\.\d+Z$/, "Z");
      new Log(this.kc)
        .log(namespace, pod, CONTAINER, sink, { follow, timestamps: true, sinceTime })
        .then((abort) => {
          if (signal.aborted)
            abort.abort(); // ended before the stream opened
          else if (!closed) {
            stopReading = () => abort.abort();
            signal.addEventListener("abort", stopReading, { once: true });
          }
        })
        .catch((err: unknown) => {
          this.logger.debug({ environmentId, error: String(err) }, "pod log unavailable");
          sink.destroy();
        });
    });
  }

  private async pods(environmentId: string, namespace: string): Promise<V1Pod[]> {
    return (await this.call(() => this.core.listNamespacedPod({ namespace, labelSelector: `${ENVIRONMENT_LABEL}=${environmentId}` })))!
      .items;
  }

  private async deleteRouting(namespace: string, name: string): Promise<void> {
    await this.call(() => missing(this.core.deleteNamespacedService({ namespace, name })));
    await this.call(() => missing(this.net.deleteNamespacedIngress({ namespace, name })));
  }

  /** An API call; other failures than the expected ones become UNAVAILABLE, which the reconciler retries. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ApiException && [400, 403, 422].includes(err.code))
        throw new RejectedError(`Kubernetes refused it: ${apiMessage(err)}`);
      if (err instanceof ApiException) throw new UnavailableError(`Kubernetes API: ${err.code} ${apiMessage(err)}`);
      throw new UnavailableError(`Kubernetes API unreachable: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}

class RejectedError extends Error {}

/** Whether the pod's container waits on an image that failed to pull. */
function pullFailing(pod: V1Pod): boolean {
  const reason = pod.status?.containerStatuses?.find((c) => c.name === CONTAINER)?.state?.waiting?.reason;
  return reason !== undefined && PULL_FAILURES.has(reason);
}

/** A Secret's value, from `data` (as the API returns it) or `stringData` (as written). */
function secretText(secret: V1Secret, key: string): string | undefined {
  const data = secret.data?.[key];
  return data !== undefined ? Buffer.from(data, "base64").toString("utf8") : secret.stringData?.[key];
}

/** A volume size this runtime wrote (`<n>Gi`) in GiB; undefined for any other form. */
function gibOf(quantity: string | undefined): number | undefined {
  const m = /^(\d+)Gi$/.exec(quantity ?? "");
  return m ? Number(m[1]) : undefined;
}

/** When a pod whose image will not pull is given up on. */
function pullDeadline(pod: V1Pod, pullTimeoutMs: number, now = Date.now()): number {
  const created = pod.metadata?.creationTimestamp;
  return (created ? new Date(created).getTime() : now) + pullTimeoutMs;
}

/** A resourceVersion as a number to order by, where it is one (etcd's are); undefined otherwise. */
function versionOf(o: { metadata?: { resourceVersion?: string } }): bigint | undefined {
  const rv = o.metadata?.resourceVersion;
  return rv && /^\d+$/.test(rv) ? BigInt(rv) : undefined;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });

function podKey(pod: V1Pod): string {
  return `${pod.metadata?.labels?.[ENVIRONMENT_LABEL]}/${pod.metadata?.name}`;
}

function generationOf(pod: V1Pod): number {
  return Number(pod.metadata?.annotations?.[GENERATION_ANNOTATION] ?? 0);
}

/** Creation where an object of ours already being there is success (creation is idempotent): undefined then. */
async function created<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof ApiException && err.code === 409) return undefined;
    throw err;
  }
}

/** Deletion where the object being gone already is success. */
async function missing<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof ApiException && err.code === 404) return undefined;
    throw err;
  }
}

function apiMessage(err: ApiException<unknown>): string {
  const body = err.body;
  if (typeof body === "string") {
    try {
      return (JSON.parse(body) as { message?: string }).message ?? body;
    } catch {
      return body.slice(0, 200);
    }
  }
  return (body as { message?: string } | undefined)?.message ?? err.message;
}
