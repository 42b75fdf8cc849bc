import type { AuditTrail } from "./audit/audit-trail.js";
import type { EnvironmentReconciler } from "./environment/environment-reconciler.js";
import type { IdleStopper } from "./environment/idle-stopper.js";
import type { HostLiveness } from "./host/host-liveness.js";
import type { HostRegistry } from "./host/host-registry.js";
import type { Clock } from "./platform/clock.js";
import type { LeaderLock } from "./platform/leader-lock.js";
import type { Logger } from "./platform/logger.js";
import type { HeartbeatIngest } from "./telemetry/heartbeat-ingest.js";
import type { TelemetryHistory } from "./telemetry/telemetry-history.js";

/** What a round of maintenance drives. */
export interface MaintenanceParts {
  ingest: Pick<HeartbeatIngest, "flush">;
  /** Only the leader expires leases and stops idle environments; every replica reconciles what it is told of. */
  leader: Pick<LeaderLock, "check">;
  liveness: Pick<HostLiveness, "expireLeases">;
  hosts: Pick<HostRegistry, "announce">;
  reconciler: Pick<EnvironmentReconciler, "kick" | "idle">;
  idle: Pick<IdleStopper, "check">;
  history: Pick<TelemetryHistory, "expire" | "compact">;
  audit: Pick<AuditTrail, "expire">;
}

export interface MaintenanceOptions {
  /** @default 1000 */
  everyMs?: number;
  /** How often old telemetry history and audit events are deleted (and the leader rolls up history). @default one hour */
  retentionEveryMs?: number;
}

/**
 * The background work of a replica: writes buffered heartbeats, expires host leases, runs the
 * reconciler and the idle stopper, and deletes what is past its retention. Runs every second on its
 * own once started; tests call round() directly with a manual clock instead of sleeping.
 */
export class Maintenance {
  private loop?: NodeJS.Timeout;
  private running?: Promise<void>;
  private retentionAt = 0;
  private readonly everyMs: number;
  private readonly retentionEveryMs: number;

  constructor(
    private readonly parts: MaintenanceParts,
    private readonly clock: Clock,
    private readonly logger: Logger,
    options: MaintenanceOptions = {},
  ) {
    this.everyMs = options.everyMs ?? 1000;
    this.retentionEveryMs = options.retentionEveryMs ?? 3_600_000;
  }

  async round(): Promise<void> {
    const { ingest, leader, liveness, hosts, reconciler, idle } = this.parts;
    await ingest.flush();
    // The leader alone expires leases; the other replicas' watchers hear of it through Redis.
    const expired = (await leader.check()) ? await liveness.expireLeases() : [];
    if (expired.length > 0) {
      this.logger.warn({ hosts: expired }, "hosts went OFFLINE: lease expired");
      hosts.announce(expired);
    }
    reconciler.kick();
    await reconciler.idle();
    if (await leader.check()) await idle.check();
    if (this.clock.now().getTime() - this.retentionAt >= this.retentionEveryMs) {
      this.retentionAt = this.clock.now().getTime();
      await this.expireOld();
    }
  }

  start(): void {
    this.loop = setInterval(() => {
      if (this.running) return; // the previous round is still writing: never two at once
      this.running = this.round()
        .catch((err: unknown) => this.logger.error({ err }, "background maintenance failed"))
        .finally(() => (this.running = undefined));
    }, this.everyMs);
    this.loop.unref();
  }

  /** Stops the loop and waits for a round under way. */
  async stop(): Promise<void> {
    clearInterval(this.loop);
    await this.running;
  }

  private async expireOld(): Promise<void> {
    const removed = await this.parts.history.expire();
    if (removed > 0) this.logger.info({ rows: removed }, "expired old telemetry history");
    if (await this.parts.leader.check()) {
      const { merged, written } = await this.parts.history.compact();
      if (merged > 0) this.logger.info({ rows: merged, into: written }, "rolled up old telemetry history");
    }
    const events = await this.parts.audit.expire();
    if (events > 0) this.logger.info({ rows: events }, "expired old audit events");
  }
}
