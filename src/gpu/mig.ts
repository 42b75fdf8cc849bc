import { QUOTA_UNITS_PER_GPU } from "./gpu.js";

/**
 * MIG profiles as the driver names them: compute slices and memory ("1g.10gb", "3g.40gb"), with an
 * optional compute-instance prefix ("1c.3g.40gb": one of a 3g GPU instance's compute slices) and
 * suffixes for what else the instance has or lacks ("1g.10gb+me", media engines).
 */
export const MIG_PROFILE = /^(?:(\d)c\.)?(\d)g\.(\d{1,4})gb(?:[+-][a-z]{1,8}){0,3}$/;

/** The model a MIG slice is stored and asked for under: the parent's product name and the profile. */
export function sliceModel(parentModel: string, profile: string): string {
  return `${parentModel} MIG ${profile}`;
}

/** The compute slices a profile takes: its "Nc" where it has one, else its "Ng". */
export function profileComputeSlices(profile: string): number {
  const m = MIG_PROFILE.exec(profile);
  if (!m) throw new Error(`not a MIG profile: ${profile}`);
  return Number(m[1] ?? m[2]);
}

/** Compute slices of a whole GPU: 4 on an A30, 7 on the A100, H100, H200 and the later parts. */
export function gpuComputeSlices(parentModel: string): number {
  return /\bA30\b/.test(parentModel) ? 4 : 7;
}

/**
 * What a slice counts for against max_gpus, in QUOTA_UNITS_PER_GPU-ths of a GPU: its compute slices
 * over its parent's (a 1g.10gb of an H100: 60 of 420, one seventh), at most a whole GPU.
 */
export function sliceQuotaUnits(parentModel: string, profile: string): number {
  const share = profileComputeSlices(profile) / gpuComputeSlices(parentModel);
  return Math.round(QUOTA_UNITS_PER_GPU * Math.min(1, share));
}

/** The parent model and profile of a MIG slice's model; undefined for a whole GPU's. */
export function parseSliceModel(model: string): { parentModel: string; profile: string } | undefined {
  const at = model.lastIndexOf(" MIG ");
  if (at < 0) return undefined; // a parent of no known product still makes " MIG <profile>"
  const profile = model.slice(at + 5);
  return MIG_PROFILE.test(profile) ? { parentModel: model.slice(0, at), profile } : undefined;
}

/** What one GPU of `model` counts for against max_gpus: a whole GPU QUOTA_UNITS_PER_GPU, a slice its share. */
export function quotaUnits(model: string): number {
  const slice = parseSliceModel(model);
  return slice ? sliceQuotaUnits(slice.parentModel, slice.profile) : QUOTA_UNITS_PER_GPU;
}
