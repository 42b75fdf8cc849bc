import type { Clock } from "../platform/clock.js";

/**
 * When environments were last busy, for idle auto-stop: GPU utilisation at or above a threshold
 * (from telemetry) or traffic on their ports (from the agents). Kept in memory: after a restart
 * everything counts as busy from the start, so nothing is stopped for lack of data.
 */
export class WorkloadActivity {
  private readonly gpuBusy = new Map<string, number>();
  private readonly traffic = new Map<string, number>();
  private readonly since: number;

  constructor(
    clock: Clock,
    private readonly busyPercent: number,
  ) {
    this.since = clock.now().getTime();
  }

  gpuSample(gpuId: string | undefined, utilizationPercent: number | undefined, time: Date): void {
    if (!gpuId || utilizationPercent === undefined || utilizationPercent < this.busyPercent) return;
    this.gpuBusy.set(gpuId, Math.max(this.gpuBusy.get(gpuId) ?? 0, time.getTime()));
  }

  portTraffic(environmentId: string, time: Date): void {
    this.traffic.set(environmentId, Math.max(this.traffic.get(environmentId) ?? 0, time.getTime()));
  }

  /** The last time the environment was busy, never earlier than `runningSince` or this replica's start. */
  lastActive(environmentId: string, gpuIds: string[], runningSince: Date): number {
    let last = Math.max(this.since, runningSince.getTime(), this.traffic.get(environmentId) ?? 0);
    for (const id of gpuIds) last = Math.max(last, this.gpuBusy.get(id) ?? 0);
    return last;
  }

  /** Drops marks older than `before` (ms), so memory follows what is current. */
  prune(before: number): void {
    for (const map of [this.gpuBusy, this.traffic]) for (const [key, at] of map) if (at < before) map.delete(key);
  }

  forget(environmentId: string, gpuIds: string[]): void {
    this.traffic.delete(environmentId);
    for (const id of gpuIds) this.gpuBusy.delete(id);
  }
}
