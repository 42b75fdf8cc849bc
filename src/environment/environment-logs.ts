import { createInterface } from "node:readline";
import { Readable } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import type { MikroORM } from "@mikro-orm/postgresql";
import { Feed } from "../platform/feed.js";
import type { ObjectStore } from "../storage/object-store.js";
import { LogArchive } from "../storage/workspace-file.js";
import type { LogStreamName } from "./environment.js";

export interface LogLineRecord {
  /** Position in the environment's log once stored (ordered). */
  id?: string;
  time: Date;
  stream: LogStreamName;
  text: string;
}

export interface LogBatch {
  environmentId: string;
  lines: LogLineRecord[];
}

const MAX_LINE = 8192;
/** Newest lines kept per environment; older ones are trimmed as new ones arrive. */
export const KEPT_LINES = 10_000;

/**
 * Environments' output, as their runtimes report it: stored in PostgreSQL (so StreamLogs can tail
 * what came before it connected, on any replica) and fanned out live to followers.
 */
export class EnvironmentLogs {
  readonly appended = new Feed<LogBatch>();

  constructor(
    private readonly orm: MikroORM,
    private readonly store: ObjectStore,
  ) {}

  /** Stores lines a host reported; lines about an environment the host does not run are dropped. */
  async append(hostId: string, environmentId: string, lines: LogLineRecord[]): Promise<boolean> {
    if (lines.length === 0) return true;
    const knex = this.orm.em.getConnection().getKnex();
    const clean = lines.slice(-KEPT_LINES).map((l) => ({ ...l, text: l.text.replace(/\0/g, "").slice(0, MAX_LINE) }));
    const stored = await knex.transaction(async (trx) => {
      const owned = await trx("environments").where({ id: environmentId, host_id: hostId }).first("id");
      if (!owned) return false;
      const ids: { id: string }[] = await trx("environment_logs")
        .insert(clean.map((l) => ({ environment_id: environmentId, time: l.time, stream: l.stream, text: l.text })))
        .returning("id");
      for (const [i, row] of ids.entries()) clean[i]!.id = String(row.id);
      await trx.raw(
        `delete from environment_logs where environment_id = ? and id < (
           select id from environment_logs where environment_id = ? order by id desc offset ? limit 1)`,
        [environmentId, environmentId, KEPT_LINES - 1],
      );
      return true;
    });
    if (stored) this.appended.publish({ environmentId, lines: clean });
    return stored;
  }

  /** The newest stored line of a stream: its time, and how many stored lines of the stream share that time. */
  async lastLine(environmentId: string, stream: LogStreamName): Promise<{ time: Date; count: number } | undefined> {
    const knex = this.orm.em.getConnection().getKnex();
    const last = await knex("environment_logs").where({ environment_id: environmentId, stream }).orderBy("id", "desc").first("time");
    if (!last) return undefined;
    const [{ count }] = await knex("environment_logs")
      .where({ environment_id: environmentId, stream, time: last.time })
      .count("* as count");
    return { time: new Date(last.time), count: Number(count) };
  }

  /** The last `count` lines (at or after `since`), oldest first. */
  async tail(environmentId: string, count: number, since?: Date): Promise<LogLineRecord[]> {
    const knex = this.orm.em.getConnection().getKnex();
    const query = knex("environment_logs")
      .where({ environment_id: environmentId })
      .orderBy("id", "desc")
      .limit(count)
      .select("id", "time", "stream", "text");
    if (since) query.andWhere("time", ">=", since);
    const rows: LogLineRecord[] = await query;
    return rows.reverse().map((r) => ({ id: String(r.id), time: new Date(r.time), stream: r.stream, text: r.text }));
  }

  /**
   * Copies an environment's stored lines to the object store (gzipped JSON lines) before the
   * environment goes; StreamLogs serves the copy afterwards. Running it twice rewrites the same copy.
   */
  async archive(environmentId: string, workspaceId: string): Promise<void> {
    const lines = await this.tail(environmentId, KEPT_LINES);
    const key = `workspaces/${workspaceId}/logs/${environmentId}.jsonl.gz`;
    const json = Readable.from(
      (function* () {
        for (const l of lines) yield `${JSON.stringify({ t: l.time.toISOString(), s: l.stream, x: l.text })}\n`;
      })(),
    );
    await this.store.put(key, json.pipe(createGzip()), "application/gzip");
    const knex = this.orm.em.getConnection().getKnex();
    await knex("environment_log_archives")
      .insert({
        environment_id: environmentId,
        workspace_id: workspaceId,
        object_key: key,
        line_count: lines.length,
        created_at: new Date(),
      })
      .onConflict("environment_id")
      .merge(["object_key", "line_count", "created_at"]);
  }

  /** The archived lines of a deleted environment (last `count`, at or after `since`), or undefined if none. */
  async archived(environmentId: string, visibleIn: string | undefined, count: number, since?: Date): Promise<LogLineRecord[] | undefined> {
    const archive = await this.orm.em.fork().findOne(LogArchive, { environmentId });
    if (!archive || (visibleIn !== undefined && archive.workspace.id !== visibleIn)) return undefined;
    const lines: LogLineRecord[] = [];
    const text = createInterface({
      input: Readable.from(await this.store.get(archive.objectKey)).pipe(createGunzip()),
      crlfDelay: Infinity,
    });
    for await (const row of text) {
      if (!row) continue;
      const l = JSON.parse(row) as { t: string; s: LogStreamName; x: string };
      const time = new Date(l.t);
      if (since && time < since) continue;
      lines.push({ time, stream: l.s, text: l.x });
      if (lines.length > count) lines.shift();
    }
    return lines;
  }

  /** Deletes the archives of a workspace that is going away. */
  async purgeArchives(workspaceId: string): Promise<void> {
    const em = this.orm.em.fork();
    for (const archive of await em.find(LogArchive, { workspace: workspaceId })) {
      await this.store.delete(archive.objectKey);
      await em.nativeDelete(LogArchive, { environmentId: archive.environmentId });
    }
  }
}
