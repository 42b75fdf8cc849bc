import { promisify } from "node:util";
import { brotliCompress, brotliCompressSync, constants, gzip, gzipSync, type BrotliOptions, type ZlibOptions } from "node:zlib";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import type { Compression } from "@connectrpc/connect/protocol";

/**
 * Response compression for the clients that ask for it (browsers, connect-es clients), at the fast end
 * of each algorithm. connect-node compresses with zlib's defaults, which are the slow end: on a
 * ListGpus page of 100 GPUs (20 KiB), brotli at its default quality 11 takes 22 ms of CPU for 2.9 KiB,
 * quality 4 0.14 ms for 3.2 KiB; gzip at level 6 0.21 ms for 3.5 KiB, level 1 0.07 ms for 4.0 KiB.
 * Any client may ask for brotli, so quality 11 let one caller make the server spend seconds on a large
 * list. Messages up to SYNC_MAX_BYTES compress on the event loop: at these levels the work is shorter
 * than a round trip through libuv's thread pool. Requests decompress as connect-node does.
 */
const SYNC_MAX_BYTES = 64 * 1024;

const GZIP: ZlibOptions = { level: 1 };
const BROTLI: BrotliOptions = { params: { [constants.BROTLI_PARAM_QUALITY]: 4 } };
const gzipAsync = promisify(gzip);
const brotliAsync = promisify(brotliCompress);

function ownBuffer(b: Buffer): Uint8Array<ArrayBuffer> {
  return b.buffer instanceof ArrayBuffer ? (b as Uint8Array<ArrayBuffer>) : new Uint8Array(b);
}

function fast(
  name: string,
  sync: (bytes: Uint8Array) => Buffer,
  async: (bytes: Uint8Array) => Promise<Buffer>,
  decompress: Compression["decompress"],
): Compression {
  return {
    name,
    compress: async (bytes) => ownBuffer(bytes.byteLength <= SYNC_MAX_BYTES ? sync(bytes) : await async(bytes)),
    decompress,
  };
}

export const fastGzip = fast(
  "gzip",
  (b) => gzipSync(b, GZIP),
  (b) => gzipAsync(b, GZIP),
  compressionGzip.decompress,
);

export const fastBrotli = fast(
  "br",
  (b) => brotliCompressSync(b, BROTLI),
  (b) => brotliAsync(b, BROTLI),
  compressionBrotli.decompress,
);
