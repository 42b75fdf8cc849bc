// npm run bench:files [-- --mib 512 --store local|s3|both]
// Streams one large file up (UploadFile) and down (DownloadFile) through a RemoteGPU server running
// as its own process, with the local store and with S3 (s3rver), and reports throughput and the
// server's peak resident memory (VmHWM), to show that memory does not follow the file size.
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { createRemoteGpuClient } from "@remotegpu/sdk";
import { freePort, serverEnv, spawnServer } from "../../test/support/child.js";
import { createTestDatabase } from "../../test/support/database.js";
import { startS3 } from "../../test/support/s3.js";

const { values } = parseArgs({ options: { mib: { type: "string", default: "512" }, store: { type: "string", default: "both" } } });
const MiB = 1024 * 1024;
const total = Number(values.mib) * MiB;
const ADMIN = "bench-admin-token-0123456789";

/** Resident memory of a process now and at its peak, in MiB (Linux /proc). */
function memory(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
}

async function run(store: "local" | "s3") {
  const db = await createTestDatabase();
  const dataDir = await mkdtemp(path.join(tmpdir(), "remotegpu-bench-"));
  const s3 = store === "s3" ? await startS3() : undefined;
  const port = await freePort();
  const server = spawnServer(
    serverEnv({
      DATABASE_URL: db.url,
      PORT: String(port),
      BIND_ADDRESS: "127.0.0.1",
      REMOTEGPU_ADMIN_TOKEN: ADMIN,
      DATA_DIR: dataDir,
      LOG_LEVEL: "info",
      ...s3?.env,
    }),
  );
  try {
    await server.listening(30_000);
    // The SDK's own transport (gRPC), HTTP/2 windows included: what a user's download gets.
    const client = createRemoteGpuClient({ baseUrl: `http://127.0.0.1:${port}`, token: ADMIN, transport: "grpc" }).workspaces;
    const workspaceId = (await client.createWorkspace({ name: "bench" })).workspace!.id;
    const before = memory(server.child.pid!);

    // The same 1 MiB block over and over, hashed on the way: the client holds no more than one block.
    const block = randomBytes(MiB);
    const sent = createHash("sha256");
    async function* body() {
      yield { part: { case: "header" as const, value: { workspaceId, path: "big.bin", sizeBytes: BigInt(total) } } };
      for (let i = 0; i < total; i += MiB) {
        sent.update(block);
        yield { part: { case: "chunk" as const, value: block } };
      }
    }
    let t = performance.now();
    await client.uploadFile(body());
    const up = (performance.now() - t) / 1000;
    const afterUpload = memory(server.child.pid!);

    t = performance.now();
    const got = createHash("sha256");
    let bytes = 0;
    for await (const res of client.downloadFile({ workspaceId, path: "big.bin" })) {
      if (res.part.case === "chunk") {
        got.update(res.part.value);
        bytes += res.part.value.length;
      }
    }
    const down = (performance.now() - t) / 1000;
    const after = memory(server.child.pid!);
    if (bytes !== total || got.digest("hex") !== sent.digest("hex")) throw new Error("the downloaded file differs");
    return {
      store,
      mib: total / MiB,
      upMiBs: total / MiB / up,
      downMiBs: total / MiB / down,
      rssBefore: before.rss,
      peakAfterUpload: afterUpload.peak,
      peak: after.peak,
    };
  } finally {
    await server.kill();
    await s3?.close();
    await db.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

const stores = values.store === "both" ? (["local", "s3"] as const) : [values.store as "local" | "s3"];
const rows = [];
for (const store of stores) rows.push(await run(store));
const f = (n: number) => n.toFixed(0);
console.log(`\n| store | file | upload | download | server RSS before | peak RSS after upload | peak RSS after download |`);
console.log(`| --- | --- | --- | --- | --- | --- | --- |`);
for (const r of rows) {
  console.log(
    `| ${r.store} | ${r.mib} MiB | ${f(r.upMiBs)} MiB/s | ${f(r.downMiBs)} MiB/s | ${f(r.rssBefore)} MiB | ${f(r.peakAfterUpload)} MiB | ${f(r.peak)} MiB |`,
  );
}
process.exit(0);
