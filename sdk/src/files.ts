import type { RemoteGpuClient } from "./client.js";
import type { WorkspaceFile } from "./generated.js";

/** Options of {@link downloadFile}. */
export interface DownloadFileOptions {
  /**
   * First byte to read.
   * @default 0
   */
  offset?: number | bigint;
  /**
   * Number of bytes to read; `0` reads to the end.
   * @default 0
   */
  length?: number | bigint;
  /**
   * Called once, before the first chunk, with the file's metadata (size, content type, time).
   * @default none
   */
  onFile?: (file: WorkspaceFile) => void;
  /**
   * Cancels the download; the loop then throws `CanceledError`.
   * @default none
   */
  signal?: AbortSignal;
  /**
   * Deadline of the whole download, in milliseconds.
   * @default none
   */
  timeoutMs?: number;
}

/**
 * Streams a workspace file (or a byte range of it) as it arrives, without holding it in memory:
 *
 * ```ts
 * for await (const chunk of downloadFile(client, workspaceId, "datasets/train.csv")) out.write(chunk);
 * ```
 *
 * In Node, `Readable.from(downloadFile(...))` pipes it anywhere; {@link collectBytes} (or `toBuffer`
 * in Node) gathers it in memory.
 *
 * @param client A client, or anything with its `workspaces` sub-client.
 * @param workspaceId The workspace.
 * @param path The file's path in the workspace.
 */
export async function* downloadFile(
  client: Pick<RemoteGpuClient, "workspaces">,
  workspaceId: string,
  path: string,
  options: DownloadFileOptions = {},
): AsyncGenerator<Uint8Array, void, undefined> {
  const request = { workspaceId, path, offset: BigInt(options.offset ?? 0), length: BigInt(options.length ?? 0) };
  for await (const res of client.workspaces.downloadFile(request, { signal: options.signal, timeoutMs: options.timeoutMs })) {
    if (res.part.case === "file") options.onFile?.(res.part.value);
    else if (res.part.case === "chunk") yield res.part.value;
  }
}

/**
 * Gathers a stream of chunks (e.g. {@link downloadFile}) into one `Uint8Array`.
 *
 * @param chunks The chunks, in order.
 */
export async function collectBytes(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of chunks) {
    parts.push(chunk);
    size += chunk.length;
  }
  return concat(parts, size);
}

/** Joins `parts` (of `size` bytes in all) without copying when there is only one. */
export function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
