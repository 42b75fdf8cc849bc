import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { LocalObjectStore } from "../../src/storage/local-object-store.js";
import type { ObjectStore } from "../../src/storage/object-store.js";
import { S3ObjectStore } from "../../src/storage/s3-object-store.js";
import { S3_BUCKET, startS3 } from "../support/s3.js";

async function* chunks(data: Buffer, size = 64 * 1024): AsyncIterable<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

async function read(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** The contract every ObjectStore keeps; run against the local store and against s3rver. */
function contract(name: string, open: () => Promise<{ store: ObjectStore; presigns: boolean; close(): Promise<void> }>) {
  describe(`ObjectStore contract: ${name}`, () => {
    let store: ObjectStore;
    let presigns: boolean;
    let close: () => Promise<void>;
    before(async () => ({ store, presigns, close } = await open()));
    after(() => close());

    it("writes, reads whole and by range, tells the size, deletes", async () => {
      const data = randomBytes(300_000);
      assert.deepEqual(await store.put("a/one", chunks(data), "application/octet-stream"), { size: data.length });
      assert.deepEqual(await read(await store.get("a/one")), data);
      assert.deepEqual(await read(await store.get("a/one", { start: 1000, end: 1999 })), data.subarray(1000, 2000));
      assert.deepEqual(await store.head("a/one"), { size: data.length });
      await store.copy("a/one", "b/two");
      assert.deepEqual(await read(await store.get("b/two")), data);
      await store.delete("b/two");
      await store.delete("a/one");
      assert.equal(await store.head("a/one"), undefined);
      await store.delete("a/one"); // twice is fine
    });

    it("stores large objects in parts (20 MiB) and reads them back intact", async () => {
      const data = randomBytes(20 * 1024 * 1024 + 123);
      await store.put("big", chunks(data, 1024 * 1024), "application/octet-stream");
      assert.ok((await read(await store.get("big"))).equals(data));
      await store.delete("big");
    });

    it("leaves nothing when the body fails half way", async () => {
      async function* broken() {
        yield randomBytes(9 * 1024 * 1024); // past one S3 part
        throw new Error("client went away");
      }
      await assert.rejects(store.put("broken", broken(), "text/plain"), /client went away/);
      assert.equal(await store.head("broken"), undefined);
    });

    it("presigns GET and PUT URLs that work with plain fetch, where it can", async () => {
      if (!presigns) {
        assert.equal(await store.presign("x", "GET", 60), undefined);
        return;
      }
      const put = await store.presign("signed/file.txt", "PUT", 60);
      assert.equal((await fetch(put!, { method: "PUT", body: "uploaded directly" })).status, 200);
      const get = await store.presign("signed/file.txt", "GET", 60);
      const res = await fetch(get!);
      assert.equal(await res.text(), "uploaded directly");
    });
  });
}

contract("local filesystem", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "remotegpu-objects-"));
  return {
    store: new LocalObjectStore(dir),
    presigns: false,
    async close() {
      assert.deepEqual(
        (await readdir(dir, { recursive: true })).filter((f) => f.endsWith(".partial")),
        [],
        "no partial files left",
      );
      await rm(dir, { recursive: true, force: true });
    },
  };
});

contract("S3 (s3rver)", async () => {
  const s3 = await startS3();
  const store = new S3ObjectStore({
    endpoint: s3.endpoint,
    bucket: S3_BUCKET,
    region: "us-east-1",
    accessKeyId: "S3RVER",
    secretAccessKey: "S3RVER",
    forcePathStyle: true,
  });
  return {
    store,
    presigns: true,
    async close() {
      store.close();
      await s3.close();
    },
  };
});
