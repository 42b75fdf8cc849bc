import pg from "pg";
import type { Logger } from "./logger.js";

/**
 * Leader election on a PostgreSQL session advisory lock: whoever holds it leads until its connection
 * ends, so a replica that dies (even by SIGKILL) hands leadership over as soon as PostgreSQL notices.
 * The lock lives on its own connection, outside the pool.
 */
export class LeaderLock {
  private client?: pg.Client;
  private leading = false;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly key: number,
    private readonly logger: Logger,
  ) {}

  /** Whether this replica led at the last check (no query). */
  get leads(): boolean {
    return this.leading;
  }

  /** Whether this replica leads now; tries to become leader when it does not. */
  async check(): Promise<boolean> {
    if (this.closed) return false;
    try {
      if (!this.client) {
        const client = new pg.Client({ connectionString: this.url });
        client.on("error", () => this.drop());
        client.on("end", () => this.drop());
        await client.connect();
        this.client = client;
      }
      if (!this.leading) {
        const { rows } = await this.client.query<{ ok: boolean }>("select pg_try_advisory_lock($1) as ok", [this.key]);
        this.leading = rows[0]?.ok === true;
        if (this.leading) this.logger.info({ key: this.key }, "this replica now leads background reconciliation");
      }
      return this.leading;
    } catch (err) {
      this.logger.warn({ error: err instanceof Error ? err.message : String(err) }, "leader lock unavailable");
      this.drop();
      return false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const client = this.client;
    this.client = undefined;
    this.leading = false;
    await client?.end().catch(() => undefined);
  }

  private drop(): void {
    if (this.leading && !this.closed) this.logger.warn("this replica lost the leader lock");
    this.leading = false;
    const client = this.client;
    this.client = undefined;
    client?.end().catch(() => undefined);
  }
}
