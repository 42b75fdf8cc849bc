// Conversion between protobuf messages and domain objects. The only place that knows both.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { GpuSchema as GpuMessageSchema, GpuStatus as GpuStatusMessage, type Gpu as GpuMessage } from "../../gen/remotegpu/v1/gpu_pb.js";
import {
  HostRuntime as HostRuntimeMessage,
  HostSchema as HostMessageSchema,
  HostStatus as HostStatusMessage,
  type Host as HostMessage,
  type HostCapacity,
} from "../../gen/remotegpu/v1/host_pb.js";
import {
  GpuMetricsSchema,
  GpuSampleSchema,
  HostSampleSchema,
  type GpuMetrics as GpuMetricsMessage,
  type GpuSample as GpuSampleMessage,
  type HostSample as HostSampleMessage,
} from "../../gen/remotegpu/v1/telemetry_pb.js";
import { quotaUnits } from "../gpu/mig.js";
import { QUOTA_UNITS_PER_GPU, effectiveGpuStatus, type GpuStatus } from "../gpu/gpu.js";
import type { GpuView } from "../gpu/gpu-inventory.js";
import { hostStatusMessage, type HostRuntime, type HostStatus } from "../host/host.js";
import type { HostView } from "../host/host-registry.js";
import type { GpuMetrics, GpuSampleRecord, HostSampleRecord } from "../telemetry/latest-samples.js";
import { type Violations, toSafeNumber } from "../validation.js";

/** Two-way map between a domain string union and a protobuf enum; UNSPECIFIED maps to undefined. */
export function enumMap<D extends string, P extends number>(pairs: [D, P][]) {
  const toProto = new Map(pairs);
  const toDomain = new Map(pairs.map(([d, p]) => [p, d] as const));
  return {
    toProto: (d: D): P => toProto.get(d)!,
    /** Undefined for UNSPECIFIED; INVALID_ARGUMENT for numbers the enum does not have. */
    toDomain: (p: P, field: string, v: Violations): D | undefined => {
      if (p === 0) return undefined;
      const d = toDomain.get(p);
      if (!d) v.add(field, `unknown value ${p}`);
      return d;
    },
  };
}

export const hostStatus = enumMap<HostStatus, HostStatusMessage>([
  ["ONLINE", HostStatusMessage.ONLINE],
  ["OFFLINE", HostStatusMessage.OFFLINE],
  ["DRAINING", HostStatusMessage.DRAINING],
  ["MAINTENANCE", HostStatusMessage.MAINTENANCE],
]);

export const hostRuntime = enumMap<HostRuntime, HostRuntimeMessage>([
  ["AGENT", HostRuntimeMessage.AGENT],
  ["KUBERNETES", HostRuntimeMessage.KUBERNETES],
]);

export const gpuStatus = enumMap<GpuStatus, GpuStatusMessage>([
  ["AVAILABLE", GpuStatusMessage.AVAILABLE],
  ["ALLOCATED", GpuStatusMessage.ALLOCATED],
  ["UNHEALTHY", GpuStatusMessage.UNHEALTHY],
  ["OFFLINE", GpuStatusMessage.OFFLINE],
]);

export const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);
const big = (n: number | undefined) => (n === undefined ? undefined : BigInt(Math.round(n)));
// A reading outside what a JavaScript number holds exactly (or negative) is not a reading: dropped.
const num = (n: bigint | undefined) => (n === undefined || n < 0n || n > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(n));

// PostgreSQL's timestamptz holds years 4713 BC to 294276 AD; we accept 1970 to 9999 and refuse the rest.
const MAX_TIME_MS = Date.UTC(9999, 11, 31);

/** A protobuf Timestamp as a Date, or a violation naming the field for one no database could store. */
export function dateFromMessage(v: Violations, field: string, t: Timestamp): Date {
  const ms = Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
  if (t.nanos < 0 || t.nanos > 999_999_999 || !Number.isFinite(ms) || ms < 0 || ms > MAX_TIME_MS) {
    v.add(field, "must be a time between 1970 and 9999");
    return new Date(0);
  }
  return new Date(ms);
}

/** A protobuf Duration in milliseconds, or a violation naming the field. */
export function msFromMessage(v: Violations, field: string, d: Duration): number {
  const ms = Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
  if (d.nanos < -999_999_999 || d.nanos > 999_999_999 || !Number.isSafeInteger(ms) || ms < 0) {
    v.add(field, "must be a positive duration");
    return 0;
  }
  return ms;
}

export function capacityFromMessage(
  v: Violations,
  field: string,
  c: Pick<HostCapacity, "cpuMillicores" | "memoryBytes" | "diskBytes"> | undefined,
) {
  return {
    cpuMillicores: toSafeNumber(v, `${field}.cpu_millicores`, c?.cpuMillicores ?? 0n),
    memoryBytes: toSafeNumber(v, `${field}.memory_bytes`, c?.memoryBytes ?? 0n),
    diskBytes: toSafeNumber(v, `${field}.disk_bytes`, c?.diskBytes ?? 0n),
  };
}

export function hostToMessage(view: HostView): HostMessage {
  const h = view.host;
  return create(HostMessageSchema, {
    id: h.id,
    name: h.name,
    address: h.address,
    labels: h.labels,
    capacity: { cpuMillicores: BigInt(h.cpuMillicores), memoryBytes: BigInt(h.memoryBytes), diskBytes: BigInt(h.diskBytes) },
    agentVersion: h.agentVersion,
    status: hostStatus.toProto(h.status),
    schedulable: h.schedulable,
    lastHeartbeatTime: ts(h.lastHeartbeatAt),
    runtime: hostRuntime.toProto(h.runtime),
    kubernetesNodeName: h.kubernetesNodeName,
    gpuCount: view.gpuCount,
    // An OFFLINE host's GPUs read as OFFLINE (effectiveGpuStatus), so none of them counts as available.
    availableGpuCount: h.status === "OFFLINE" ? 0 : view.availableGpuCount,
    latestSample: view.latestSample ? hostSampleToMessage(view.latestSample) : undefined,
    statusMessage: hostStatusMessage(h),
    createTime: ts(h.createdAt),
    updateTime: ts(h.updatedAt),
    runtimeUnavailableReason: h.runtimeUnavailableReason,
  });
}

export function gpuToMessage(view: GpuView): GpuMessage {
  const g = view.gpu;
  return create(GpuMessageSchema, {
    id: g.id,
    hostId: g.host.id,
    hostName: g.host.name,
    index: g.index,
    uuid: g.uuid,
    model: g.model,
    memoryBytes: BigInt(g.memoryBytes),
    status: gpuStatus.toProto(effectiveGpuStatus(g)),
    holder: g.holder ?? "",
    environmentId: g.environment?.id ?? "",
    healthReasons: g.healthReasons,
    driverVersion: g.driverVersion,
    cudaVersion: g.cudaVersion,
    latestSample: view.latestSample ? gpuSampleToMessage(view.latestSample, g.id, g.host.id) : undefined,
    allocateTime: ts(g.allocatedAt),
    createTime: ts(g.createdAt),
    updateTime: ts(g.updatedAt),
    migEnabled: g.migEnabled,
    mig:
      g.parent && g.migPlacement
        ? {
            parentId: g.parent.id,
            profile: g.migProfile,
            ...g.migPlacement,
            weight: quotaUnits(g.model) / QUOTA_UNITS_PER_GPU,
          }
        : undefined,
  });
}

export function hostSampleToMessage(s: HostSampleRecord): HostSampleMessage {
  return create(HostSampleSchema, {
    cpuUtilizationPercent: s.cpuUtilizationPercent,
    memoryUsedBytes: big(s.memoryUsedBytes),
    memoryTotalBytes: big(s.memoryTotalBytes),
    diskUsedBytes: big(s.diskUsedBytes),
    diskTotalBytes: big(s.diskTotalBytes),
    uptimeSeconds: big(s.uptimeSeconds),
  });
}

export function hostSampleFromMessage(m: HostSampleMessage): HostSampleRecord {
  return {
    cpuUtilizationPercent: m.cpuUtilizationPercent,
    memoryUsedBytes: num(m.memoryUsedBytes),
    memoryTotalBytes: num(m.memoryTotalBytes),
    diskUsedBytes: num(m.diskUsedBytes),
    diskTotalBytes: num(m.diskTotalBytes),
    uptimeSeconds: num(m.uptimeSeconds),
  };
}

export function gpuMetricsToMessage(m: GpuMetrics): GpuMetricsMessage {
  return create(GpuMetricsSchema, {
    ...m,
    memoryUsedBytes: big(m.memoryUsedBytes),
    memoryTotalBytes: big(m.memoryTotalBytes),
    eccCorrectedErrors: big(m.eccCorrectedErrors),
    eccUncorrectedErrors: big(m.eccUncorrectedErrors),
    pcieRxBytesPerSecond: big(m.pcieRxBytesPerSecond),
    pcieTxBytesPerSecond: big(m.pcieTxBytesPerSecond),
  });
}

export function gpuMetricsFromMessage(m: GpuMetricsMessage | undefined): GpuMetrics {
  if (!m) return {};
  return {
    gpuUtilizationPercent: m.gpuUtilizationPercent,
    memoryUtilizationPercent: m.memoryUtilizationPercent,
    memoryUsedBytes: num(m.memoryUsedBytes),
    memoryTotalBytes: num(m.memoryTotalBytes),
    temperatureCelsius: m.temperatureCelsius,
    powerDrawWatts: m.powerDrawWatts,
    powerLimitWatts: m.powerLimitWatts,
    smClockMhz: m.smClockMhz,
    fanSpeedPercent: m.fanSpeedPercent,
    eccCorrectedErrors: num(m.eccCorrectedErrors),
    eccUncorrectedErrors: num(m.eccUncorrectedErrors),
    lastXid: m.lastXid,
    pcieRxBytesPerSecond: num(m.pcieRxBytesPerSecond),
    pcieTxBytesPerSecond: num(m.pcieTxBytesPerSecond),
  };
}

export function gpuSampleToMessage(s: GpuSampleRecord, gpuId: string, hostId: string): GpuSampleMessage {
  return create(GpuSampleSchema, {
    gpuId,
    gpuUuid: s.gpuUuid,
    index: s.index,
    hostId,
    sampleTime: timestampFromDate(s.time),
    metrics: gpuMetricsToMessage(s.metrics),
  });
}
