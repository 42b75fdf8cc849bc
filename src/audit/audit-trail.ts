import type { FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import { decodePageToken, encodePageToken, pageSize, type Page } from "../pagination.js";
import type { Clock } from "../platform/clock.js";
import { AuditEvent } from "./audit-event.js";

export type AuditRecord = Omit<AuditEvent, "id" | "time" | "detail"> & { detail?: string };

/** The object a call acted on. */
export interface AuditSubject {
  workspaceId?: string | null;
  targetId: string;
}

/**
 * Handed by the RPC layer to a domain mutation, which calls it inside its transaction: the call's
 * audit event then commits or rolls back together with the change it describes.
 */
export type AuditNote = (em: EntityManager, subject: AuditSubject) => void;

export interface AuditFilter {
  /** Undefined for every workspace (cluster admins only). */
  workspaceId?: string;
  startTime?: Date;
  endTime?: Date;
  actorId?: string;
  targetId?: string;
}

/** The append-only record of mutating calls, with its retention. */
export class AuditTrail {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly retentionMs: number,
  ) {}

  /** Adds an event to `em`'s unit of work; it is written when that transaction commits. */
  add(em: EntityManager, record: AuditRecord): void {
    em.create(AuditEvent, { ...record, detail: record.detail ?? "", time: this.clock.now() });
  }

  /** Writes an event on its own, for calls that failed or changed nothing in the database. */
  async append(record: AuditRecord): Promise<void> {
    const em = this.orm.em.fork();
    this.add(em, record);
    await em.flush();
  }

  /** Newest first. */
  async list(filter: AuditFilter, size: number, token: string): Promise<Omit<Page<AuditEvent>, "totalSize">> {
    const limit = pageSize(size);
    const fingerprint = { ...filter, startTime: filter.startTime?.getTime(), endTime: filter.endTime?.getTime() };
    const after = decodePageToken(token, fingerprint, ["int", "string"]);
    const where: FilterQuery<AuditEvent>[] = [];
    if (filter.workspaceId) where.push({ workspaceId: filter.workspaceId });
    if (filter.actorId) where.push({ actorId: filter.actorId });
    if (filter.targetId) where.push({ targetId: filter.targetId });
    if (filter.startTime) where.push({ time: { $gte: filter.startTime } });
    if (filter.endTime) where.push({ time: { $lt: filter.endTime } });
    if (after) {
      const time = new Date(after[0] as number);
      where.push({ $or: [{ time: { $lt: time } }, { time, id: { $lt: after[1] as string } }] });
    }

    const em = this.orm.em.fork();
    const rows = await em.find(AuditEvent, { $and: where }, { orderBy: [{ time: "desc" }, { id: "desc" }], limit: limit + 1 });
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    const nextPageToken = rows.length > limit && last ? encodePageToken([last.time.getTime(), last.id], fingerprint) : "";
    return { items, nextPageToken };
  }

  /** Deletes events older than the retention period; returns how many. */
  async expire(): Promise<number> {
    const cutoff = new Date(this.clock.now().getTime() - this.retentionMs);
    return this.orm.em.fork().nativeDelete(AuditEvent, { time: { $lt: cutoff } });
  }
}
