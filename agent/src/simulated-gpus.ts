import { createHash } from "node:crypto";
import { migDeviceInventoryIndex } from "./mig.js";
import type { NvidiaSmiResult } from "./nvidia-smi.js";
import type { GpuInventoryEntry, GpuSampleRecord } from "./readings.js";

const MiB = 1024 * 1024;
const H100_MEMORY_MIB = 81559;
const H100_MEMORY_GB = 80;
/** Compute slices of an H100 (and an A100, H200): the most its MIG devices can take together. */
const H100_COMPUTE_SLICES = 7;

/** A MIG profile as `--simulate-mig` takes it: "1g.10gb", "3g.40gb", "1c.3g.40gb", "1g.10gb+me". */
const PROFILE = /^(\d+c\.)?\dg\.\d+gb(\+me)?$/;

/**
 * Framebuffer the driver reports for the H100 profiles recorded (utkuozdemir/nvidia_gpu_exporter,
 * H100 80GB HBM3, driver 590.48.01). Other profiles get <n>gb × 1000 MiB, a little under n GiB as
 * these are.
 */
const RECORDED_PROFILE_MIB: Readonly<Record<string, number>> = { "1g.10gb": 9984, "2g.20gb": 20096, "3g.40gb": 40448 };

/**
 * GPU instance ids by compute slices, in the order a simulated GPU hands them out: the ids an H100
 * gave in the recordings (3g 2, 2g 3, 1g 9 and 10; two 3g on an A100 1 and 2; seven 1g 7 to 14).
 * Sizes not here take the lowest id free.
 */
const GPU_INSTANCE_IDS: Readonly<Record<number, readonly number[]>> = {
  7: [0],
  4: [1],
  3: [2, 1],
  2: [3, 4, 5],
  1: [9, 10, 11, 12, 13, 7, 8],
};

/** Slices of one profile on each simulated GPU. */
export interface SimulatedMigSlices {
  profile: string;
  count: number;
}

function profileParts(profile: string): { computeSlices: number; memoryGb: number } {
  const m = /(\d)g\.(\d+)gb/.exec(profile)!;
  return { computeSlices: Number(m[1]), memoryGb: Number(m[2]) };
}

/**
 * Reads `--simulate-mig`: "<profile>:<count>[,<profile>:<count>...]", e.g. "1g.10gb:7" or
 * "3g.40gb:1,1g.10gb:4". Throws an Error saying what is wrong: a profile that does not look like
 * one, a count that is not a whole number from 1, or more than an H100 holds (7 compute slices,
 * 80 GB, counting the "<n>g" and "<n>gb" of every slice).
 */
export function parseSimulatedMig(text: string): SimulatedMigSlices[] {
  const slices: SimulatedMigSlices[] = [];
  for (const part of text.split(",").map((p) => p.trim())) {
    const m = /^([^:\s]+):(\d+)$/.exec(part);
    if (!m) throw new Error(`"${part}" is not <profile>:<count> (e.g. 1g.10gb:7)`);
    const [, profile, count] = m;
    if (!PROFILE.test(profile!)) throw new Error(`"${profile}" is not a MIG profile such as 1g.10gb, 3g.40gb or 1c.3g.40gb`);
    if (Number(count) < 1) throw new Error(`"${part}": the count must be 1 or more`);
    slices.push({ profile: profile!, count: Number(count) });
  }
  const compute = slices.reduce((n, s) => n + profileParts(s.profile).computeSlices * s.count, 0);
  if (compute > H100_COMPUTE_SLICES)
    throw new Error(`${compute} compute slices in all ("<n>g" × count), more than the ${H100_COMPUTE_SLICES} of a GPU`);
  const memory = slices.reduce((n, s) => n + profileParts(s.profile).memoryGb * s.count, 0);
  if (memory > H100_MEMORY_GB) throw new Error(`${memory} GB in all ("<n>gb" × count), more than the ${H100_MEMORY_GB} GB of an H100`);
  return slices;
}

/** A UUID-shaped id from a hash, the way the driver prints them after "GPU-" or "MIG-". */
function uuidFrom(text: string): string {
  const h = createHash("sha256").update(text).digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** Where each slice of `layout` sits on a GPU, in MIG device order (by GPU instance id, as nvidia-smi lists them). */
function placeSlices(layout: readonly SimulatedMigSlices[]): { profile: string; gpuInstanceId: number; memoryMiB: number }[] {
  const used = new Set<number>();
  const placed = layout.flatMap((s) =>
    Array.from({ length: s.count }, () => {
      const { computeSlices, memoryGb } = profileParts(s.profile);
      const preferred = GPU_INSTANCE_IDS[computeSlices] ?? [];
      let id = preferred.find((i) => !used.has(i));
      for (let i = 0; id === undefined; i++) if (!used.has(i)) id = i;
      used.add(id);
      return { profile: s.profile, gpuInstanceId: id, memoryMiB: RECORDED_PROFILE_MIB[s.profile] ?? memoryGb * 1000 };
    }),
  );
  return placed.sort((a, b) => a.gpuInstanceId - b.gpuInstanceId);
}

export interface SimulatedGpusOptions {
  /** Put every GPU in MIG mode with these slices (see parseSimulatedMig). @default whole GPUs */
  mig?: readonly SimulatedMigSlices[];
}

/**
 * A believable set of H100s for machines without GPUs: each GPU's load follows its own slow wave
 * with noise, and memory, power, temperature and clocks follow the load the way they do on real
 * boards. Deterministic per host name, so UUIDs stay the same across agent restarts.
 *
 * With `mig`, every GPU is in MIG mode and listed with its MIG devices after it, as NvidiaSmiCollector
 * lists real ones: the parent's sample has no utilisation (the driver has none in MIG mode), and each
 * device's sample only its memory, used and total.
 */
export class SimulatedGpus {
  private readonly inventory: GpuInventoryEntry[];
  private readonly started = Date.now();

  constructor(count: number, seed: string, options: SimulatedGpusOptions = {}) {
    const slices = options.mig ? placeSlices(options.mig) : [];
    this.inventory = Array.from({ length: count }, (_, index) => {
      const gpu: GpuInventoryEntry = {
        index,
        uuid: `GPU-${uuidFrom(`${seed}/${index}`)}`,
        model: "NVIDIA H100 80GB HBM3 (simulated)",
        memoryBytes: H100_MEMORY_MIB * MiB,
        driverVersion: "550.90.07",
        cudaVersion: "12.4",
        migEnabled: options.mig !== undefined,
      };
      const devices = slices.map(
        (s, deviceIndex): GpuInventoryEntry => ({
          index: migDeviceInventoryIndex(index, deviceIndex),
          uuid: `MIG-${uuidFrom(`${seed}/${index}/mig/${s.gpuInstanceId}/0/${s.profile}`)}`,
          model: gpu.model,
          memoryBytes: s.memoryMiB * MiB,
          driverVersion: gpu.driverVersion,
          cudaVersion: gpu.cudaVersion,
          migEnabled: false,
          parentUuid: gpu.uuid,
          migProfile: s.profile,
          migDeviceIndex: deviceIndex,
          gpuInstanceId: s.gpuInstanceId,
          computeInstanceId: 0,
        }),
      );
      return [gpu, ...devices];
    }).flat();
  }

  async collect(now = new Date()): Promise<NvidiaSmiResult> {
    const t = (now.getTime() - this.started) / 1000;
    const loadOf = (g: GpuInventoryEntry) => {
      const phase = g.index * 1.7;
      return clamp(50 + 45 * Math.sin(t / 60 + phase) + 8 * (Math.random() - 0.5), 0, 100);
    };
    const slices = this.inventory.filter((g) => g.parentUuid !== undefined);
    const sliceUsed = new Map(slices.map((s) => [s.uuid, Math.round((200 + (loadOf(s) / 100) * 0.85 * (s.memoryBytes / MiB)) * MiB)]));
    const samples: GpuSampleRecord[] = this.inventory.map((g) => {
      const used = sliceUsed.get(g.uuid);
      if (used !== undefined)
        return { gpuUuid: g.uuid, index: g.index, time: now, metrics: { memoryUsedBytes: used, memoryTotalBytes: g.memoryBytes } };
      const load = loadOf(g);
      const mine = slices.filter((s) => s.parentUuid === g.uuid);
      const memoryUsedMiB = g.migEnabled ? 60 + mine.reduce((n, s) => n + sliceUsed.get(s.uuid)! / MiB, 0) : 2000 + (load / 100) * 70000;
      return {
        gpuUuid: g.uuid,
        index: g.index,
        time: now,
        metrics: {
          // In MIG mode nvidia-smi prints N/A for the GPU's utilisation, and has none per MIG device.
          ...(g.migEnabled ? {} : { gpuUtilizationPercent: Math.round(load), memoryUtilizationPercent: Math.round(load * 0.4) }),
          memoryUsedBytes: Math.round(memoryUsedMiB * MiB),
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
