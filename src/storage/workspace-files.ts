import { randomUUID } from "node:crypto";
import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { MikroORM } from "@mikro-orm/postgresql";
import type { AuditNote } from "../audit/audit-trail.js";
import {
  AlreadyExistsError,
  CancelledError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  QuotaExceededError,
} from "../errors.js";
import { checkId } from "../ids.js";
import { decodePageToken, encodePageToken, pageSize } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import { onUniqueViolation } from "../platform/unique-violation.js";
import { Violations, checkString } from "../validation.js";
import { admit, type QuotaLedger } from "../workspace/quota-ledger.js";
import type { ObjectStore } from "./object-store.js";
import { WorkspaceFile } from "./workspace-file.js";

export interface FileHeader {
  path: string;
  contentType: string;
  /** Announced size: checked against the quota before any byte, and against what arrives. */
  sizeBytes?: number;
  overwrite: boolean;
}

const MAX_PATH_BYTES = 1024;
const CONTENT_TYPE = /^[\w.+-]+\/[\w.+-]+(\s*;.*)?$/;
/** A presigned PUT whose upload never came is forgotten after the longest URL lifetime. */
const MAX_URL_SECONDS = 7 * 86_400;

/** Refuses paths that could escape the workspace or confuse a filesystem: "..", "/x", "a//b", NUL. */
export function checkPath(v: Violations, field: string, path: string): void {
  checkString(v, field, path, { required: true, max: MAX_PATH_BYTES });
  if (Buffer.byteLength(path) > MAX_PATH_BYTES) v.add(field, `at most ${MAX_PATH_BYTES} bytes`);
  if (path.startsWith("/") || path.endsWith("/")) v.add(field, "must be relative, without a leading or trailing '/'");
  if (path.split("/").some((part) => part === "" || part === "." || part === ".."))
    v.add(field, "must not contain empty, '.' or '..' segments");
  if (path.includes("\\")) v.add(field, "must use '/' as separator");
}

/**
 * Workspace files: content in the object store, metadata and quota accounting in PostgreSQL.
 * Uploads stream through (never whole in memory), are charged against the storage quota before and
 * while they arrive, and appear atomically: a failed or refused upload leaves nothing behind.
 */
export class WorkspaceFiles {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly store: ObjectStore,
    private readonly quotas: QuotaLedger,
    private readonly logger: Logger,
  ) {}

  /** `cancelled` aborts when the caller went away: a stream that merely ended early must not be stored. */
  async upload(
    workspaceId: string,
    header: FileHeader,
    body: AsyncIterable<Uint8Array>,
    note: AuditNote,
    cancelled?: AbortSignal,
  ): Promise<WorkspaceFile> {
    const id = checkId("header.workspace_id", workspaceId);
    const v = new Violations();
    checkPath(v, "header.path", header.path);
    if (header.contentType)
      checkString(v, "header.content_type", header.contentType, { max: 255, pattern: CONTENT_TYPE, patternHint: "a MIME type" });
    if (header.sizeBytes !== undefined) v.check(header.sizeBytes >= 0, "header.size_bytes", "must be 0 or more");
    v.throwIfAny();
    const contentType = header.contentType || "application/octet-stream";

    const { quota, usage } = await this.quotas.usage(id);
    const existing = await this.orm.em.fork().findOne(WorkspaceFile, { workspace: id, path: header.path });
    if (existing && !header.overwrite) throw new AlreadyExistsError("file", `"${header.path}" (set overwrite to replace it)`);
    const limit = quota.maxStorageBytes;
    const headroom = limit === null ? Infinity : limit - usage.storageBytes + (existing?.sizeBytes ?? 0);
    const refuse = (bytes: number) => new QuotaExceededError("max_storage_bytes", limit ?? 0, usage.storageBytes, bytes);
    if (header.sizeBytes !== undefined && header.sizeBytes > headroom) throw refuse(header.sizeBytes);

    const key = `workspaces/${id}/files/${randomUUID()}`;
    let received = 0;
    const checked = async function* () {
      for await (const chunk of body) {
        received += chunk.length;
        if (header.sizeBytes !== undefined && received > header.sizeBytes)
          throw InvalidArgumentError.field("chunk", `more bytes than size_bytes (${header.sizeBytes})`);
        if (received > headroom) throw refuse(received);
        yield chunk;
      }
      if (header.sizeBytes !== undefined && received !== header.sizeBytes)
        throw InvalidArgumentError.field("chunk", `${received} bytes arrived, size_bytes said ${header.sizeBytes}`);
      if (cancelled?.aborted) throw new CancelledError();
    };
    const { size } = await this.store.put(key, checked(), contentType);

    let replaced: string | undefined;
    try {
      const file = await onUniqueViolation(
        () =>
          this.orm.em.fork().transactional(async (em) => {
            // The quota row is locked first: concurrent uploads are charged one after the other.
            const { quota: locked, usage: now } = await this.quotas.reserve(em, id, {});
            const current = await em.findOne(WorkspaceFile, { workspace: id, path: header.path }, { lockMode: LockMode.PESSIMISTIC_WRITE });
            if (current && !header.overwrite) throw new AlreadyExistsError("file", `"${header.path}" (set overwrite to replace it)`);
            admit(locked, now, { storageBytes: Math.max(0, size - (current?.sizeBytes ?? 0)) });
            if (cancelled?.aborted) throw new CancelledError();
            const time = this.clock.now();
            replaced = current?.objectKey;
            const file =
              current ??
              em.create(WorkspaceFile, {
                workspace: id,
                path: header.path,
                objectKey: key,
                sizeBytes: size,
                createdAt: time,
                updatedAt: time,
              });
            Object.assign(file, { objectKey: key, sizeBytes: size, contentType, pending: false, updatedAt: time });
            note(em, { workspaceId: id, targetId: header.path.slice(0, 128) });
            return file;
          }),
        (c) => (c === "workspace_files_workspace_path_unique" ? new AlreadyExistsError("file", `"${header.path}"`) : undefined),
      );
      if (replaced) await this.forgetObject(replaced);
      return file;
    } catch (err) {
      await this.forgetObject(key);
      throw err;
    }
  }

  /** The file's metadata and its content from `offset`, `length` bytes (0: to the end). */
  async download(
    workspaceId: string,
    path: string,
    offset: number,
    length: number,
  ): Promise<{ file: WorkspaceFile; content: AsyncIterable<Uint8Array> }> {
    const file = await this.find(workspaceId, path);
    const v = new Violations();
    v.check(offset >= 0 && offset <= file.sizeBytes, "offset", `must be 0 to the file size (${file.sizeBytes})`);
    v.check(length >= 0, "length", "must be 0 or more");
    v.throwIfAny();
    const end = length === 0 ? file.sizeBytes - 1 : Math.min(file.sizeBytes - 1, offset + length - 1);
    if (end < offset) return { file, content: (async function* () {})() };
    return { file, content: await this.store.get(file.objectKey, { start: offset, end }) };
  }

  /** Ordered by path. */
  async list(workspaceId: string, prefix: string, size: number, token: string): Promise<{ items: WorkspaceFile[]; nextPageToken: string }> {
    const id = checkId("workspace_id", workspaceId);
    const v = new Violations();
    checkString(v, "prefix", prefix, { max: MAX_PATH_BYTES });
    v.throwIfAny();
    const limit = pageSize(size, 100);
    const filter = { id, prefix };
    const after = decodePageToken(token, filter, ["string"]);
    await this.settlePending(id);
    const where: FilterQuery<WorkspaceFile>[] = [{ workspace: id, pending: false }];
    if (prefix) where.push({ path: { $like: `${prefix.replace(/[\\%_]/g, (c) => `\\${c}`)}%` } });
    if (after) where.push({ path: { $gt: after[0] as string } });
    const rows = await this.orm.em.fork().find(WorkspaceFile, { $and: where }, { orderBy: { path: "asc" }, limit: limit + 1 });
    const items = rows.slice(0, limit);
    return { items, nextPageToken: rows.length > limit ? encodePageToken([items[items.length - 1]!.path], filter) : "" };
  }

  async delete(workspaceId: string, path: string, note: AuditNote): Promise<void> {
    const id = checkId("workspace_id", workspaceId);
    const v = new Violations();
    checkPath(v, "path", path);
    v.throwIfAny();
    const key = await this.orm.em.fork().transactional(async (em) => {
      const file = await em.findOne(WorkspaceFile, { workspace: id, path }, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!file) throw new NotFoundError("file", path.slice(0, 200));
      note(em, { workspaceId: id, targetId: path.slice(0, 128) });
      em.remove(file);
      return file.objectKey;
    });
    await this.forgetObject(key);
  }

  /**
   * A presigned URL. GET reads an existing file. PUT creates a new file whose size is learned once
   * the upload is seen (and refused then, object and all, if it broke the storage quota).
   */
  async url(
    workspaceId: string,
    path: string,
    method: "GET" | "PUT",
    expiresInSeconds: number,
    note: AuditNote,
  ): Promise<{ url: string; expireTime: Date }> {
    const id = checkId("workspace_id", workspaceId);
    const v = new Violations();
    checkPath(v, "path", path);
    v.check(expiresInSeconds >= 1 && expiresInSeconds <= MAX_URL_SECONDS, "expires_in", "must be 1 second to 7 days");
    v.throwIfAny();
    const expireTime = new Date(this.clock.now().getTime() + expiresInSeconds * 1000);
    if (method === "GET") {
      const file = await this.find(id, path);
      return { url: await this.presign(file.objectKey, "GET", expiresInSeconds), expireTime };
    }
    const key = `workspaces/${id}/files/${randomUUID()}`;
    const url = await this.presign(key, "PUT", expiresInSeconds);
    await onUniqueViolation(
      () =>
        this.orm.em.fork().transactional(async (em) => {
          const now = this.clock.now();
          em.create(WorkspaceFile, { workspace: id, path, objectKey: key, sizeBytes: 0, pending: true, createdAt: now, updatedAt: now });
          note(em, { workspaceId: id, targetId: path.slice(0, 128) });
        }),
      (c) =>
        c === "workspace_files_workspace_path_unique"
          ? new AlreadyExistsError("file", `"${path}" (delete it first, or upload with overwrite)`)
          : undefined,
    );
    return { url, expireTime };
  }

  /** Whether the workspace has any files (DeleteWorkspace refuses then, unless forced). */
  async count(workspaceId: string): Promise<number> {
    return this.orm.em.fork().count(WorkspaceFile, { workspace: workspaceId });
  }

  /** Deletes every file of a workspace, content first. */
  async deleteAll(workspaceId: string): Promise<void> {
    const em = this.orm.em.fork();
    for (const file of await em.find(WorkspaceFile, { workspace: workspaceId })) {
      await this.store.delete(file.objectKey);
      await em.nativeDelete(WorkspaceFile, { id: file.id });
    }
  }

  /** Turns presigned uploads that arrived into files; drops those never made within a URL's lifetime. */
  private async settlePending(workspaceId: string): Promise<void> {
    const em = this.orm.em.fork();
    for (const file of await em.find(WorkspaceFile, { workspace: workspaceId, pending: true })) {
      const seen = await this.store.head(file.objectKey);
      if (!seen) {
        if (this.clock.now().getTime() - file.createdAt.getTime() > MAX_URL_SECONDS * 1000)
          await em.nativeDelete(WorkspaceFile, { id: file.id, pending: true });
        continue;
      }
      // The file becomes a copy under a key of its own: the URL may still be valid, and what is PUT
      // to it later must change neither the file nor its counted size.
      const key = `workspaces/${workspaceId}/files/${randomUUID()}`;
      await this.store.copy(file.objectKey, key);
      const size = (await this.store.head(key))?.size ?? 0;
      const verdict = await em.fork().transactional(async (tx) => {
        const { quota, usage } = await this.quotas.reserve(tx, workspaceId, {});
        // Another call may have settled it meanwhile (and counted it): then there is nothing to do.
        const still = await tx.findOne(WorkspaceFile, { id: file.id, pending: true }, { lockMode: LockMode.PESSIMISTIC_WRITE });
        if (!still) return "already";
        try {
          admit(quota, usage, { storageBytes: size });
        } catch (err) {
          if (!(err instanceof QuotaExceededError)) throw err;
          tx.remove(still);
          return "refused";
        }
        Object.assign(still, { objectKey: key, sizeBytes: size, pending: false, updatedAt: this.clock.now() });
        return "settled";
      });
      if (verdict !== "settled") await this.forgetObject(key);
      if (verdict === "refused")
        this.logger.warn({ workspaceId, path: file.path, bytes: size }, "a presigned upload broke the storage quota; removed");
      if (verdict !== "already") await this.forgetObject(file.objectKey);
    }
  }

  private async find(workspaceId: string, path: string): Promise<WorkspaceFile> {
    const id = checkId("workspace_id", workspaceId);
    const v = new Violations();
    checkPath(v, "path", path);
    v.throwIfAny();
    await this.settlePending(id);
    const file = await this.orm.em.fork().findOne(WorkspaceFile, { workspace: id, path, pending: false });
    if (!file) throw new NotFoundError("file", path.slice(0, 200));
    return file;
  }

  private async presign(key: string, method: "GET" | "PUT", expiresInSeconds: number): Promise<string> {
    const url = await this.store.presign(key, method, expiresInSeconds);
    if (!url)
      throw new FailedPreconditionError(
        "this server keeps files on its local disk, which cannot hand out URLs; use UploadFile/DownloadFile",
      );
    return url;
  }

  /** Deletes an object nobody points at any more; a failure only leaves an orphan, so it is logged. */
  private async forgetObject(key: string): Promise<void> {
    await this.store
      .delete(key)
      .catch((err: unknown) =>
        this.logger.warn({ key, error: err instanceof Error ? err.message : String(err) }, "could not delete an object"),
      );
  }
}
