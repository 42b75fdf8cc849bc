import { strict as assert } from "node:assert";
import { create, toBinary } from "@bufbuild/protobuf";
import { GpuSchema, GpuStatus, ListGpusResponseSchema } from "../../gen/remotegpu/v1/gpu_pb.js";
import { fastBrotli, fastGzip } from "../../src/rpc/compression.js";

/** A ListGpus answer of `n` GPUs, each with its own ids, as the server would send it. */
function page(n: number): Uint8Array {
  const gpus = Array.from({ length: n }, (_, i) =>
    create(GpuSchema, {
      id: crypto.randomUUID(),
      hostId: crypto.randomUUID(),
      hostName: `node-${i >> 3}`,
      index: i % 8,
      uuid: `GPU-${crypto.randomUUID()}`,
      model: "NVIDIA H100 80GB HBM3",
      memoryBytes: 80n << 30n,
      status: GpuStatus.AVAILABLE,
    }),
  );
  return toBinary(ListGpusResponseSchema, create(ListGpusResponseSchema, { gpus, totalSize: n }));
}

describe("response compression", () => {
  for (const compression of [fastGzip, fastBrotli]) {
    it(`${compression.name}: small answers and large ones come back as they were`, async () => {
      for (const bytes of [new Uint8Array(0), page(100), page(2_000)]) {
        const packed = await compression.compress(bytes);
        assert.ok(bytes.length === 0 || packed.length < bytes.length, `${packed.length} bytes from ${bytes.length}`);
        assert.deepEqual(new Uint8Array(await compression.decompress(packed, bytes.length + 1)), bytes);
      }
    });

    it(`${compression.name}: a caller who asks for it cannot make one large answer cost the server seconds`, async () => {
      // 1.6 MiB. connect-node's brotli (zlib's default quality, 11) took 2.4 s on this; quality 4 about 0.1 s.
      const bytes = page(10_000);
      const started = performance.now();
      await compression.compress(bytes);
      const ms = performance.now() - started;
      assert.ok(ms < 1_000, `${ms.toFixed(0)} ms`);
    });
  }
});
