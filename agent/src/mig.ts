/**
 * MIG devices ("slices") of the GPUs in MIG mode, read from what nvidia-smi prints, since
 * `--query-gpu` lists only the whole GPUs:
 * - `nvidia-smi -L` names each MIG device under its GPU with its profile and UUID
 *   ("  MIG 1g.10gb     Device  0: (UUID: MIG-…)"; R450/R460 drivers print "MIG-GPU-<uuid>/<gi>/<ci>");
 * - `nvidia-smi -q` gives, per GPU, "MIG Device" blocks with the device's index, GPU and compute
 *   instance ids and framebuffer memory, but no UUID and no profile. `-q -x` holds the same in
 *   <mig_devices>.
 * The two are joined on (parent GPU UUID, MIG device index). Per MIG device the driver reports
 * memory only: utilisation, power, temperature and clocks stay absent, never copied from the parent.
 */
import type { GpuInventoryEntry, GpuMetrics, GpuSampleRecord } from "./readings.js";

const MiB = 1048576;

/** One MIG device as `nvidia-smi -L` names it. */
export interface ListedMigDevice {
  /** The device's index among its GPU's MIG devices ("Device  0"). */
  deviceIndex: number;
  /** e.g. "3g.40gb", "1c.3g.71gb". */
  profile: string;
  /** "MIG-<uuid>", or "MIG-GPU-<gpu uuid>/<gi>/<ci>" from R450/R460 drivers. */
  uuid: string;
}

/** One GPU of `nvidia-smi -L`, with the MIG devices listed under it. */
export interface ListedGpu {
  index: number;
  name: string;
  uuid: string;
  migDevices: ListedMigDevice[];
}

export interface MigListing {
  gpus: ListedGpu[];
  warnings: string[];
}

/** One "MIG Device" block of `nvidia-smi -q` (or <mig_device> of `-q -x`). */
export interface QueriedMigDevice {
  deviceIndex: number;
  gpuInstanceId: number;
  computeInstanceId: number;
  /** Its framebuffer ("Shared FB Memory Usage", before R5xx "FB Memory Usage"): absent when not shown. */
  memoryTotalBytes?: number;
  memoryUsedBytes?: number;
}

/** One GPU section of `nvidia-smi -q`, as far as MIG goes. */
export interface QueriedGpu {
  /** From the section's header line "GPU 00000000:00:09.0". */
  busId: string;
  uuid?: string;
  minorNumber?: number;
  /** "MIG Mode / Current": true for Enabled, false for Disabled, absent otherwise. */
  migEnabled?: boolean;
  migDevices: QueriedMigDevice[];
}

export interface MigQuery {
  gpus: QueriedGpu[];
  warnings: string[];
}

/**
 * The inventory index of a MIG device: 1000 × (the parent's index + 1) + its MIG device index, so
 * that indexes stay unique per host next to the whole GPUs' 0, 1, 2…
 */
export function migDeviceInventoryIndex(parentIndex: number, deviceIndex: number): number {
  return 1000 * (parentIndex + 1) + deviceIndex;
}

const LISTED_GPU = /^GPU (\d+): (.*?) \(UUID: ([^)\s]+)\)\s*$/;
const LISTED_MIG = /^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)\s]+)\)\s*$/;

/**
 * Parses `nvidia-smi -L`. Lines it does not know become warnings; a MIG line before any GPU line is
 * skipped. Throws when no line names a GPU: that is not -L output ("No devices were found", an error).
 */
export function parseMigListing(text: string): MigListing {
  const gpus: ListedGpu[] = [];
  const warnings: string[] = [];
  text
    .replace(/^\uFEFF/, "")
    .split("\n")
    .forEach((raw, i) => {
      const line = raw.replace(/\r$/, "");
      if (line.trim() === "") return;
      const gpu = LISTED_GPU.exec(line);
      if (gpu) {
        gpus.push({ index: Number(gpu[1]), name: gpu[2]!, uuid: gpu[3]!, migDevices: [] });
        return;
      }
      const mig = LISTED_MIG.exec(line);
      const parent = gpus[gpus.length - 1];
      if (mig && parent) parent.migDevices.push({ deviceIndex: Number(mig[2]), profile: mig[1]!, uuid: mig[3]! });
      else if (mig) warnings.push(`nvidia-smi -L line ${i + 1}: MIG device before any GPU, skipped`);
      else warnings.push(`nvidia-smi -L line ${i + 1}: not understood: ${JSON.stringify(line.slice(0, 200))}`);
    });
  if (gpus.length === 0) throw new Error(`not nvidia-smi -L output: ${JSON.stringify(text.trim().slice(0, 200))}`);
  return { gpus, warnings };
}

/** "40448 MiB" in bytes; undefined for N/A or anything else. */
function mebibytes(value: string | undefined): number | undefined {
  const m = value === undefined ? null : /^(\d+)\s*MiB$/.exec(value.trim());
  return m ? Number(m[1]) * MiB : undefined;
}

function wholeNumber(value: string | undefined): number | undefined {
  return value !== undefined && /^\d+$/.test(value.trim()) ? Number(value.trim()) : undefined;
}

/** A MIG device block's values, checked: one without an index or instance ids is no device. */
function migDevice(values: Map<string, string>, where: string, warnings: string[]): QueriedMigDevice | undefined {
  const deviceIndex = wholeNumber(values.get("Index"));
  const gpuInstanceId = wholeNumber(values.get("GPU Instance ID"));
  const computeInstanceId = wholeNumber(values.get("Compute Instance ID"));
  if (deviceIndex === undefined || gpuInstanceId === undefined || computeInstanceId === undefined) {
    warnings.push(`${where}: MIG device without a readable index, GPU instance or compute instance id, skipped`);
    return undefined;
  }
  const device: QueriedMigDevice = { deviceIndex, gpuInstanceId, computeInstanceId };
  const total = mebibytes(values.get("FB Total"));
  const used = mebibytes(values.get("FB Used"));
  if (total !== undefined) device.memoryTotalBytes = total;
  if (used !== undefined) device.memoryUsedBytes = used;
  return device;
}

const SECTION = /^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$/;
const FB_HEADING = /^(?:Shared )?FB Memory Usage$/;

/**
 * Parses the GPU sections of `nvidia-smi -q` (text) for MIG: each section's UUID, minor number,
 * MIG mode and MIG Device blocks. Indentation gives the nesting, so the parent's own "FB Memory
 * Usage" is never taken for a device's. Throws when there is no "GPU <bus id>" section at all.
 */
export function parseMigQuery(text: string): MigQuery {
  const gpus: QueriedGpu[] = [];
  const warnings: string[] = [];
  let gpu: QueriedGpu | undefined;
  /** Headings above the current line, with their indentation. */
  let stack: { indent: number; name: string }[] = [];
  /** The MIG Device block being read: its indentation, values and first line. */
  let device: { indent: number; values: Map<string, string>; line: number } | undefined;
  const closeDevice = () => {
    if (gpu && device) {
      const d = migDevice(device.values, `nvidia-smi -q line ${device.line}`, warnings);
      if (d) gpu.migDevices.push(d);
    }
    device = undefined;
  };

  const lines = text.replace(/^\uFEFF/, "").split("\n");
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, "");
    if (line.trim() === "") return;
    const section = SECTION.exec(line);
    if (section) {
      closeDevice();
      gpu = { busId: section[1]!, migDevices: [] };
      gpus.push(gpu);
      stack = [];
      return;
    }
    if (!gpu) return; // the log's head: timestamp, driver version, attached GPUs
    const indent = line.length - line.trimStart().length;
    if (device && indent <= device.indent) closeDevice();
    while (stack.length > 0 && stack[stack.length - 1]!.indent >= indent) stack.pop();
    const colon = line.indexOf(":");
    const name = (colon < 0 ? line : line.slice(0, colon)).trim();
    if (colon < 0) {
      stack.push({ indent, name });
      if (name === "MIG Device") device = { indent, values: new Map(), line: i + 1 };
      return;
    }
    const value = line.slice(colon + 1).trim();
    const path = stack.map((s) => s.name);
    if (device) {
      const inDevice = path.slice(path.lastIndexOf("MIG Device") + 1);
      if (inDevice.length === 0) device.values.set(name, value);
      else if (inDevice.length === 1 && FB_HEADING.test(inDevice[0]!)) device.values.set(`FB ${name}`, value);
      return;
    }
    if (path.length === 0 && name === "GPU UUID") gpu.uuid = value;
    else if (path.length === 0 && name === "Minor Number") {
      const minor = wholeNumber(value);
      if (minor !== undefined) gpu.minorNumber = minor;
    } else if (path.length === 1 && path[0] === "MIG Mode" && name === "Current") {
      if (/^enabled$/i.test(value)) gpu.migEnabled = true;
      else if (/^disabled$/i.test(value)) gpu.migEnabled = false;
    }
  });
  closeDevice();
  if (gpus.length === 0) throw new Error(`not nvidia-smi -q output: ${JSON.stringify(text.trim().slice(0, 200))}`);
  return { gpus, warnings };
}

/** The text of the first `<tag>` in `xml`, entities left as they are (the values read are numbers and ids). */
function element(xml: string, tag: string): string | undefined {
  return new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml)?.[1]?.trim();
}

/**
 * Parses `nvidia-smi -q -x` for the same as parseMigQuery: a small reader of the <gpu>, <uuid>,
 * <minor_number>, <mig_mode> and <mig_devices> elements, enough for the log nvidia-smi writes (no
 * attributes but <gpu id>, no CDATA). Throws when it is not an nvidia_smi_log.
 */
export function parseMigQueryXml(xml: string): MigQuery {
  if (!/<nvidia_smi_log>/.test(xml)) throw new Error(`not nvidia-smi -q -x output: ${JSON.stringify(xml.trim().slice(0, 200))}`);
  const gpus: QueriedGpu[] = [];
  const warnings: string[] = [];
  for (const section of xml.matchAll(/<gpu id="([^"]*)">([\s\S]*?)<\/gpu>/g)) {
    const body = section[2]!;
    const own = body.replace(/<mig_devices>[\s\S]*?<\/mig_devices>/g, "");
    const gpu: QueriedGpu = { busId: section[1]!, migDevices: [] };
    const uuid = element(own, "uuid");
    if (uuid) gpu.uuid = uuid;
    const minor = wholeNumber(element(own, "minor_number"));
    if (minor !== undefined) gpu.minorNumber = minor;
    const mode = element(own, "current_mig");
    if (mode && /^enabled$/i.test(mode)) gpu.migEnabled = true;
    else if (mode && /^disabled$/i.test(mode)) gpu.migEnabled = false;
    for (const block of body.matchAll(/<mig_device>([\s\S]*?)<\/mig_device>/g)) {
      const fb = /<fb_memory_usage>([\s\S]*?)<\/fb_memory_usage>/.exec(block[1]!)?.[1] ?? "";
      const values = new Map<string, string>();
      const set = (key: string, value: string | undefined) => value !== undefined && values.set(key, value);
      set("Index", element(block[1]!, "index"));
      set("GPU Instance ID", element(block[1]!, "gpu_instance_id"));
      set("Compute Instance ID", element(block[1]!, "compute_instance_id"));
      set("FB Total", element(fb, "total"));
      set("FB Used", element(fb, "used"));
      const d = migDevice(values, `nvidia-smi -q -x GPU ${gpu.busId}`, warnings);
      if (d) gpu.migDevices.push(d);
    }
    gpus.push(gpu);
  }
  return { gpus, warnings };
}

/** GPUs and their samples, as a collector returns them. */
export interface GpuReading {
  inventory: GpuInventoryEntry[];
  samples: GpuSampleRecord[];
}

/**
 * `reading` with each GPU in MIG mode followed by its MIG devices, in inventory and samples: a
 * device is listed by -L (UUID, profile) and found in -q (instance ids, memory) under the same
 * parent UUID and device index. Its model, driver and CUDA versions are its parent's; its sample
 * holds the memory -q shows and nothing else. A GPU in MIG mode without devices gets none. A device
 * only one of the two knows (a re-partition between the two calls) is left out with a warning, and
 * shows at the next reading. `reading` is not changed.
 */
export function withMigDevices(reading: GpuReading, listing: MigListing, query: MigQuery): GpuReading & { warnings: string[] } {
  const warnings: string[] = [];
  const listed = new Map(listing.gpus.map((g) => [g.uuid, g]));
  const queried = new Map(query.gpus.flatMap((g) => (g.uuid ? [[g.uuid, g] as const] : [])));
  const inventory: GpuInventoryEntry[] = [];
  const samples: GpuSampleRecord[] = [];
  const sampled = new Set<GpuSampleRecord>();
  for (const gpu of reading.inventory) {
    inventory.push(gpu);
    const own = reading.samples.filter((s) => s.gpuUuid === gpu.uuid);
    for (const s of own) sampled.add(s);
    samples.push(...own);
    if (!gpu.migEnabled) continue;
    const name = `GPU ${gpu.index} (${gpu.uuid})`;
    const l = listed.get(gpu.uuid);
    const q = queried.get(gpu.uuid);
    if (!l) {
      warnings.push(`${name} is in MIG mode but nvidia-smi -L does not list it: its MIG devices are left out`);
      continue;
    }
    if (!q) {
      if (l.migDevices.length > 0) warnings.push(`${name} is in MIG mode but nvidia-smi -q does not show it: its MIG devices are left out`);
      continue;
    }
    for (const d of l.migDevices) {
      const found = q.migDevices.find((m) => m.deviceIndex === d.deviceIndex);
      if (!found) {
        warnings.push(`${name}: MIG device ${d.deviceIndex} (${d.uuid}) is listed by nvidia-smi -L but not shown by -q: left out`);
        continue;
      }
      const index = migDeviceInventoryIndex(gpu.index, d.deviceIndex);
      if (found.memoryTotalBytes === undefined) warnings.push(`${name}: MIG device ${d.deviceIndex} (${d.uuid}) shows no memory total`);
      inventory.push({
        index,
        uuid: d.uuid,
        model: gpu.model,
        memoryBytes: found.memoryTotalBytes ?? 0,
        driverVersion: gpu.driverVersion,
        cudaVersion: gpu.cudaVersion,
        migEnabled: false,
        parentUuid: gpu.uuid,
        migProfile: d.profile,
        migDeviceIndex: d.deviceIndex,
        gpuInstanceId: found.gpuInstanceId,
        computeInstanceId: found.computeInstanceId,
      });
      const time = own[0]?.time;
      if (!time) continue;
      const metrics: GpuMetrics = {};
      if (found.memoryUsedBytes !== undefined) metrics.memoryUsedBytes = found.memoryUsedBytes;
      if (found.memoryTotalBytes !== undefined) metrics.memoryTotalBytes = found.memoryTotalBytes;
      samples.push({ gpuUuid: d.uuid, index, time, metrics });
    }
    const unlisted = q.migDevices.filter((m) => !l.migDevices.some((d) => d.deviceIndex === m.deviceIndex));
    for (const m of unlisted)
      warnings.push(`${name}: MIG device ${m.deviceIndex} is shown by nvidia-smi -q but not listed by -L: left out`);
  }
  samples.push(...reading.samples.filter((s) => !sampled.has(s)));
  return { inventory, samples, warnings: [...listing.warnings, ...query.warnings, ...warnings] };
}
