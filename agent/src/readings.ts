// What the agent reads of its host and GPUs, shaped after the protocol's messages so that no field
// list is written twice: the same fields, with int64 values held as plain numbers until they are sent.
import { ScalarType, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import type { GpuInventoryItem, GpuMetrics as GpuMetricsMessage, HostSample } from "@remotegpu/sdk";

type NumberFor<T> = T extends bigint ? number : T;
/** A message's fields (optional ones stay optional), with int64 values as numbers. */
type Plain<M> = { [K in keyof Omit<M, "$typeName" | "$unknown">]: NumberFor<M[K]> };

/** Numeric GPU measurements; absent fields were not read. Meanings follow nvidia-smi --query-gpu. */
export type GpuMetrics = Plain<GpuMetricsMessage>;
/** CPU, memory, disk and uptime of the host. */
export type HostSampleRecord = Plain<HostSample>;
/** The fields only a MIG device sets; a whole GPU leaves them out (sent as the protocol's defaults). */
type MigDeviceFields = "parentUuid" | "migProfile" | "migDeviceIndex" | "gpuInstanceId" | "computeInstanceId";
/**
 * One GPU as the agent reports it in its hello: a whole GPU, or a MIG device of one in MIG mode
 * (then `parentUuid` and the other MIG fields are set, and it follows its parent in the list).
 */
export type GpuInventoryEntry = Omit<Plain<GpuInventoryItem>, MigDeviceFields> & Partial<Pick<Plain<GpuInventoryItem>, MigDeviceFields>>;

/**
 * One GPU's measurements. For a MIG device: its MIG UUID and inventory index, and only the memory
 * figures the driver reports per device (utilisation, power, temperature stay absent).
 */
export interface GpuSampleRecord {
  gpuUuid: string;
  index: number;
  time: Date;
  metrics: GpuMetrics;
}

const INT64 = new Set([ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64, ScalarType.FIXED64, ScalarType.SFIXED64]);

/** `record` as the init of a `schema` message: its 64-bit integer fields become (rounded) bigints. */
export function toMessageInit<Desc extends DescMessage>(schema: Desc, record: object): MessageInitShape<Desc> {
  const values = record as Record<string, unknown>;
  const init: Record<string, unknown> = {};
  for (const field of schema.fields) {
    const value = values[field.localName];
    if (value === undefined) continue;
    const int64 = field.fieldKind === "scalar" && INT64.has(field.scalar) && typeof value === "number";
    init[field.localName] = int64 ? BigInt(Math.round(value)) : value;
  }
  return init as MessageInitShape<Desc>;
}
