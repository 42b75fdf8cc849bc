import { strict as assert } from "node:assert";
import { Code } from "@connectrpc/connect";
import { HostRuntime, HostService, HostStatus } from "../../gen/remotegpu/v1/host_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { expectCode } from "../support/expect.js";
import { startTestServer, type TestServer } from "../support/server.js";

const MISSING = "00000000-0000-4000-8000-000000000000";

describe("HostService", () => {
  let server: TestServer;
  let clock: ManualClock;
  let hosts: ReturnType<typeof server.client<typeof HostService>>;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;

  before(async () => {
    clock = new ManualClock(new Date("2026-11-30T12:00:00Z"));
    server = await startTestServer({ clock });
    hosts = server.client(HostService);
    gpus = server.client(GpuService);
  });
  after(() => server.close());

  it("creates a host, OFFLINE until its first heartbeat, with an agent token shown once", async () => {
    const res = await hosts.createHost({
      name: "node-create",
      address: "10.0.0.1:7000",
      labels: { zone: "a" },
      capacity: { cpuMillicores: 64000n, memoryBytes: 512n << 30n, diskBytes: 4n << 40n },
    });
    assert.equal(res.host?.name, "node-create");
    assert.equal(res.host?.status, HostStatus.OFFLINE);
    assert.equal(res.host?.runtime, HostRuntime.AGENT);
    assert.equal(res.host?.schedulable, true);
    assert.equal(res.host?.capacity?.memoryBytes, 512n << 30n);
    assert.match(res.agentToken, /^rgpu_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);

    const got = await hosts.getHost({ id: res.host!.id });
    assert.deepEqual(got.host?.labels, { zone: "a" });
    // The token is not part of the host and never comes back.
    assert.ok(!JSON.stringify(got, (_k, v) => (typeof v === "bigint" ? String(v) : v)).includes(res.agentToken.slice(22)));
  });

  it("refuses bad input with INVALID_ARGUMENT naming every bad field", async () => {
    await expectCode(hosts.createHost({ name: "Bad Name", address: "" }), Code.InvalidArgument, "name:", "address: required");
    await expectCode(hosts.createHost({ name: "ok-name", address: "a b" }), Code.InvalidArgument, "address:");
    await expectCode(hosts.createHost({ name: "x".repeat(300), address: "h" }), Code.InvalidArgument, "name: at most 253");
    await expectCode(
      hosts.createHost({ name: "k8s", address: "h", runtime: HostRuntime.KUBERNETES }),
      Code.InvalidArgument,
      "kubernetes_node_name: required",
    );
    await expectCode(hosts.createHost({ name: "lbl", address: "h", labels: { "bad key!": "v" } }), Code.InvalidArgument, "labels.bad key!");
    await expectCode(
      hosts.createHost({ name: "neg", address: "h", capacity: { cpuMillicores: -1n } }),
      Code.InvalidArgument,
      "capacity.cpu_millicores",
    );
    await expectCode(
      hosts.createHost({ name: "enum", address: "h", runtime: 42 as HostRuntime }),
      Code.InvalidArgument,
      "runtime: unknown value 42",
    );
    await expectCode(hosts.getHost({ id: "not-a-uuid" }), Code.InvalidArgument, "id:");
    // Nothing was stored by the refused calls.
    const list = await hosts.listHosts({});
    assert.ok(!list.hosts.some((h) => ["ok-name", "k8s", "lbl", "neg", "enum"].includes(h.name)));
  });

  it("answers ALREADY_EXISTS for a duplicate name and NOT_FOUND for an unknown id", async () => {
    await hosts.createHost({ name: "node-dup", address: "h" });
    await expectCode(hosts.createHost({ name: "node-dup", address: "h2" }), Code.AlreadyExists, 'named "node-dup"');
    await expectCode(hosts.getHost({ id: MISSING }), Code.NotFound, MISSING);
    await expectCode(hosts.deleteHost({ id: MISSING }), Code.NotFound);
    await expectCode(hosts.cordonHost({ id: MISSING }), Code.NotFound);
    await expectCode(hosts.heartbeat({ hostId: MISSING }), Code.NotFound);
    await expectCode(hosts.updateHost({ host: { id: MISSING, address: "x" }, updateMask: { paths: ["address"] } }), Code.NotFound);
  });

  it("updates only the fields in the mask", async () => {
    const { host } = await hosts.createHost({ name: "node-upd", address: "old", labels: { a: "1" } });
    const res = await hosts.updateHost({ host: { id: host!.id, address: "new", labels: { b: "2" } }, updateMask: { paths: ["address"] } });
    assert.equal(res.host?.address, "new");
    assert.deepEqual(res.host?.labels, { a: "1" });
    await expectCode(
      hosts.updateHost({ host: { id: host!.id, name: "renamed" }, updateMask: { paths: ["name"] } }),
      Code.InvalidArgument,
      "update_mask",
    );
    await expectCode(hosts.updateHost({ host: { id: host!.id }, updateMask: { paths: [] } }), Code.InvalidArgument, "update_mask");
    await expectCode(
      hosts.updateHost({ host: { id: host!.id, status: HostStatus.DRAINING }, updateMask: { paths: ["status"] } }),
      Code.InvalidArgument,
      "host.status",
    );
    // An enum named in the mask but left unset is a mistake, not a request for a default.
    await expectCode(
      hosts.updateHost({ host: { id: host!.id }, updateMask: { paths: ["runtime"] } }),
      Code.InvalidArgument,
      "host.runtime: required when named in update_mask",
    );
    await expectCode(
      hosts.updateHost({ host: { id: host!.id }, updateMask: { paths: ["status"] } }),
      Code.InvalidArgument,
      "host.status: required",
    );
  });

  it("applies concurrent operator changes to one host one after the other", async () => {
    const { host } = await hosts.createHost({ name: "node-busy", address: "h" });
    const calls = Array.from({ length: 20 }, (_, i) =>
      i % 2
        ? hosts.cordonHost({ id: host!.id })
        : hosts.updateHost({ host: { id: host!.id, labels: { n: String(i) } }, updateMask: { paths: ["labels"] } }),
    );
    const results = await Promise.allSettled(calls);
    assert.deepEqual(
      results.filter((r) => r.status === "rejected"),
      [],
    );
    assert.equal((await hosts.getHost({ id: host!.id })).host?.schedulable, false);
  });

  it("enters and leaves maintenance", async () => {
    const { host } = await hosts.createHost({ name: "node-maint", address: "h" });
    const m = await hosts.updateHost({ host: { id: host!.id, status: HostStatus.MAINTENANCE }, updateMask: { paths: ["status"] } });
    assert.equal(m.host?.status, HostStatus.MAINTENANCE);
    const back = await hosts.updateHost({ host: { id: host!.id, status: HostStatus.ONLINE }, updateMask: { paths: ["status"] } });
    assert.equal(back.host?.status, HostStatus.OFFLINE, "never heard from, so OFFLINE rather than ONLINE");
    await expectCode(
      hosts.updateHost({ host: { id: host!.id, status: HostStatus.ONLINE }, updateMask: { paths: ["status"] } }),
      Code.FailedPrecondition,
      "not in maintenance",
    );
  });

  it("heartbeats bring a host ONLINE and record last-seen, the agent version and the host sample", async () => {
    const { host, agentToken } = await hosts.createHost({ name: "node-hb", address: "h" });
    const agent = server.client(HostService, { token: agentToken });
    const res = await agent.heartbeat({
      hostId: host!.id,
      agentVersion: "0.1.0",
      hostSample: { cpuUtilizationPercent: 12.5, uptimeSeconds: 3600n },
    });
    assert.equal(res.host?.status, HostStatus.ONLINE);
    assert.equal(res.host?.agentVersion, "0.1.0");
    assert.equal(res.host?.lastHeartbeatTime?.seconds, BigInt(clock.now().getTime() / 1000));
    assert.equal(res.leaseTtl?.seconds, 40n);
    assert.equal(res.heartbeatInterval?.seconds, 10n);
    const got = await hosts.getHost({ id: host!.id });
    assert.equal(got.host?.latestSample?.cpuUtilizationPercent, 12.5);
    assert.equal(got.host?.latestSample?.uptimeSeconds, 3600n);
    // GPU samples of a unary heartbeat count like those of the stream.
    const gpus = server.client(GpuService);
    const { gpu } = await gpus.createGpu({ hostId: host!.id, index: 0, uuid: "GPU-unary-0", model: "NVIDIA L4", memoryBytes: 1n << 30n });
    await agent.heartbeat({ hostId: host!.id, gpuSamples: [{ gpuUuid: "GPU-unary-0", metrics: { gpuUtilizationPercent: 33 } }] });
    assert.equal((await gpus.getGpu({ id: gpu!.id })).gpu?.latestSample?.metrics?.gpuUtilizationPercent, 33);
  });

  it("lets a host token speak only for its own host, and nothing else", async () => {
    const a = await hosts.createHost({ name: "node-tok-a", address: "h" });
    const b = await hosts.createHost({ name: "node-tok-b", address: "h" });
    const agentA = server.client(HostService, { token: a.agentToken });
    await expectCode(agentA.heartbeat({ hostId: b.host!.id }), Code.PermissionDenied, b.host!.id);
    await expectCode(agentA.listHosts({}), Code.PermissionDenied);
    await expectCode(server.client(GpuService, { token: a.agentToken }).listGpus({}), Code.PermissionDenied);
    // Deleting the host revokes its token.
    await hosts.deleteHost({ id: a.host!.id });
    await expectCode(agentA.heartbeat({ hostId: a.host!.id }), Code.Unauthenticated);
  });

  it("refuses calls without a valid token", async () => {
    await expectCode(server.client(HostService, { token: null }).listHosts({}), Code.Unauthenticated, "authorization");
    await expectCode(server.client(HostService, { token: "wrong-token-of-some-length" }).listHosts({}), Code.Unauthenticated);
    const forged = `rgpu_0123456789abcdef_${"A".repeat(43)}`;
    await expectCode(server.client(HostService, { token: forged }).listHosts({}), Code.Unauthenticated);
  });

  it("cordons, uncordons and drains, reporting what still holds GPUs", async () => {
    const { host, agentToken } = await hosts.createHost({ name: "node-drain", address: "h" });
    await server.client(HostService, { token: agentToken }).heartbeat({ hostId: host!.id });
    const gpu = (await gpus.createGpu({ hostId: host!.id, index: 0, uuid: "GPU-drain-0", model: "NVIDIA H100", memoryBytes: 80n << 30n }))
      .gpu!;
    await gpus.createGpu({ hostId: host!.id, index: 1, uuid: "GPU-drain-1", model: "NVIDIA H100", memoryBytes: 80n << 30n });
    await gpus.allocateGpu({ gpuId: gpu.id, holder: "job-7" });

    const cordoned = await hosts.cordonHost({ id: host!.id });
    assert.equal(cordoned.host?.schedulable, false);
    assert.equal(cordoned.host?.status, HostStatus.ONLINE);
    await expectCode(gpus.allocateGpu({ hostId: host!.id, holder: "job-8" }), Code.ResourceExhausted, "no free GPU");
    assert.equal((await hosts.uncordonHost({ id: host!.id })).host?.schedulable, true);

    const drained = await hosts.drainHost({ id: host!.id });
    assert.equal(drained.host?.status, HostStatus.DRAINING);
    assert.equal(drained.host?.schedulable, false);
    assert.deepEqual(
      drained.allocatedGpus.map((g) => [g.index, g.holder]),
      [[0, "job-7"]],
    );
    assert.equal(drained.host?.gpuCount, 2);
    assert.equal(drained.host?.availableGpuCount, 1);

    await expectCode(hosts.deleteHost({ id: host!.id }), Code.FailedPrecondition, "1 allocated GPU");
    await gpus.releaseGpu({ gpuId: gpu.id });
    const ended = await hosts.uncordonHost({ id: host!.id });
    assert.equal(ended.host?.status, HostStatus.ONLINE);
    await hosts.deleteHost({ id: host!.id });
    await expectCode(hosts.getHost({ id: host!.id }), Code.NotFound);
    await expectCode(gpus.getGpu({ id: gpu.id }), Code.NotFound, "GPU");
  });

  it("pages through hosts with filters, a total count, and tokens that survive inserts", async () => {
    const names = Array.from({ length: 7 }, (_, i) => `page-${String(i).padStart(2, "0")}`);
    for (const name of names)
      await hosts.createHost({ name, address: "h", labels: { pool: "paging", parity: names.indexOf(name) % 2 ? "odd" : "even" } });

    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await hosts.listHosts({ pageSize: 3, pageToken: token, labelSelector: "pool=paging" });
      assert.equal(page.totalSize, 7);
      seen.push(...page.hosts.map((h) => h.name));
      token = page.nextPageToken;
      // An insert that sorts before the cursor must not shift later pages.
      if (pages++ === 0) await hosts.createHost({ name: "page-00a", address: "h", labels: { pool: "elsewhere" } });
    } while (token);
    assert.deepEqual(seen, names);
    assert.equal(pages, 3);

    const even = await hosts.listHosts({ labelSelector: "pool=paging,parity=even" });
    assert.deepEqual(
      even.hosts.map((h) => h.name),
      ["page-00", "page-02", "page-04", "page-06"],
    );
    const offline = await hosts.listHosts({ status: HostStatus.OFFLINE, labelSelector: "pool=paging", schedulable: true });
    assert.equal(offline.totalSize, 7);

    await expectCode(hosts.listHosts({ pageToken: "garbage" }), Code.InvalidArgument, "page_token");
    const first = await hosts.listHosts({ pageSize: 1, labelSelector: "pool=paging" });
    await expectCode(hosts.listHosts({ pageToken: first.nextPageToken }), Code.InvalidArgument, "different filters");
    await expectCode(hosts.listHosts({ pageSize: -1 }), Code.InvalidArgument, "page_size");
    await expectCode(hosts.listHosts({ labelSelector: "novalue" }), Code.InvalidArgument, "label_selector");

    // Keys that happen to be JavaScript object methods are ordinary keys.
    await hosts.createHost({ name: "odd-labels", address: "h", labels: { constructor: "c", toString: "t", pool: "odd" } });
    for (const selector of ["constructor=c", "toString=t", "valueOf=1", "hasOwnProperty=x", "constructor=c,pool=odd"]) {
      const res = await hosts.listHosts({ labelSelector: selector });
      assert.deepEqual(
        res.hosts.map((h) => h.name),
        selector.startsWith("valueOf") || selector.startsWith("has") ? [] : ["odd-labels"],
        selector,
      );
    }
  });
});
