import type { GpuMetrics } from "../telemetry/latest-samples.js";

// XIDs after which NVIDIA's guidance is to drain the GPU and reset or replace it: double-bit ECC
// (48), row-remapping failures (63, 64), NVLink errors (74), fallen off the bus (79), high
// single-bit ECC rate (92), contained/uncontained ECC errors (94, 95).
export const CRITICAL_XIDS: ReadonlyMap<number, string> = new Map([
  [48, "double-bit ECC error"],
  [63, "ECC page retirement or row remapping recorded"],
  [64, "ECC page retirement or row remapping failure"],
  [74, "NVLink error"],
  [79, "GPU has fallen off the bus"],
  [92, "high single-bit ECC error rate"],
  [94, "contained ECC error"],
  [95, "uncontained ECC error"],
]);

export interface HealthThresholds {
  /** Above this core temperature a GPU is taken out of scheduling. @default 90 */
  maxTemperatureCelsius: number;
}

export const DEFAULT_HEALTH_THRESHOLDS: HealthThresholds = { maxTemperatureCelsius: 90 };

/** What the previous samples of a GPU said, so that only new events raise a verdict. */
export interface HealthMemory {
  lastXid?: number;
  eccUncorrectedErrors?: number;
  overheated: boolean;
}

/**
 * Judges one sample against the GPU's previous ones. XIDs and uncorrected ECC errors are events:
 * a new critical XID or a rising error count is a fault, a value that merely persists is not (so an
 * operator's re-admission holds until something new happens). Over-temperature is a condition: it
 * counts each time the GPU crosses the threshold.
 */
export function judgeSample(
  previous: HealthMemory | undefined,
  m: GpuMetrics,
  t: HealthThresholds = DEFAULT_HEALTH_THRESHOLDS,
): { reasons: string[]; memory: HealthMemory } {
  const reasons: string[] = [];
  if (m.lastXid !== undefined && m.lastXid !== previous?.lastXid && CRITICAL_XIDS.has(m.lastXid)) {
    reasons.push(`xid ${m.lastXid}: ${CRITICAL_XIDS.get(m.lastXid)}`);
  }
  const ecc = m.eccUncorrectedErrors;
  if (ecc !== undefined && ecc > (previous?.eccUncorrectedErrors ?? 0)) reasons.push(`${ecc} uncorrected ECC error(s)`);
  const overheated = m.temperatureCelsius !== undefined && m.temperatureCelsius > t.maxTemperatureCelsius;
  if (overheated && !previous?.overheated) reasons.push(`temperature ${m.temperatureCelsius}°C above ${t.maxTemperatureCelsius}°C`);
  return {
    reasons,
    memory: {
      lastXid: m.lastXid ?? previous?.lastXid,
      eccUncorrectedErrors: ecc ?? previous?.eccUncorrectedErrors,
      overheated: m.temperatureCelsius === undefined ? (previous?.overheated ?? false) : overheated,
    },
  };
}
