import { strict as assert } from "node:assert";
import { PassThrough } from "node:stream";
import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  Log,
  NetworkingV1Api,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type KubernetesObject,
  type V1Pod,
} from "@kubernetes/client-node";
import { eventually } from "../support/eventually.js";
import { startKubeApiServer, type KubeApiTestServer, type KubeObject } from "../support/kube-api-server.js";

/** How long to poll for what the server does asynchronously over real sockets. */
const SOON = { ms: 3000, everyMs: 10 };

/** Awaits `call`, asserts client-node threw an ApiException with `code`, and returns the parsed Status body. */
async function expectStatus(call: Promise<unknown>, code: number): Promise<KubeObject> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof ApiException, `expected ApiException, got ${String(err)}`);
    assert.equal(err.code, code);
    // The generated API hands back the raw response text as `body`.
    return typeof err.body === "string" ? JSON.parse(err.body) : err.body;
  }
  assert.fail(`expected HTTP ${code}, but the call succeeded`);
}

interface OpenWatch {
  events: { type: string; object: KubeObject }[];
  done: Promise<unknown>;
  controller: AbortController;
}

/** A client-node watch recording its events; `done` resolves with the error it ended with, or null. */
async function openWatch(kc: KubeConfig, path: string, query: Record<string, string | number | boolean> = {}): Promise<OpenWatch> {
  const events: OpenWatch["events"] = [];
  let finish!: (err: unknown) => void;
  const done = new Promise<unknown>((resolve) => (finish = resolve));
  const controller = await new Watch(kc).watch(
    path,
    query,
    (type, object) => events.push({ type, object }),
    (err) => finish(err ?? null),
  );
  return { events, done, controller };
}

/** Follows a container log with client-node's Log; `ended` resolves when the stream finishes or breaks. */
async function followLog(kc: KubeConfig, namespace: string, pod: string, options: { follow?: boolean; tailLines?: number } = {}) {
  const out = new PassThrough();
  // client-node 2.0.1 pipes the response into `out` but leaves errors on the response stream
  // unhandled: an abort or a cut connection would be an uncaught exception. Pass them on.
  out.on("pipe", (source) => source.on("error", (err: Error) => out.destroy(err)));
  let text = "";
  out.on("data", (chunk) => (text += String(chunk)));
  const ended = new Promise<Error | undefined>((resolve) => {
    out.on("error", resolve);
    out.on("close", () => resolve(undefined));
  });
  const controller = await new Log(kc).log(namespace, pod, "main", out, { follow: true, ...options });
  return { text: () => text, ended, controller };
}

const podBody = (name: string, labels: Record<string, string> = {}): V1Pod => ({
  metadata: { name, labels },
  spec: { containers: [{ name: "main", image: "registry.test/cuda:12" }] },
});

describe("Kubernetes API test server, driven by the unmodified @kubernetes/client-node", () => {
  let server: KubeApiTestServer;
  let kc: KubeConfig;
  let core: CoreV1Api;
  let net: NetworkingV1Api;
  const watches: OpenWatch[] = [];
  let n = 0;
  /** A fresh namespace per test, so tests do not see each other's objects. */
  let ns: string;

  before(async () => {
    server = await startKubeApiServer();
    kc = server.kubeConfig();
    core = kc.makeApiClient(CoreV1Api);
    net = kc.makeApiClient(NetworkingV1Api);
  });
  beforeEach(async () => {
    ns = `ws-${++n}`;
    await core.createNamespace({ body: { metadata: { name: ns } } });
  });
  afterEach(() => {
    for (const w of watches.splice(0)) w.controller.abort();
  });
  after(() => server.close());

  const watch = async (path: string, query?: Record<string, string | number | boolean>) => {
    const w = await openWatch(kc, path, query);
    watches.push(w);
    return w;
  };

  it("creates namespaced objects of every supported kind and fills in server metadata", async () => {
    const pod = await core.createNamespacedPod({ namespace: ns, body: podBody("gpu-0", { app: "env" }) });
    const svc = await core.createNamespacedService({
      namespace: ns,
      body: { metadata: { name: "env" }, spec: { selector: { app: "env" }, ports: [{ port: 22 }] } },
    });
    const pvc = await core.createNamespacedPersistentVolumeClaim({
      namespace: ns,
      body: { metadata: { name: "home" }, spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "10Gi" } } } },
    });
    const secret = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "token" }, stringData: { token: "t" } } });
    const ingress = await net.createNamespacedIngress({
      namespace: ns,
      body: { metadata: { name: "env" }, spec: { rules: [{ host: "env.test" }] } },
    });

    assert.equal(pod.status?.phase, "Pending");
    assert.match(pod.metadata?.uid ?? "", /^[0-9a-f-]{36}$/);
    assert.ok(pod.metadata?.creationTimestamp instanceof Date);
    assert.equal(pod.metadata?.generation, 1);
    assert.equal(pvc.status?.phase, "Pending");
    assert.match(svc.spec?.clusterIP ?? "", /^10\.96\./);
    assert.equal(ingress.kind, "Ingress");
    assert.equal(ingress.apiVersion, "networking.k8s.io/v1");
    // One global, increasing resourceVersion, as strings.
    const versions = [pod, svc, pvc, secret, ingress].map((o) => Number(o.metadata?.resourceVersion));
    assert.deepEqual(
      versions,
      [...versions].sort((a, b) => a - b),
    );
    assert.equal(new Set(versions).size, versions.length);

    assert.equal((await core.readNamespacedPod({ namespace: ns, name: "gpu-0" })).metadata?.uid, pod.metadata?.uid);
    assert.equal((await net.readNamespacedIngress({ namespace: ns, name: "env" })).spec?.rules?.[0].host, "env.test");
    assert.equal(server.get("Secret", ns, "token")?.stringData.token, "t");
    assert.ok(server.requests.some((r) => r.method === "POST" && r.path === `/apis/networking.k8s.io/v1/namespaces/${ns}/ingresses`));
  });

  it("answers a duplicate create with 409 AlreadyExists as a Status object", async () => {
    await core.createNamespacedPod({ namespace: ns, body: podBody("dup") });
    const status = await expectStatus(core.createNamespacedPod({ namespace: ns, body: podBody("dup") }), 409);
    assert.equal(status.kind, "Status");
    assert.equal(status.reason, "AlreadyExists");
    assert.equal(status.message, 'pods "dup" already exists');
    assert.equal((await expectStatus(core.createNamespace({ body: { metadata: { name: ns } } }), 409)).reason, "AlreadyExists");
  });

  it("answers 404 NotFound for missing objects and for a create into a missing namespace", async () => {
    assert.equal((await expectStatus(core.readNamespacedPod({ namespace: ns, name: "none" }), 404)).reason, "NotFound");
    await expectStatus(core.deleteNamespacedService({ namespace: ns, name: "none" }), 404);
    assert.equal(
      (await expectStatus(net.readNamespacedIngress({ namespace: ns, name: "none" }), 404)).message,
      'ingresses.networking.k8s.io "none" not found',
    );
    const missing = await expectStatus(core.createNamespacedSecret({ namespace: "nowhere", body: { metadata: { name: "s" } } }), 404);
    assert.equal(missing.message, 'namespaces "nowhere" not found');
  });

  it("lists with label and field selectors, in a namespace and across all of them", async () => {
    await core.createNamespacedPod({ namespace: ns, body: podBody("a", { app: "env", tier: "gpu" }) });
    await core.createNamespacedPod({ namespace: ns, body: podBody("b", { app: "env", tier: "cpu" }) });
    await core.createNamespacedPod({ namespace: ns, body: podBody("c", { app: "other" }) });

    const names = (items: KubernetesObject[]) => items.map((o) => o.metadata?.name);
    const env = await core.listNamespacedPod({ namespace: ns, labelSelector: "app=env" });
    assert.equal(env.kind, "PodList");
    assert.equal(env.metadata?.resourceVersion, server.resourceVersion);
    assert.deepEqual(names(env.items), ["a", "b"]);
    assert.deepEqual(names((await core.listNamespacedPod({ namespace: ns, labelSelector: "app=env,tier!=gpu" })).items), ["b"]);
    assert.deepEqual(names((await core.listNamespacedPod({ namespace: ns, labelSelector: "!tier" })).items), ["c"]);
    assert.deepEqual(names((await core.listNamespacedPod({ namespace: ns, fieldSelector: "metadata.name=c" })).items), ["c"]);
    const all = await core.listPodForAllNamespaces({ labelSelector: "app=other" });
    assert.ok(all.items.every((p) => p.metadata?.labels?.app === "other"));
    assert.ok(all.items.some((p) => p.metadata?.namespace === ns && p.metadata.name === "c"));
  });

  it("patches with JSON patch (client-node's default) and merge patch, and refuses a stale replace", async () => {
    const created = await core.createNamespacedPod({ namespace: ns, body: podBody("p", { app: "env" }) });
    const jsonPatched = await core.patchNamespacedPod({
      namespace: ns,
      name: "p",
      body: [{ op: "add", path: "/metadata/labels/owner", value: "u1" }],
    });
    assert.deepEqual(jsonPatched.metadata?.labels, { app: "env", owner: "u1" });
    const merged = await core.patchNamespacedPod(
      { namespace: ns, name: "p", body: { metadata: { labels: { owner: null, stage: "ready" } } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    assert.deepEqual(merged.metadata?.labels, { app: "env", stage: "ready" });
    assert.ok(Number(merged.metadata?.resourceVersion) > Number(created.metadata?.resourceVersion));
    // Writes to the main resource leave the status alone, as for any kind with a status subresource.
    assert.equal(merged.status?.phase, "Pending");

    const conflict = await expectStatus(core.replaceNamespacedPod({ namespace: ns, name: "p", body: created }), 409);
    assert.equal(conflict.reason, "Conflict");

    const svc = await core.createNamespacedService({ namespace: ns, body: { metadata: { name: "s" }, spec: { ports: [{ port: 22 }] } } });
    const replaced = await core.replaceNamespacedService({
      namespace: ns,
      name: "s",
      body: { ...svc, spec: { ...svc.spec, ports: [{ port: 2222 }] } },
    });
    assert.equal(replaced.metadata?.generation, 2);
    assert.equal(replaced.metadata?.uid, svc.metadata?.uid);
  });

  it("deletes a namespace with its contents, and owned objects with their owner unless orphaned", async () => {
    const owner = await core.createNamespacedPod({ namespace: ns, body: podBody("owner") });
    const ref = { apiVersion: "v1", kind: "Pod", name: "owner", uid: owner.metadata!.uid! };
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "owned", ownerReferences: [ref] } } });
    const deleted = await core.deleteNamespacedPod({ namespace: ns, name: "owner" });
    assert.equal(deleted.metadata?.name, "owner");
    assert.equal(server.get("Secret", ns, "owned"), undefined);

    const kept = await core.createNamespacedPod({ namespace: ns, body: podBody("kept-owner") });
    await core.createNamespacedSecret({
      namespace: ns,
      body: { metadata: { name: "orphan", ownerReferences: [{ ...ref, name: "kept-owner", uid: kept.metadata!.uid! }] } },
    });
    await core.deleteNamespacedPod({ namespace: ns, name: "kept-owner", propagationPolicy: "Orphan" });
    assert.ok(server.get("Secret", ns, "orphan"));

    await core.createNamespacedService({ namespace: ns, body: { metadata: { name: "svc" }, spec: {} } });
    await core.deleteNamespace({ name: ns });
    assert.equal(server.list("Secret", ns).length + server.list("Service", ns).length, 0);
    await expectStatus(core.readNamespace({ name: ns }), 404);
  });

  it("watches pods from a resourceVersion through driven phases: ADDED, MODIFIED…, DELETED", async () => {
    const since = (await core.listNamespacedPod({ namespace: ns })).metadata!.resourceVersion!;
    const w = await watch(`/api/v1/namespaces/${ns}/pods`, { resourceVersion: since });
    await core.createNamespacedPod({ namespace: ns, body: podBody("gpu") });
    server.setPodPhase(ns, "gpu", { state: "Scheduled", nodeName: "node-7" });
    server.setPodPhase(ns, "gpu", { state: "ImagePullBackOff", message: "pull access denied" });
    server.setPodPhase(ns, "gpu", { state: "Running" });
    server.setPodPhase(ns, "gpu", { state: "Terminated", exitCode: 3 });
    await core.deleteNamespacedPod({ namespace: ns, name: "gpu" });
    await eventually("six events", () => w.events.length === 6, SOON);

    assert.deepEqual(
      w.events.map((e) => e.type),
      ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"],
    );
    const [added, scheduled, backoff, running, terminated] = w.events.map((e) => e.object);
    assert.equal(added.status.phase, "Pending");
    assert.equal(scheduled.spec.nodeName, "node-7");
    assert.deepEqual(backoff.status.containerStatuses[0].state.waiting, { reason: "ImagePullBackOff", message: "pull access denied" });
    assert.equal(running.status.phase, "Running");
    assert.ok(running.status.conditions.some((c: KubeObject) => c.type === "Ready" && c.status === "True"));
    assert.equal(running.status.containerStatuses[0].ready, true);
    assert.equal(terminated.status.phase, "Failed");
    assert.equal(terminated.status.containerStatuses[0].state.terminated.exitCode, 3);
    const versions = w.events.map((e) => Number(e.object.metadata.resourceVersion));
    assert.ok(
      versions.every((v, i) => i === 0 || v > versions[i - 1]),
      "each event carries a newer resourceVersion",
    );
  });

  it("reports an eviction, and replays what a resumed watch missed", async () => {
    await core.createNamespacedPod({ namespace: ns, body: podBody("victim") });
    const before = server.setPodPhase(ns, "victim", { state: "Running" });
    server.setPodPhase(ns, "victim", { state: "Evicted", message: "The node was low on memory." });
    const w = await watch(`/api/v1/pods`, { resourceVersion: before.metadata.resourceVersion, labelSelector: "" });
    await eventually("the missed eviction", () => w.events.length === 1, SOON);
    assert.equal(w.events[0].type, "MODIFIED");
    assert.deepEqual([w.events[0].object.status.phase, w.events[0].object.status.reason], ["Failed", "Evicted"]);
    assert.equal(w.events[0].object.status.message, "The node was low on memory.");
  });

  it("starts a watch without a resourceVersion with ADDED for what exists, filtered by selector", async () => {
    await core.createNamespacedPod({ namespace: ns, body: podBody("one", { app: "env" }) });
    await core.createNamespacedPod({ namespace: ns, body: podBody("two", { app: "other" }) });
    const w = await watch(`/api/v1/namespaces/${ns}/pods`, { labelSelector: "app=env" });
    await eventually("the existing pod", () => w.events.length === 1, SOON);
    assert.deepEqual([w.events[0].type, w.events[0].object.metadata.name], ["ADDED", "one"]);
  });

  it("answers a watch from a compacted resourceVersion with ERROR 410 Expired and ends it", async () => {
    const old = server.resourceVersion;
    await core.createNamespacedPod({ namespace: ns, body: podBody("p") });
    server.compact();
    const w = await watch(`/api/v1/namespaces/${ns}/pods`, { resourceVersion: old });
    assert.equal(await w.done, null, "the stream ends cleanly after the ERROR event");
    assert.equal(w.events.length, 1);
    assert.equal(w.events[0].type, "ERROR");
    assert.deepEqual([w.events[0].object.kind, w.events[0].object.code, w.events[0].object.reason], ["Status", 410, "Expired"]);

    // A bounded history expires old versions by itself.
    const small = await startKubeApiServer({ historyLimit: 2 });
    try {
      const smallCore = small.kubeConfig().makeApiClient(CoreV1Api);
      const first = (await smallCore.createNamespacedSecret({ namespace: "default", body: { metadata: { name: "s1" } } })).metadata!
        .resourceVersion!;
      for (const name of ["s2", "s3", "s4"]) await smallCore.createNamespacedSecret({ namespace: "default", body: { metadata: { name } } });
      const expired = await openWatch(small.kubeConfig(), "/api/v1/namespaces/default/secrets", { resourceVersion: first });
      await expired.done;
      assert.equal(expired.events[0]?.object.code, 410);
    } finally {
      await small.close();
    }
  });

  it("ends open watches on demand: cut (done gets an error) or finished (done gets null), and at timeoutSeconds", async () => {
    const cut = await watch(`/api/v1/namespaces/${ns}/pods`);
    assert.equal(server.breakWatches(), 1);
    assert.ok((await cut.done) instanceof Error);
    const ended = await watch(`/api/v1/namespaces/${ns}/pods`);
    assert.equal(server.breakWatches("end"), 1);
    assert.equal(await ended.done, null);
    const timed = await watch(`/api/v1/namespaces/${ns}/pods`, { timeoutSeconds: 1 });
    assert.equal(await timed.done, null);
  });

  it("follows a container log from tailLines, streams appended lines, and ends when the pod goes", async () => {
    await core.createNamespacedPod({ namespace: ns, body: podBody("trainer") });
    const waiting = await expectStatus(core.readNamespacedPodLog({ namespace: ns, name: "trainer", container: "main" }), 400);
    assert.match(waiting.message, /is waiting to start: ContainerCreating/);

    server.setPodPhase(ns, "trainer", { state: "Running" });
    for (const line of ["epoch 1", "epoch 2", "epoch 3"]) server.appendLog(ns, "trainer", line);
    assert.equal(await core.readNamespacedPodLog({ namespace: ns, name: "trainer", container: "main", tailLines: 1 }), "epoch 3\n");

    const log = await followLog(kc, ns, "trainer", { tailLines: 2 });
    await eventually("the tail", () => log.text() === "epoch 2\nepoch 3\n", SOON);
    server.appendLog(ns, "trainer", "epoch 4");
    await eventually("the appended line", () => log.text().endsWith("epoch 4\n"), SOON);
    await core.deleteNamespacedPod({ namespace: ns, name: "trainer" });
    assert.equal(await log.ended, undefined, "the follow ends cleanly");
  });

  it("survives aborting a log follow when the stream's errors are handled", async () => {
    await core.createNamespacedPod({ namespace: ns, body: podBody("p") });
    server.setPodPhase(ns, "p", { state: "Running" });
    const log = await followLog(kc, ns, "p");
    log.controller.abort();
    assert.equal((await log.ended)?.name, "AbortError");
  });

  it("goes down (calls fail, open streams are cut) and comes back up on the same port", async () => {
    const w = await watch(`/api/v1/namespaces/${ns}/pods`);
    await server.down();
    assert.ok((await w.done) instanceof Error);
    await assert.rejects(core.listNamespacedPod({ namespace: ns }), (err: Error & { cause?: { code?: string } }) => {
      // Connection errors surface as undici's TypeError("fetch failed"), not as an ApiException.
      assert.ok(!(err instanceof ApiException));
      assert.equal(err.cause?.code, "ECONNREFUSED");
      return true;
    });
    await server.up();
    assert.equal((await core.readNamespace({ name: ns })).metadata?.name, ns);
  });

  it("requires the kubeconfig's bearer token", async () => {
    const stranger = new KubeConfig();
    stranger.loadFromOptions({
      clusters: [{ name: "c", server: server.url, skipTLSVerify: true }],
      users: [{ name: "u", token: "wrong" }],
      contexts: [{ name: "x", cluster: "c", user: "u" }],
      currentContext: "x",
    });
    await expectStatus(stranger.makeApiClient(CoreV1Api).listNamespace(), 401);
  });
});
