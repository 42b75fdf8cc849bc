import type { MikroORM } from "@mikro-orm/postgresql";
import { Gpu } from "../gpu/gpu.js";
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import { Environment } from "./environment.js";
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
    const em = this.orm.em.fork();
    const now = this.clock.now().getTime();
    // Nothing idles longer than a week (the longest idle timeout): older marks are of environments long gone.
    this.activity.prune(now - 8 * 86_400_000);
    const envs = await em.find(Environment, { status: "RUNNING", idleTimeoutMinutes: { $gt: 0 } });
    if (envs.length === 0) return [];
    const gpus = await em.find(Gpu, { environment: { $in: envs.map((e) => e.id) } }, { fields: ["id", "environment"] });
    const stopped: string[] = [];
    for (const env of envs) {
      const gpuIds = gpus.filter((g) => g.environment?.id === env.id).map((g) => g.id);
      const runningSince = new Date(env.transitions.findLast((t) => t.status === "RUNNING")?.time ?? env.updatedAt);
      if (now - this.activity.lastActive(env.id, gpuIds, runningSince) < env.idleTimeoutMinutes * 60_000) continue;
      const reason = `idle for ${env.idleTimeoutMinutes} min (no GPU above ${this.busyPercent}% and no port traffic): stopping`;
      try {
        await this.environments.stop(env.id, undefined, () => undefined, reason, env.version);
        this.activity.forget(env.id, gpuIds);
        stopped.push(env.id);
      } catch (err) {
        // A user's change won the race (it stopped or deleted it): nothing to do.
        this.logger.debug({ environmentId: env.id, error: err instanceof Error ? err.message : String(err) }, "idle stop skipped");
      }
    }
    if (stopped.length > 0) this.logger.info({ environments: stopped }, "stopped idle environments");
    return stopped;
  }
}
