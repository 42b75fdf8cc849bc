import { createHash } from "node:crypto";
import type { NvidiaSmiResult } from "./nvidia-smi.js";
import type { GpuInventoryEntry, GpuSampleRecord } from "./readings.js";

const MiB = 1024 * 1024;
const H100_MEMORY_MIB = 81559;

/**
 * A believable set of H100s for machines without GPUs: each GPU's load follows its own slow wave
 * with noise, and memory, power, temperature and clocks follow the load the way they do on real
 * boards. Deterministic per host name, so UUIDs stay the same across agent restarts.
 */
export class SimulatedGpus {
  private readonly inventory: GpuInventoryEntry[];
  private readonly started = Date.now();

  constructor(count: number, seed: string) {
    this.inventory = Array.from({ length: count }, (_, index) => {
      const h = createHash("sha256").update(`${seed}/${index}`).digest("hex");
      return {
        index,
        uuid: `GPU-${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`,
        model: "NVIDIA H100 80GB HBM3 (simulated)",
        memoryBytes: H100_MEMORY_MIB * MiB,
        driverVersion: "550.90.07",
        cudaVersion: "12.4",
        migEnabled: false,
      };
    });
  }

  async collect(now = new Date()): Promise<NvidiaSmiResult> {
    const t = (now.getTime() - this.started) / 1000;
    const samples: GpuSampleRecord[] = this.inventory.map((g) => {
      const phase = g.index * 1.7;
      const load = clamp(50 + 45 * Math.sin(t / 60 + phase) + 8 * (Math.random() - 0.5), 0, 100);
      return {
        gpuUuid: g.uuid,
        index: g.index,
        time: now,
        metrics: {
          gpuUtilizationPercent: Math.round(load),
          memoryUtilizationPercent: Math.round(load * 0.4),
          memoryUsedBytes: Math.round((2000 + (load / 100) * 70000) * MiB),
          memoryTotalBytes: g.memoryBytes,
          temperatureCelsius: Math.round(32 + load * 0.35),
          powerDrawWatts: Math.round((70 + load * 6.2) * 100) / 100,
          powerLimitWatts: 700,
          smClockMhz: load > 5 ? 1980 : 345,
          eccCorrectedErrors: 0,
          eccUncorrectedErrors: 0,
        },
      };
    });
    return { inventory: this.inventory, samples, warnings: [] };
  }
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}
