import { strict as assert } from "node:assert";
import http2 from "node:http2";
import { brotliCompressSync, brotliDecompressSync, constants, gunzipSync, gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { GpuService, GpuStatus, ListGpusRequestSchema, ListGpusResponseSchema } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { expectCode } from "../support/expect.js";
import { envelope, grpcHeaders } from "../support/grpc-envelope.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

const GiB = 1n << 30n;
const MISSING = "00000000-0000-4000-8000-000000000000";

describe("GpuService", () => {
  let server: TestServer;
  let hosts: ReturnType<typeof server.client<typeof HostService>>;
  let gpus: ReturnType<typeof server.client<typeof GpuService>>;

  /** An ONLINE host with `count` GPUs of `model`. */
  async function onlineHost(name: string, count: number, model = "NVIDIA H100 80GB HBM3", labels: Record<string, string> = {}) {
    const { host, agentToken } = await hosts.createHost({ name, address: "10.1.0.1", labels });
    await server.client(HostService, { token: agentToken }).heartbeat({ hostId: host!.id, agentVersion: "test" });
    const made = [];
    for (let i = 0; i < count; i++) {
      made.push((await gpus.createGpu({ hostId: host!.id, index: i, uuid: `GPU-${name}-${i}`, model, memoryBytes: 80n * GiB })).gpu!);
    }
    return { host: host!, gpus: made };
  }

  before(async () => {
    server = await startTestServer();
    hosts = server.client(HostService);
    gpus = server.client(GpuService);
  });
  after(() => server.close());

  it("creates GPUs and refuses duplicates, bad fields and unknown hosts", async () => {
    const { host } = await onlineHost("gpu-create", 0);
    const { gpu } = await gpus.createGpu({
      hostId: host.id,
      index: 0,
      uuid: "GPU-aaaa",
      model: "NVIDIA A100-SXM4-40GB",
      memoryBytes: 40n * GiB,
    });
    assert.equal(gpu?.status, GpuStatus.AVAILABLE);
    assert.equal(gpu?.hostName, "gpu-create");
    assert.equal(gpu?.memoryBytes, 40n * GiB);
    assert.equal(gpu?.holder, "");

    await expectCode(
      gpus.createGpu({ hostId: host.id, index: 0, uuid: "GPU-bbbb", model: "m", memoryBytes: 1n }),
      Code.AlreadyExists,
      "index 0",
    );
    await expectCode(
      gpus.createGpu({ hostId: host.id, index: 1, uuid: "GPU-aaaa", model: "m", memoryBytes: 1n }),
      Code.AlreadyExists,
      'uuid "GPU-aaaa"',
    );
    await expectCode(gpus.createGpu({ hostId: MISSING, index: 0, uuid: "GPU-c", model: "m", memoryBytes: 1n }), Code.NotFound, "host");
    await expectCode(
      gpus.createGpu({ hostId: host.id, index: -1, uuid: "", model: "", memoryBytes: 0n }),
      Code.InvalidArgument,
      "index",
      "uuid: required",
      "model: required",
      "memory_bytes",
    );
    await expectCode(
      gpus.createGpu({ hostId: "", index: 0, uuid: "u", model: "m", memoryBytes: 1n }),
      Code.InvalidArgument,
      "host_id: required",
    );
    await expectCode(
      gpus.createGpu({ hostId: host.id, index: 0, uuid: "u", model: "m", memoryBytes: 1n << 62n }),
      Code.InvalidArgument,
      "memory_bytes: too large",
    );
    const list = await gpus.listGpus({ hostId: host.id });
    assert.equal(list.totalSize, 1, "refused calls stored nothing");
  });

  it("compresses a page for a caller that accepts gzip or brotli, quickly, and it reads as the plain one", async () => {
    await onlineHost("gpu-compress", 40, "NVIDIA RTX 6000 Ada");
    /** One ListGpus over raw HTTP/2: the response's grpc-encoding, its message's flag and its bytes, undone. */
    const list = async (accept: string | undefined) => {
      const session = http2.connect(server.baseUrl);
      try {
        const stream = session.request(
          grpcHeaders("/remotegpu.v1.GpuService/ListGpus", ADMIN_TOKEN, accept ? { "grpc-accept-encoding": accept } : {}),
        );
        const headers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("response", resolve));
        stream.end(
          envelope(toBinary(ListGpusRequestSchema, create(ListGpusRequestSchema, { model: "NVIDIA RTX 6000 Ada", pageSize: 100 }))),
        );
        const received: Buffer[] = [];
        for await (const part of stream) received.push(part as Buffer);
        const all = Buffer.concat(received);
        const encoding = (await headers)["grpc-encoding"];
        const body = all.subarray(5, 5 + all.readUInt32BE(1));
        const plain = encoding === "br" ? brotliDecompressSync(body) : encoding === "gzip" ? gunzipSync(body) : body;
        return { encoding, flag: all[0], body, plain, page: fromBinary(ListGpusResponseSchema, plain) };
      } finally {
        session.close();
      }
    };
    const identity = await list(undefined);
    assert.equal(identity.flag, 0);
    assert.equal(identity.page.gpus.length, 40);
    // At the fast end of each: zlib's default brotli quality (11) cost 22 ms of CPU per 20 KiB page.
    const fastest = {
      gzip: (b: Buffer) => gzipSync(b, { level: 1 }),
      br: (b: Buffer) => brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 4 } }),
    };
    for (const accept of ["gzip", "br", "br,gzip"] as const) {
      const got = await list(accept);
      const chosen = accept.split(",")[0] as keyof typeof fastest;
      assert.equal(got.encoding, chosen, `${accept}: the caller's first choice`);
      assert.equal(got.flag, 1, `${accept}: the message is compressed`);
      assert.ok(got.body.length < identity.body.length / 3, `${accept}: ${got.body.length} bytes against ${identity.body.length}`);
      assert.deepEqual(got.body, fastest[chosen](got.plain), `${accept}: compressed at the fast setting`);
      assert.deepEqual(got.page, identity.page);
    }
  });

  it("gets a GPU and answers NOT_FOUND / INVALID_ARGUMENT for unknown or malformed ids", async () => {
    const {
      gpus: [g],
    } = await onlineHost("gpu-get", 1);
    assert.equal((await gpus.getGpu({ id: g!.id })).gpu?.uuid, "GPU-gpu-get-0");
    await expectCode(gpus.getGpu({ id: MISSING }), Code.NotFound, MISSING);
    await expectCode(gpus.getGpu({ id: "GPU-1234" }), Code.InvalidArgument, "id:");
    await expectCode(gpus.deleteGpu({ id: MISSING }), Code.NotFound);
  });

  it("lists with filters and stable pages across hosts", async () => {
    await onlineHost("list-a", 3, "NVIDIA L40S", { rack: "r1" });
    const b = await onlineHost("list-b", 3, "NVIDIA L40S", { rack: "r2" });
    await gpus.allocateGpu({ gpuId: b.gpus[0]!.id, holder: "someone" });
    await hosts.cordonHost({ id: b.host.id });

    const all: string[] = [];
    let token = "";
    do {
      const page = await gpus.listGpus({ model: "NVIDIA L40S", pageSize: 2, pageToken: token });
      assert.equal(page.totalSize, 6);
      all.push(...page.gpus.map((g) => g.uuid));
      token = page.nextPageToken;
    } while (token);
    assert.equal(new Set(all).size, 6);

    assert.equal((await gpus.listGpus({ labelSelector: "toString=x" })).totalSize, 0);
    const r1 = await gpus.listGpus({ labelSelector: "rack=r1" });
    assert.deepEqual(r1.gpus.map((g) => g.uuid).sort(), ["GPU-list-a-0", "GPU-list-a-1", "GPU-list-a-2"]);
    const allocated = await gpus.listGpus({ status: GpuStatus.ALLOCATED, model: "NVIDIA L40S" });
    assert.deepEqual(
      allocated.gpus.map((g) => g.uuid),
      ["GPU-list-b-0"],
    );
    // free_only: AVAILABLE on an ONLINE, schedulable host; list-b is cordoned.
    const free = await gpus.listGpus({ freeOnly: true, model: "NVIDIA L40S" });
    assert.deepEqual(free.gpus.map((g) => g.uuid).sort(), ["GPU-list-a-0", "GPU-list-a-1", "GPU-list-a-2"]);
    await expectCode(gpus.listGpus({ status: 99 as GpuStatus }), Code.InvalidArgument, "status");
    await expectCode(gpus.listGpus({ hostId: "nope" }), Code.InvalidArgument, "host_id");
    // PostgreSQL refuses NUL in text: such input must be refused before it gets there.
    await expectCode(gpus.listGpus({ model: "A\u0000" }), Code.InvalidArgument, "model: must not contain control characters");
    await expectCode(gpus.allocateGpu({ model: "x", holder: "job\u0000" }), Code.InvalidArgument, "holder");
    await expectCode(gpus.releaseGpu({ gpuId: b.gpus[0]!.id, holder: "\u0000" }), Code.InvalidArgument, "holder");
  });

  it("marks a GPU unhealthy with reasons, never hands it out, and re-admits it", async () => {
    const {
      host,
      gpus: [g],
    } = await onlineHost("gpu-health", 1, "NVIDIA T4");
    const sick = await gpus.updateGpu({
      gpu: { id: g!.id, status: GpuStatus.UNHEALTHY, healthReasons: ["xid 79: fallen off the bus"] },
      updateMask: { paths: ["status", "health_reasons"] },
    });
    assert.equal(sick.gpu?.status, GpuStatus.UNHEALTHY);
    assert.deepEqual(sick.gpu?.healthReasons, ["xid 79: fallen off the bus"]);
    await expectCode(gpus.allocateGpu({ hostId: host.id, holder: "x" }), Code.ResourceExhausted);
    await expectCode(gpus.allocateGpu({ gpuId: g!.id, holder: "x" }), Code.FailedPrecondition, "UNHEALTHY");

    const healed = await gpus.updateGpu({ gpu: { id: g!.id, status: GpuStatus.AVAILABLE }, updateMask: { paths: ["status"] } });
    assert.equal(healed.gpu?.status, GpuStatus.AVAILABLE);
    assert.deepEqual(healed.gpu?.healthReasons, []);
    await gpus.allocateGpu({ gpuId: g!.id, holder: "h" });
    await expectCode(
      gpus.updateGpu({ gpu: { id: g!.id, status: GpuStatus.AVAILABLE }, updateMask: { paths: ["status"] } }),
      Code.FailedPrecondition,
      "re-admitted",
    );
    await gpus.releaseGpu({ gpuId: g!.id });
    await expectCode(
      gpus.updateGpu({ gpu: { id: g!.id, status: GpuStatus.ALLOCATED }, updateMask: { paths: ["status"] } }),
      Code.InvalidArgument,
      "gpu.status",
    );
    await expectCode(
      gpus.updateGpu({ gpu: { id: g!.id, uuid: "x" }, updateMask: { paths: ["uuid"] } }),
      Code.InvalidArgument,
      "update_mask",
    );
    await expectCode(
      gpus.updateGpu({ gpu: { id: g!.id }, updateMask: { paths: ["status"] } }),
      Code.InvalidArgument,
      "gpu.status: required when named in update_mask",
    );
    const renamed = await gpus.updateGpu({
      gpu: { id: g!.id, model: "NVIDIA T4 16GB", memoryBytes: 16n * GiB },
      updateMask: { paths: ["model", "memory_bytes"] },
    });
    assert.equal(renamed.gpu?.model, "NVIDIA T4 16GB");
    assert.equal(renamed.gpu?.memoryBytes, 16n * GiB);
  });

  it("allocates and releases, checking the holder", async () => {
    const {
      gpus: [g],
    } = await onlineHost("gpu-alloc", 1, "NVIDIA A10G");
    const taken = await gpus.allocateGpu({ gpuId: g!.id, holder: "job-1" });
    assert.equal(taken.gpu?.status, GpuStatus.ALLOCATED);
    assert.equal(taken.gpu?.holder, "job-1");
    assert.ok(taken.gpu?.allocateTime);
    await expectCode(gpus.allocateGpu({ gpuId: g!.id, holder: "job-2" }), Code.FailedPrecondition, 'already allocated to "job-1"');
    await expectCode(gpus.deleteGpu({ id: g!.id }), Code.FailedPrecondition, "release it first");
    await expectCode(gpus.releaseGpu({ gpuId: g!.id, holder: "job-2" }), Code.FailedPrecondition, 'held by "job-1"');
    await expectCode(gpus.allocateGpu({ gpuId: g!.id, holder: "" }), Code.InvalidArgument, "holder: required");

    const freed = await gpus.releaseGpu({ gpuId: g!.id, holder: "job-1" });
    assert.equal(freed.gpu?.status, GpuStatus.AVAILABLE);
    assert.equal(freed.gpu?.holder, "");
    await expectCode(gpus.releaseGpu({ gpuId: g!.id }), Code.FailedPrecondition, "not allocated");
    await gpus.deleteGpu({ id: g!.id });
    await expectCode(gpus.getGpu({ id: g!.id }), Code.NotFound);
  });

  it("picks only from ONLINE, schedulable hosts and says when nothing is free", async () => {
    const { host: offline } = await hosts.createHost({ name: "pick-offline", address: "h" }).then((r) => ({ host: r.host! }));
    await gpus.createGpu({ hostId: offline.id, index: 0, uuid: "GPU-off", model: "NVIDIA B200", memoryBytes: GiB });
    await expectCode(gpus.allocateGpu({ model: "NVIDIA B200", holder: "x" }), Code.ResourceExhausted, 'model "NVIDIA B200"');
    const offlineGpu = (await gpus.listGpus({ hostId: offline.id })).gpus[0]!;
    await expectCode(gpus.allocateGpu({ gpuId: offlineGpu.id, holder: "x" }), Code.FailedPrecondition, "OFFLINE");
    const cordoned = await onlineHost("pick-cordoned", 1, "NVIDIA B200");
    await hosts.drainHost({ id: cordoned.host.id });
    await expectCode(gpus.allocateGpu({ gpuId: cordoned.gpus[0]!.id, holder: "x" }), Code.FailedPrecondition, "takes no new work");
    const online = await onlineHost("pick-online", 1, "NVIDIA B200");
    const picked = await gpus.allocateGpu({ model: "NVIDIA B200", holder: "x" });
    assert.equal(picked.gpu?.id, online.gpus[0]!.id);
  });

  it("never hands one GPU to two holders: 50 concurrent calls for one named GPU", async () => {
    const {
      gpus: [g],
    } = await onlineHost("race-named", 1, "NVIDIA GH200");
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) =>
        server.client(GpuService, { protocol: i % 2 ? "grpc" : "connect" }).allocateGpu({ gpuId: g!.id, holder: `caller-${i}` }),
      ),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => ConnectError.from(r.reason).code);
    assert.equal(won.length, 1);
    assert.deepEqual(new Set(lost), new Set([Code.FailedPrecondition]));
    const winner = (won[0] as PromiseFulfilledResult<{ gpu?: { holder: string } }>).value.gpu!.holder;
    assert.equal((await gpus.getGpu({ id: g!.id })).gpu?.holder, winner);
  });

  it("never hands one GPU to two holders: 50 concurrent picks for 10 free GPUs", async () => {
    const { gpus: made } = await onlineHost("race-pick", 10, "NVIDIA H200");
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) =>
        server.client(GpuService, { protocol: i % 2 ? "grpc" : "connect" }).allocateGpu({ model: "NVIDIA H200", holder: `picker-${i}` }),
      ),
    );
    const won = results.flatMap((r) => (r.status === "fulfilled" ? [r.value.gpu!] : []));
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => ConnectError.from(r.reason).code);
    assert.equal(won.length, 10);
    assert.equal(new Set(won.map((g) => g.id)).size, 10, "ten different GPUs");
    assert.deepEqual(new Set(lost), new Set([Code.ResourceExhausted]));
    // What the database holds agrees with what the callers were told.
    const stored = await gpus.listGpus({ model: "NVIDIA H200" });
    assert.deepEqual(stored.gpus.map((g) => `${g.id}=${g.holder}`).sort(), won.map((g) => `${g.id}=${g.holder}`).sort());
    assert.equal(made.length, 10);
  });
});
