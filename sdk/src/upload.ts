import type { MessageInitShape } from "@bufbuild/protobuf";
import type { RemoteGpuClient } from "./client.js";
import { concat } from "./files.js";
import type { UploadFileRequestSchema, WorkspaceFile } from "./generated.js";

/** The size of the chunks {@link uploadFile} sends: 1 MiB. */
export const UPLOAD_CHUNK_BYTES = 1024 * 1024;

/**
 * What {@link uploadFile} accepts: bytes in memory, or a stream of byte chunks of any sizes. A Node
 * `Readable` (e.g. `fs.createReadStream(path)`) is an `AsyncIterable` of Buffers and fits as is;
 * string chunks (a stream with an encoding) are sent as UTF-8.
 */
export type UploadData = Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array | string>;

/** Options of {@link uploadFile}. */
export interface UploadFileOptions {
  /**
   * The file's MIME type.
   * @default "application/octet-stream"
   */
  contentType?: string;
  /**
   * Replace an existing file at `path`; without it an existing path is `AlreadyExistsError`.
   * @default false
   */
  overwrite?: boolean;
  /**
   * The size announced before any byte is sent, so that the storage quota refuses a too large
   * file at once rather than part way.
   * @default the length of a `Uint8Array`; not announced for a stream
   */
  sizeBytes?: number | bigint;
  /**
   * Cancels the upload (it rejects with `CanceledError`); nothing of it is kept.
   * @default none
   */
  signal?: AbortSignal;
  /**
   * Deadline of the whole upload, in milliseconds.
   * @default none
   */
  timeoutMs?: number;
}

/**
 * Uploads a file into a workspace's storage, streamed in 1 MiB chunks: a file of any size costs
 * the caller about one chunk of memory. The file appears whole when the upload ends, or not at all
 * (a refused, failed or cancelled upload leaves nothing behind).
 *
 * ```ts
 * await uploadFile(client, workspaceId, "datasets/train.csv", fs.createReadStream("train.csv"), { contentType: "text/csv" });
 * ```
 *
 * Node only: browsers' fetch cannot stream a request body, so the web entry has no uploadFile (on
 * S3 storage, upload to the URL of `GetFileUrl` with method PUT instead).
 *
 * @param client A client, or anything with its `workspaces` sub-client.
 * @param workspaceId The workspace.
 * @param path Relative path in the workspace, e.g. `"datasets/train.csv"`.
 * @param data The content.
 * @returns The stored file's metadata.
 */
export async function uploadFile(
  client: Pick<RemoteGpuClient, "workspaces">,
  workspaceId: string,
  path: string,
  data: UploadData,
  options: UploadFileOptions = {},
): Promise<WorkspaceFile> {
  const sizeBytes = options.sizeBytes ?? (data instanceof Uint8Array ? data.length : undefined);
  const header = {
    workspaceId,
    path,
    contentType: options.contentType ?? "",
    overwrite: options.overwrite ?? false,
    sizeBytes: sizeBytes === undefined ? undefined : BigInt(sizeBytes),
  };
  async function* requests(): AsyncGenerator<MessageInitShape<typeof UploadFileRequestSchema>> {
    yield { part: { case: "header", value: header } };
    for await (const chunk of chunked(data, UPLOAD_CHUNK_BYTES)) yield { part: { case: "chunk", value: chunk } };
  }
  const res = await client.workspaces.uploadFile(requests(), { signal: options.signal, timeoutMs: options.timeoutMs });
  return res.file!;
}

const utf8 = new TextEncoder();

/** Cuts and joins `data` into chunks of exactly `size` bytes, the last one shorter. */
export async function* chunked(data: UploadData, size: number): AsyncGenerator<Uint8Array, void, undefined> {
  if (data instanceof Uint8Array) {
    for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
    return;
  }
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  for await (const piece of data) {
    let bytes = typeof piece === "string" ? utf8.encode(piece) : piece;
    if (!(bytes instanceof Uint8Array)) throw new TypeError(`upload data must be Uint8Array chunks, got ${typeof bytes}`);
    while (pendingBytes + bytes.length >= size) {
      const take = size - pendingBytes;
      pending.push(bytes.subarray(0, take));
      yield concat(pending, size);
      pending = [];
      pendingBytes = 0;
      bytes = bytes.subarray(take);
    }
    if (bytes.length > 0) {
      pending.push(bytes);
      pendingBytes += bytes.length;
    }
  }
  if (pendingBytes > 0) yield concat(pending, pendingBytes);
}
