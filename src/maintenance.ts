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
  leader: Pick<LeaderLock, "check" | "leads">;
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
 * reconciler and the idle stopper, and deletes (or rolls up) what is past its retention. Runs every
 * second on its own once started; tests call round() directly with a manual clock instead of sleeping.
 */
export class Maintenance {
  private loop?: NodeJS.Timeout;
  private running?: Promise<void>;
  /** The retention work under way: it may take minutes (a day of telemetry to roll up), beside the rounds. */
  private retaining?: Promise<void>;
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

  /** One round of the per-second work, then the retention work if it is due. */
  async round(): Promise<void> {
    await this.frequent();
    await this.retainIfDue();
  }

  private async frequent(): Promise<void> {
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
  }

  private async retainIfDue(): Promise<void> {
    if (this.clock.now().getTime() - this.retentionAt < this.retentionEveryMs) return;
    this.retentionAt = this.clock.now().getTime();
    await this.expireOld();
  }

  /**
   * Runs the per-second work and, beside it, the retention work when due: heartbeats are written and
   * leases expired every second however long a rollup takes. Neither ever runs twice at once.
   */
  start(): void {
    const failed = (err: unknown) => this.logger.error({ err }, "background maintenance failed");
    this.loop = setInterval(() => {
      this.running ??= this.frequent()
        .catch(failed)
        .finally(() => (this.running = undefined));
      this.retaining ??= this.retainIfDue()
        .catch(failed)
        .finally(() => (this.retaining = undefined));
    }, this.everyMs);
    this.loop.unref();
  }

  /** Stops the loop and waits for the work under way. */
  async stop(): Promise<void> {
    clearInterval(this.loop);
    await Promise.all([this.running, this.retaining]);
  }

  private async expireOld(): Promise<void> {
    const removed = await this.parts.history.expire();
    if (removed > 0) this.logger.info({ rows: removed }, "expired old telemetry history");
    // As the last round found it: the rounds check every second, beside this.
    if (this.parts.leader.leads) {
      const { merged, written } = await this.parts.history.compact();
      if (merged > 0) this.logger.info({ rows: merged, into: written }, "rolled up old telemetry history");
    }
    const events = await this.parts.audit.expire();
    if (events > 0) this.logger.info({ rows: events }, "expired old audit events");
  }
}
