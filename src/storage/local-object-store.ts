import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { copyFile, mkdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";
import type { ByteRange, ObjectStore } from "./object-store.js";

/** Objects as files under a directory. Writes go to a temporary file renamed into place. */
export class LocalObjectStore implements ObjectStore {
  constructor(private readonly root: string) {}

  async put(key: string, body: AsyncIterable<Uint8Array>): Promise<{ size: number }> {
    const file = this.file(key);
    await mkdir(path.dirname(file), { recursive: true });
    const partial = `${file}.${randomBytes(6).toString("hex")}.partial`;
    let size = 0;
    try {
      const counted = async function* () {
        for await (const chunk of body) {
          size += chunk.length;
          yield chunk;
        }
      };
      await pipeline(Readable.from(counted()), createWriteStream(partial, { flags: "wx" }));
      await rename(partial, file);
      return { size };
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
  }

  async get(key: string, range?: ByteRange): Promise<AsyncIterable<Uint8Array>> {
    const file = this.file(key);
    await stat(file); // a missing object fails here, not half way through the caller's stream
    return createReadStream(
      file,
      range ? { start: range.start, end: range.end, highWaterMark: 1024 * 1024 } : { highWaterMark: 1024 * 1024 },
    );
  }

  async head(key: string): Promise<{ size: number } | undefined> {
    const s = await stat(this.file(key)).catch(() => undefined);
    return s?.isFile() ? { size: s.size } : undefined;
  }

  async copy(from: string, to: string): Promise<void> {
    await mkdir(path.dirname(this.file(to)), { recursive: true });
    await copyFile(this.file(from), this.file(to));
  }

  async delete(key: string): Promise<void> {
    await rm(this.file(key), { force: true });
  }

  async presign(): Promise<string | undefined> {
    return undefined;
  }

  private file(key: string): string {
    return path.join(this.root, ...key.split("/"));
  }
}
