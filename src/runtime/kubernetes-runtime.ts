import { Writable } from "node:stream";
import { ApiException, CoreV1Api, type KubeConfig, Log, NetworkingV1Api, Watch, type V1Pod } from "@kubernetes/client-node";
import { UnavailableError } from "../errors.js";
import type { Logger } from "../platform/logger.js";
import {
  CONTAINER,
  ENVIRONMENT_LABEL,
  GENERATION_ANNOTATION,
  ingressManifest,
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
}

const WAITING_FAILURES = new Set([
  "ImagePullBackOff",
  "ErrImagePull",
  "InvalidImageName",
  "CreateContainerConfigError",
  "CreateContainerError",
]);
const SELECTOR = ENVIRONMENT_LABEL; // "has the label": every object this runtime made

/** A pod's state as a workload state, or undefined when it says nothing new (still being scheduled). */
export function podState(pod: V1Pod): { state: WorkloadState; message: string } {
  const status = pod.status ?? {};
  const container = status.containerStatuses?.find((c) => c.name === CONTAINER);
  const waiting = container?.state?.waiting;
  if (waiting?.reason && WAITING_FAILURES.has(waiting.reason))
    return { state: "FAILED", message: `${waiting.reason}: ${waiting.message ?? ""}`.trim() };
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
  private watchAbort?: AbortController;
  private closed = false;
  /** Stops asked for, by environment: the generation to report STOPPED with once the pod is gone. */
  private readonly stopping = new Map<string, number>();
  /** Removals asked for: REMOVED is reported once the pod is really gone (its GPUs are free then). */
  private readonly removing = new Map<string, { hostId: string; generation: number }>();
  /** Pods seen, by key, so that a re-list can tell which ones vanished while the watch was down. */
  private readonly known = new Map<string, V1Pod>();
  private readonly following = new Map<string, AbortController>();
  private retryMs = 500;

  constructor(
    private readonly kc: KubeConfig,
    private readonly o: KubernetesOptions,
    private readonly observer: WorkloadObserver,
    private readonly logger: Logger,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.net = kc.makeApiClient(NetworkingV1Api);
  }

  async run(spec: WorkloadSpec): Promise<void> {
    try {
      await this.create(spec);
    } catch (err) {
      // The API refused the objects themselves (invalid, forbidden): retrying cannot help.
      if (!(err instanceof RejectedError)) throw err;
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
    await this.call(() => created(this.core.createNamespace({ body: namespaceManifest(spec, this.o) })));
    const secret =
      (await this.call(() => created(this.core.createNamespacedSecret({ namespace, body: secretManifest(spec, this.o) })))) ??
      (await this.call(() => this.core.readNamespacedSecret({ namespace, name: objectName(spec.environmentId) })));
    const owner = ownerOf(secret!);
    await this.call(() =>
      created(this.core.createNamespacedPersistentVolumeClaim({ namespace, body: volumeClaimManifest(spec, this.o, owner) })),
    );

    // One pod per generation: a newer one replaces the older; the same one again changes nothing.
    const pods = await this.pods(spec.environmentId);
    if (pods.some((p) => generationOf(p) >= spec.generation)) return;
    for (const old of pods) await this.call(() => missing(this.core.deleteNamespacedPod({ namespace, name: old.metadata!.name! })));
    // Ports may have changed with the generation: the Service and Ingress are made anew.
    await this.deleteRouting(spec.environmentId);
    const service = serviceManifest(spec, this.o, owner);
    if (service) await this.call(() => created(this.core.createNamespacedService({ namespace, body: service })));
    const ingress = ingressManifest(spec, this.o, owner);
    if (ingress) await this.call(() => created(this.net.createNamespacedIngress({ namespace, body: ingress })));
    const pod = podManifest(spec, this.o, owner);
    pod.metadata!.name = `${objectName(spec.environmentId)}-${spec.generation}`;
    pod.metadata!.labels![HOST_LABEL] = spec.hostId;
    await this.call(() => created(this.core.createNamespacedPod({ namespace, body: pod })));
  }

  /** Deletes the pod and its routing; the volume and the secret stay. STOPPED follows when the pod is gone. */
  async stop(environmentId: string, hostId: string, generation: number): Promise<void> {
    const pods = await this.pods(environmentId);
    await this.deleteRouting(environmentId);
    if (pods.length === 0) {
      this.stopping.delete(environmentId);
      await this.observer.status(hostId, { environmentId, generation, state: "STOPPED", message: "not running" });
      return;
    }
    this.stopping.set(environmentId, Math.max(generation, ...pods.map(generationOf)));
    for (const pod of pods)
      await this.call(() => missing(this.core.deleteNamespacedPod({ namespace: pod.metadata!.namespace!, name: pod.metadata!.name! })));
  }

  /** Deletes every object of the environment, volume included, then reports REMOVED. */
  async remove(environmentId: string, hostId: string, generation: number): Promise<void> {
    const selector = `${ENVIRONMENT_LABEL}=${environmentId}`;
    this.stopping.delete(environmentId);
    const pods = await this.pods(environmentId);
    for (const pod of pods)
      await this.call(() => missing(this.core.deleteNamespacedPod({ namespace: pod.metadata!.namespace!, name: pod.metadata!.name! })));
    await this.deleteRouting(environmentId);
    const claims = await this.call(() => this.core.listPersistentVolumeClaimForAllNamespaces({ labelSelector: selector }));
    for (const c of claims!.items)
      await this.call(() =>
        missing(this.core.deleteNamespacedPersistentVolumeClaim({ namespace: c.metadata!.namespace!, name: c.metadata!.name! })),
      );
    const secrets = await this.call(() => this.core.listSecretForAllNamespaces({ labelSelector: selector }));
    for (const s of secrets!.items)
      await this.call(() => missing(this.core.deleteNamespacedSecret({ namespace: s.metadata!.namespace!, name: s.metadata!.name! })));
    // A pod deletion is graceful: its GPUs are free only once it is gone, which the watch tells.
    if ((await this.pods(environmentId)).length > 0) this.removing.set(environmentId, { hostId, generation });
    else
      await this.observer.status(hostId, {
        environmentId,
        generation,
        state: "REMOVED",
        message: "its pod, volume and routes were deleted",
      });
  }

  /** Starts watching pods; runs until close(). */
  start(): void {
    void this.watchLoop();
  }

  close(): void {
    this.closed = true;
    this.watchAbort?.abort();
    for (const c of this.following.values()) c.abort();
    this.following.clear();
  }

  private async watchLoop(): Promise<void> {
    while (!this.closed) {
      try {
        const list = await this.call(() => this.core.listPodForAllNamespaces({ labelSelector: SELECTOR }));
        // Pods that vanished while no watch was open get the DELETED they missed.
        const listed = new Set(list!.items.map(podKey));
        for (const [key, pod] of [...this.known]) if (!listed.has(key)) await this.observe("DELETED", pod);
        for (const pod of list!.items) await this.observe("ADDED", pod);
        const watchedFrom = Date.now();
        // Events from the list's resourceVersion on; a 410 (too old) or a broken stream lists again.
        await new Promise<void>((resolve) => {
          void new Watch(this.kc)
            .watch(
              "/api/v1/pods",
              { labelSelector: SELECTOR, resourceVersion: list!.metadata?.resourceVersion, allowWatchBookmarks: false },
              (type, pod: V1Pod) => {
                if (type === "ERROR") return resolve();
                this.observe(type, pod).catch((err: unknown) => this.logger.warn({ err }, "handling a pod event failed"));
              },
              () => resolve(),
            )
            .then(
              (abort) => (this.watchAbort = abort),
              () => resolve(),
            );
        });
        // A watch that ends at once (refused, cut by a proxy) must not turn into a tight re-list loop.
        if (Date.now() - watchedFrom < 5000) {
          await new Promise((r) => setTimeout(r, this.retryMs));
          this.retryMs = Math.min(30_000, this.retryMs * 2);
        } else {
          this.retryMs = 500;
        }
      } catch (err) {
        this.logger.warn({ error: err instanceof Error ? err.message : String(err) }, "Kubernetes pod watch failed; retrying");
        await new Promise((r) => setTimeout(r, this.retryMs));
        this.retryMs = Math.min(30_000, this.retryMs * 2);
      }
    }
  }

  private async observe(type: string, pod: V1Pod): Promise<void> {
    const environmentId = pod.metadata?.labels?.[ENVIRONMENT_LABEL];
    const hostId = pod.metadata?.labels?.[HOST_LABEL];
    if (!environmentId || !hostId) return;
    const generation = generationOf(pod);
    const key = podKey(pod);
    if (type === "DELETED") {
      this.known.delete(key);
      this.following.get(key)?.abort();
      this.following.delete(key);
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
      if ((await this.pods(environmentId)).length > 0) return; // another pod of it is still going away
      this.stopping.delete(environmentId);
      return this.observer.status(hostId, { environmentId, generation: stopped, state: "STOPPED", message: "stopped" });
    }
    this.known.set(key, pod);
    const { state, message } = podState(pod);
    if (state !== "STARTING" && !this.following.has(key) && pod.status?.phase === "Running") this.follow(pod, hostId, environmentId, key);
    await this.observer.status(hostId, { environmentId, generation, state, message });
  }

  /** Streams a pod's log into the log store, a batch at a time. */
  private follow(pod: V1Pod, hostId: string, environmentId: string, key: string): void {
    const control = new AbortController();
    this.following.set(key, control);
    let partial = "";
    const sink = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        const text = partial + chunk.toString("utf8");
        const lines = text.split("\n");
        partial = lines.pop() ?? "";
        const time = new Date();
        this.observer
          .logs(
            hostId,
            environmentId,
            lines.map((l) => ({ time, stream: "STDOUT" as const, text: l })),
          )
          .then(
            () => done(),
            (err: unknown) => done(err as Error),
          );
      },
    });
    sink.on("error", () => undefined);
    // client-node pipes the response into the sink and leaves errors of the source unhandled (an
    // abort or a cut connection would crash the process): route them to the sink.
    sink.on("pipe", (source: NodeJS.ReadableStream) => source.on("error", (err: Error) => sink.destroy(err)));
    new Log(this.kc)
      .log(pod.metadata!.namespace!, pod.metadata!.name!, CONTAINER, sink, { follow: true })
      .then((abort) => {
        if (control.signal.aborted)
          abort.abort(); // ended before the stream opened
        else control.signal.addEventListener("abort", () => abort.abort(), { once: true });
      })
      .catch((err: unknown) => this.logger.debug({ environmentId, error: String(err) }, "pod log unavailable"));
  }

  private async pods(environmentId: string): Promise<V1Pod[]> {
    return (await this.call(() => this.core.listPodForAllNamespaces({ labelSelector: `${ENVIRONMENT_LABEL}=${environmentId}` })))!.items;
  }

  private async deleteRouting(environmentId: string): Promise<void> {
    const selector = `${ENVIRONMENT_LABEL}=${environmentId}`;
    const services = await this.call(() => this.core.listServiceForAllNamespaces({ labelSelector: selector }));
    for (const s of services!.items)
      await this.call(() => missing(this.core.deleteNamespacedService({ namespace: s.metadata!.namespace!, name: s.metadata!.name! })));
    const ingresses = await this.call(() => this.net.listIngressForAllNamespaces({ labelSelector: selector }));
    for (const i of ingresses!.items)
      await this.call(() => missing(this.net.deleteNamespacedIngress({ namespace: i.metadata!.namespace!, name: i.metadata!.name! })));
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
