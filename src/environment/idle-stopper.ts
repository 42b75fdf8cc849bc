import type { MikroORM } from "@mikro-orm/postgresql";
import { bulkSql } from "../platform/bulk-sql.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { EnvironmentManager } from "./environment-manager.js";
import type { WorkloadActivity } from "./workload-activity.js";

/** Stops RUNNING environments that asked for it (idle_timeout_minutes) once they sat idle that long. */
export class IdleStopper {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
    private readonly activity: WorkloadActivity,
    private readonly environments: EnvironmentManager,
    private readonly busyPercent: number,
    private readonly logger: Logger,
  ) {}

  /** Returns the ids of the environments it stopped. */
  async check(): Promise<string[]> {
    const now = this.clock.now().getTime();
    // Nothing idles longer than a week (the longest idle timeout): older marks are of environments long gone.
    this.activity.prune(now - 8 * 86_400_000);
    // Only what the decision needs, each environment with its GPUs, in one statement: a fleet may run
    // thousands of environments with a timeout, and this runs every second on the leader.
    const envs = await bulkSql<{ id: string; idle_minutes: number; version: number; running_since_ms: number; gpu_ids: string[] }>(
      this.orm,
      `select e.id, e.idle_timeout_minutes as idle_minutes, e.version,
              extract(epoch from coalesce(
                (select (t->>'time')::timestamptz from jsonb_array_elements(e.transitions) with ordinality as a(t, n)
                  where t->>'status' = 'RUNNING' order by n desc limit 1),
                e.updated_at))::float8 * 1000 as running_since_ms,
              coalesce((select array_agg(g.id::text) from gpus g where g.environment_id = e.id), '{}') as gpu_ids
         from environments e
        where e.status = 'RUNNING' and e.idle_timeout_minutes > 0`,
      [],
    );
    const stopped: string[] = [];
    for (const env of envs) {
      const { id, gpu_ids: gpuIds, idle_minutes: minutes } = env;
      if (now - this.activity.lastActive(id, gpuIds, new Date(env.running_since_ms)) < minutes * 60_000) continue;
      const reason = `idle for ${minutes} min (no GPU above ${this.busyPercent}% and no port traffic): stopping`;
      try {
        await this.environments.stop(id, undefined, () => undefined, reason, env.version);
        this.activity.forget(id, gpuIds);
        stopped.push(id);
      } catch (err) {
        // A user's change won the race (it stopped or deleted it): nothing to do.
        this.logger.debug({ environmentId: id, error: err instanceof Error ? err.message : String(err) }, "idle stop skipped");
      }
    }
    if (stopped.length > 0) this.logger.info({ environments: stopped }, "stopped idle environments");
    return stopped;
  }
}
