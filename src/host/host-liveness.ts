import type { MikroORM } from "@mikro-orm/postgresql";
import type { Clock } from "../platform/clock.js";

/**
 * Declares hosts OFFLINE when their lease (the grace period after the last heartbeat) ran out. Their
 * GPUs read as OFFLINE through the host; nothing they hold is released, so a short partition costs
 * the user nothing. A heartbeat brings the host back without operator action. Hosts registered from
 * a Kubernetes Node have no agent to send heartbeats: their Node decides (see NodeHosts), not this.
 */
export class HostLiveness {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly graceMs: number,
  ) {}

  /** Returns the ids of the hosts that just went OFFLINE. */
  async expireLeases(): Promise<string[]> {
    const now = this.clock.now();
    const cutoff = new Date(now.getTime() - this.graceMs);
    const rows: { id: string }[] = await this.orm.em.getConnection().execute(
      `update hosts set status = 'OFFLINE', updated_at = ?,
         status_message = 'no heartbeat for more than ' || ? || 's'
       where status = 'ONLINE' and node_state is null and (last_heartbeat_at is null or last_heartbeat_at < ?)
       returning id`,
      [now, Math.round(this.graceMs / 1000), cutoff],
    );
    return rows.map((r) => r.id);
  }
}
