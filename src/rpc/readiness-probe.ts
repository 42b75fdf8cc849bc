import type { HealthStatus } from "./health.js";

/**
 * Readiness follows the database: while it does not answer, the server and every service report
 * NOT_SERVING, so probes take the replica out of rotation until it answers again.
 */
export class ReadinessProbe {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly health: HealthStatus,
    private readonly services: readonly string[],
    private readonly databaseAnswers: () => Promise<boolean>,
    /** @default 5000 */
    private readonly everyMs = 5000,
  ) {}

  /** Every service starts SERVING; the first probe follows after `everyMs`. */
  start(): void {
    for (const name of this.services) this.health.set(name, "SERVING");
    this.timer = setInterval(() => void this.probe(), this.everyMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async probe(): Promise<void> {
    const up = await this.databaseAnswers();
    for (const name of ["", ...this.services]) this.health.set(name, up ? "SERVING" : "NOT_SERVING");
  }
}
