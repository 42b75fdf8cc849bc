import { statfs } from "node:fs/promises";
import os from "node:os";
import type { HostSampleRecord } from "./readings.js";

/** CPU, memory, disk and uptime of this machine; CPU is measured between two calls. */
export class HostStats {
  private last = cpuTimes();

  constructor(private readonly diskPath: string) {}

  async sample(): Promise<HostSampleRecord> {
    const now = cpuTimes();
    const busy = now.busy - this.last.busy;
    const total = now.total - this.last.total;
    this.last = now;
    const disk = await statfs(this.diskPath).catch(() => undefined);
    return {
      cpuUtilizationPercent: total > 0 ? Math.round((busy / total) * 1000) / 10 : undefined,
      memoryTotalBytes: os.totalmem(),
      memoryUsedBytes: os.totalmem() - os.freemem(),
      diskTotalBytes: disk ? disk.blocks * disk.bsize : undefined,
      diskUsedBytes: disk ? (disk.blocks - disk.bfree) * disk.bsize : undefined,
      uptimeSeconds: Math.round(os.uptime()),
    };
  }

  /** What the host offers, for the hello. */
  async capacity(): Promise<{ cpuMillicores: number; memoryBytes: number; diskBytes: number }> {
    const disk = await statfs(this.diskPath).catch(() => undefined);
    return { cpuMillicores: os.cpus().length * 1000, memoryBytes: os.totalmem(), diskBytes: disk ? disk.blocks * disk.bsize : 0 };
  }
}

function cpuTimes(): { busy: number; total: number } {
  let busy = 0;
  let total = 0;
  for (const cpu of os.cpus()) {
    const t = cpu.times;
    busy += t.user + t.nice + t.sys + t.irq;
    total += t.user + t.nice + t.sys + t.irq + t.idle;
  }
  return { busy, total };
}
