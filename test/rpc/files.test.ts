import { strict as assert } from "node:assert";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import path from "node:path";
import v8 from "node:v8";
import vm from "node:vm";
import { ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  ApiTokenRole,
  DownloadFileRequestSchema,
  FileUrlMethod,
  WorkspaceService,
  type UploadFileRequest,
  type WorkspaceFile,
} from "../../gen/remotegpu/v1/workspace_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { UploadFileRequestSchema } from "../../gen/remotegpu/v1/workspace_pb.js";
import { expectCode } from "../support/expect.js";
import { eventually } from "../support/eventually.js";
import { envelope, grpcHeaders } from "../support/grpc-envelope.js";
import { S3_BUCKET, startS3 } from "../support/s3.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

type Part = MessageInitShape<typeof UploadFileRequestSchema>;
const MiB = 1024 * 1024;

async function* upload(
  workspaceId: string,
  filePath: string,
  data: Buffer,
  opts: { size?: bigint; overwrite?: boolean; chunk?: number; pause?: Promise<void> } = {},
): AsyncIterable<Part> {
  yield {
    part: {
      case: "header",
      value: { workspaceId, path: filePath, contentType: "text/plain", sizeBytes: opts.size, overwrite: opts.overwrite },
    },
  };
  const step = opts.chunk ?? 256 * 1024;
  for (let i = 0; i < data.length; i += step) {
    yield { part: { case: "chunk", value: data.subarray(i, i + step) } };
    if (opts.pause && i >= step) await opts.pause;
  }
}

/** The same tests against the local store and against S3 (s3rver). */
for (const kind of ["local", "s3"] as const) {
  describe(`WorkspaceService files (${kind} object store)`, function () {
    this.timeout(120_000);
    let server: TestServer;
    let dataDir: string;
    let s3: Awaited<ReturnType<typeof startS3>> | undefined;
    let files: ReturnType<typeof server.client<typeof WorkspaceService>>;
    let ws: string;

    /** Every object key in the store, to check nothing was left behind. */
    async function objects(): Promise<string[]> {
      if (!s3)
        return (await readdir(path.join(dataDir, "objects"), { recursive: true, withFileTypes: true }).catch(() => []))
          .filter((d) => d.isFile())
          .map((d) => d.name);
      const client = new S3Client({
        endpoint: s3.endpoint,
        region: "us-east-1",
        forcePathStyle: true,
        credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
      });
      const res = await client.send(new ListObjectsV2Command({ Bucket: S3_BUCKET }));
      client.destroy();
      return (res.Contents ?? []).map((o) => o.Key!);
    }

    async function download(filePath: string, offset = 0n, length = 0n, workspaceId = ws) {
      const parts: Buffer[] = [];
      let meta: WorkspaceFile | undefined;
      for await (const res of files.downloadFile({ workspaceId, path: filePath, offset, length })) {
        if (res.part.case === "file") meta = res.part.value;
        else if (res.part.case === "chunk") parts.push(Buffer.from(res.part.value));
      }
      return { meta, data: Buffer.concat(parts) };
    }

    before(async () => {
      dataDir = await mkdtemp(path.join(tmpdir(), "remotegpu-files-"));
      s3 = kind === "s3" ? await startS3() : undefined;
      server = await startTestServer({ env: { DATA_DIR: dataDir, ...s3?.env } });
      files = server.client(WorkspaceService);
      ws = (await files.createWorkspace({ name: "files-team" })).workspace!.id;
    });
    after(async () => {
      await server.close();
      await s3?.close();
      await rm(dataDir, { recursive: true, force: true });
    });

    it("uploads, lists, downloads whole and by range, overwrites only when asked, deletes", async () => {
      const data = Buffer.from("line one\nline two\n");
      const up = await files.uploadFile(upload(ws, "notes/readme.txt", data));
      assert.equal(up.file?.sizeBytes, BigInt(data.length));
      await files.uploadFile(upload(ws, "notes/other.txt", Buffer.from("x")));
      await files.uploadFile(upload(ws, "data.bin", Buffer.from("y")));
      const listed = await files.listFiles({ workspaceId: ws, prefix: "notes/" });
      assert.deepEqual(
        listed.files.map((f) => f.path),
        ["notes/other.txt", "notes/readme.txt"],
      );
      const paged = await files.listFiles({ workspaceId: ws, pageSize: 2 });
      assert.deepEqual(
        (await files.listFiles({ workspaceId: ws, pageSize: 2, pageToken: paged.nextPageToken })).files.map((f) => f.path),
        ["notes/readme.txt"],
      );

      assert.deepEqual((await download("notes/readme.txt")).data, data);
      assert.equal((await download("notes/readme.txt", 5n, 3n)).data.toString(), "one");
      assert.equal((await download("notes/readme.txt")).meta?.contentType, "text/plain");
      await expectCode(files.uploadFile(upload(ws, "notes/readme.txt", Buffer.from("new"))), Code.AlreadyExists, "overwrite");
      await files.uploadFile(upload(ws, "notes/readme.txt", Buffer.from("new"), { overwrite: true }));
      assert.equal((await download("notes/readme.txt")).data.toString(), "new");
      assert.equal((await files.getUsage({ workspaceId: ws })).usage?.storageBytes, 5n, "usage counts the files");

      for (const p of ["notes/readme.txt", "notes/other.txt", "data.bin"]) await files.deleteFile({ workspaceId: ws, path: p });
      await expectCode(files.deleteFile({ workspaceId: ws, path: "data.bin" }), Code.NotFound);
      assert.deepEqual(await objects(), [], "deleting a file removes its content, and the overwritten content went too");
    });

    it("refuses paths that could escape the workspace, and other workspaces' tokens", async () => {
      for (const bad of ["../x", "/etc/passwd", "a/../../b", "a\0b", "a//b", "./a", "a/", "x".repeat(1025)]) {
        await expectCode(files.uploadFile(upload(ws, bad, Buffer.from("x"))), Code.InvalidArgument, "path");
      }
      await files.uploadFile(upload(ws, "secret.txt", Buffer.from("mine")));
      const other = (await files.createWorkspace({ name: "files-other" })).workspace!.id;
      const outsider = server.client(WorkspaceService, {
        token: (await files.createApiToken({ workspaceId: other, name: "m", role: ApiTokenRole.MEMBER })).secret,
      });
      await expectCode(
        download("secret.txt", 0n, 0n).then(() =>
          outsider.downloadFile({ workspaceId: ws, path: "secret.txt" })[Symbol.asyncIterator]().next(),
        ),
        Code.PermissionDenied,
      );
      await expectCode(outsider.uploadFile(upload(ws, "planted.txt", Buffer.from("x"))), Code.PermissionDenied);
      await expectCode(outsider.downloadFile({ workspaceId: other, path: "secret.txt" })[Symbol.asyncIterator]().next(), Code.NotFound); // its own workspace has no such file
      const viewer = server.client(WorkspaceService, {
        token: (await files.createApiToken({ workspaceId: ws, name: "v", role: ApiTokenRole.VIEWER })).secret,
      });
      await expectCode(viewer.uploadFile(upload(ws, "v.txt", Buffer.from("x"))), Code.PermissionDenied);
      await files.deleteFile({ workspaceId: ws, path: "secret.txt" });
    });

    it("refuses an upload over the storage quota, before or during it, leaving nothing behind", async () => {
      const capped = (await files.createWorkspace({ name: "files-capped" })).workspace!.id;
      await files.setResourceQuota({ quota: { workspaceId: capped, maxStorageBytes: BigInt(2 * MiB) } });
      await expectCode(
        files.uploadFile(upload(capped, "big.bin", randomBytes(10), { size: BigInt(3 * MiB) })),
        Code.ResourceExhausted,
        "max_storage_bytes",
      );
      await files.uploadFile(upload(capped, "first.bin", randomBytes(MiB)));
      // No size announced: refused when the bytes pass the quota.
      await expectCode(
        files.uploadFile(upload(capped, "second.bin", randomBytes((3 * MiB) / 2))),
        Code.ResourceExhausted,
        "max_storage_bytes",
      );
      assert.deepEqual(
        (await files.listFiles({ workspaceId: capped })).files.map((f) => f.path),
        ["first.bin"],
      );
      assert.equal((await files.getUsage({ workspaceId: capped })).usage?.storageBytes, BigInt(MiB));
      assert.equal((await objects()).length, 1, "only the first file's object exists");
      await files.deleteFile({ workspaceId: capped, path: "first.bin" });
    });

    it("leaves nothing of a cancelled upload", async () => {
      const abort = new AbortController();
      let release!: () => void;
      const pause = new Promise<void>((r) => (release = r));
      const call = files.uploadFile(upload(ws, "cancelled.bin", randomBytes(12 * MiB), { pause }), { signal: abort.signal });
      await new Promise((r) => setTimeout(r, 200));
      abort.abort();
      release();
      await expectCode(call, Code.Canceled);
      // The server notices the reset and cleans up (an S3 multipart abort takes a while on a busy machine).
      await eventually("the cancelled upload's object to be gone", async () => (await objects()).length === 0, 10_000);
      assert.deepEqual((await files.listFiles({ workspaceId: ws })).files, []);
    });

    it("streams a 64 MiB file up and down intact", async () => {
      const data = randomBytes(64 * MiB);
      await files.uploadFile(upload(ws, "large.bin", data, { chunk: MiB }));
      const { data: back } = await download("large.bin");
      assert.equal(createHash("sha256").update(back).digest("hex"), createHash("sha256").update(data).digest("hex"));
      await files.deleteFile({ workspaceId: ws, path: "large.bin" });
    });

    it("holds no more of a download than what is in flight, however far into it", async () => {
      v8.setFlagsFromString("--expose-gc");
      const gc = vm.runInNewContext("gc") as () => void;
      // Client and server share this process: what the server keeps shows here.
      const held = () => {
        gc();
        const m = process.memoryUsage();
        return m.heapUsed + m.arrayBuffers;
      };
      await files.uploadFile(upload(ws, "long.bin", randomBytes(64 * MiB), { chunk: MiB }));
      await new Promise((r) => setTimeout(r, 200)); // the upload's buffers let go
      const before = held();
      // The least of a few looks from chunk 40 on: what the collector has not yet handed back at one
      // moment varies, what a leak keeps (every message so far) only grows.
      let grown = Number.POSITIVE_INFINITY;
      let chunks = 0;
      for await (const res of files.downloadFile({ workspaceId: ws, path: "long.bin" })) {
        if (res.part.case === "chunk" && ++chunks >= 40 && chunks <= 56 && chunks % 4 === 0) grown = Math.min(grown, held() - before);
      }
      // Each message sent used to stay reachable until the stream ended: 40 MiB and more here.
      assert.ok(grown < 24 * MiB, `${(grown / MiB).toFixed(1)} MiB held 40 to 56 chunks into the download`);
      await files.deleteFile({ workspaceId: ws, path: "long.bin" });
    });

    it("sends file content uncompressed even to a caller that accepts gzip", async () => {
      // Compressing each chunk cost the server more CPU than the transfer itself (file content
      // rarely shrinks), so the chunks go out as they are; the caller must still read them.
      const data = Buffer.alloc(2 * MiB, "compressible text ");
      await files.uploadFile(upload(ws, "text.txt", data, { chunk: MiB }));
      const session = http2.connect(server.baseUrl);
      try {
        const request = toBinary(DownloadFileRequestSchema, create(DownloadFileRequestSchema, { workspaceId: ws, path: "text.txt" }));
        const stream = session.request(
          grpcHeaders("/remotegpu.v1.WorkspaceService/DownloadFile", ADMIN_TOKEN, { "grpc-accept-encoding": "gzip" }),
        );
        stream.end(envelope(request));
        const received: Buffer[] = [];
        for await (const part of stream) received.push(part as Buffer);
        const all = Buffer.concat(received);
        const flags: number[] = [];
        let chunks = 0;
        for (let at = 0; at < all.length; at += 5 + all.readUInt32BE(at + 1)) {
          flags.push(all[at]!);
          chunks += all.readUInt32BE(at + 1);
        }
        assert.ok(flags.length >= 3, "the metadata, then the chunks");
        assert.deepEqual(new Set(flags), new Set([0]), "no message is compressed");
        assert.ok(chunks > data.length, "the whole file came, as it is");
      } finally {
        session.close();
      }
      await files.deleteFile({ workspaceId: ws, path: "text.txt" });
    });

    it(
      kind === "s3" ? "hands out presigned GET and PUT URLs that work with fetch" : "says it cannot presign URLs on the local store",
      async () => {
        await files.uploadFile(upload(ws, "shared.txt", Buffer.from("via url")));
        if (kind === "local") {
          await expectCode(files.getFileUrl({ workspaceId: ws, path: "shared.txt" }), Code.FailedPrecondition, "UploadFile/DownloadFile");
          return;
        }
        const get = await files.getFileUrl({ workspaceId: ws, path: "shared.txt", expiresIn: { seconds: 60n } });
        assert.equal(await (await fetch(get.url)).text(), "via url");
        const put = await files.getFileUrl({ workspaceId: ws, path: "direct/upload.txt", method: FileUrlMethod.PUT });
        assert.equal((await fetch(put.url, { method: "PUT", body: "straight to the bucket" })).status, 200);
        const listed = await files.listFiles({ workspaceId: ws, prefix: "direct/" });
        assert.deepEqual(
          listed.files.map((f) => [f.path, f.sizeBytes]),
          [["direct/upload.txt", 22n]],
        );
        assert.equal((await download("direct/upload.txt")).data.toString(), "straight to the bucket");
        // The URL still works, but the file is a copy of its own by now: nothing PUT later reaches it.
        assert.equal((await fetch(put.url, { method: "PUT", body: "x".repeat(5000) })).status, 200);
        assert.deepEqual(
          (await files.listFiles({ workspaceId: ws, prefix: "direct/" })).files.map((f) => f.sizeBytes),
          [22n],
        );
        assert.equal((await download("direct/upload.txt")).data.toString(), "straight to the bucket");
      },
    );
  });
}

void (null as unknown as UploadFileRequest);
