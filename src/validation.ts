import { InvalidArgumentError, type FieldViolation } from "./errors.js";

/** Collects every problem of a request so the caller sees them all in one INVALID_ARGUMENT. */
export class Violations {
  private readonly list: FieldViolation[] = [];

  add(field: string, description: string): this {
    this.list.push({ field, description });
    return this;
  }

  /** Records `description` for `field` unless `ok`. */
  check(ok: boolean, field: string, description: string): this {
    if (!ok) this.add(field, description);
    return this;
  }

  throwIfAny(): void {
    if (this.list.length > 0) throw new InvalidArgumentError(this.list);
  }
}

const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

/** Labels follow Kubernetes' rules, so they can be copied onto pods unchanged. */
export function checkLabels(v: Violations, field: string, labels: Record<string, string>): void {
  const entries = Object.entries(labels);
  v.check(entries.length <= 64, field, "at most 64 labels");
  for (const [key, value] of entries) {
    v.check(LABEL_KEY.test(key), `${field}.${key}`, "label key must be a Kubernetes label name");
    v.check(LABEL_VALUE.test(value), `${field}.${key}`, "label value must be up to 63 letters, digits, '-', '_' or '.'");
  }
}

/** Parses "a=b,c=d" into {a: "b", c: "d"}. */
export function parseLabelSelector(field: string, selector: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (selector.trim() === "") return out;
  const v = new Violations();
  for (const part of selector.split(",")) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? "" : part.slice(0, eq).trim();
    const value = eq < 0 ? "" : part.slice(eq + 1).trim();
    if (!key) {
      v.add(field, `"${part}" is not key=value`);
      continue;
    }
    out[key] = value;
  }
  checkLabels(v, field, out);
  v.throwIfAny();
  return out;
}

/**
 * Environment variables that choose which devices a container sees, or which driver features and
 * device nodes it gets. The runtime sets them from the GPUs an environment holds; taken from a user,
 * `NVIDIA_VISIBLE_DEVICES=all` would expose every GPU of the node. Compared case-insensitively.
 */
const DEVICE_VARIABLES = new Set([
  // NVIDIA Container Toolkit: which GPUs, which driver libraries, which extra device nodes.
  "NVIDIA_VISIBLE_DEVICES",
  "NVIDIA_DRIVER_CAPABILITIES",
  "NVIDIA_DISABLE_REQUIRE",
  "NVIDIA_MIG_CONFIG_DEVICES",
  "NVIDIA_MIG_MONITOR_DEVICES",
  "NVIDIA_IMEX_CHANNELS",
  "NVIDIA_GDS",
  "NVIDIA_GDRCOPY",
  "NVIDIA_MOFED",
  "NVIDIA_NVSWITCH",
  // CUDA, ROCm/HIP, OpenCL on AMD and oneAPI Level Zero: which devices a program enumerates.
  "CUDA_VISIBLE_DEVICES",
  "ROCR_VISIBLE_DEVICES",
  "HIP_VISIBLE_DEVICES",
  "GPU_DEVICE_ORDINAL",
  "ZE_AFFINITY_MASK",
]);
const DEVICE_VARIABLE_PREFIXES = ["NVIDIA_REQUIRE_"];

/** Whether `name` is an environment variable that selects devices (see DEVICE_VARIABLES). */
export function selectsDevices(name: string): boolean {
  const upper = name.toUpperCase();
  return DEVICE_VARIABLES.has(upper) || DEVICE_VARIABLE_PREFIXES.some((p) => upper.startsWith(p));
}

/** Refuses user-set variables that select devices, naming each (`env.NVIDIA_VISIBLE_DEVICES`). */
export function checkNoDeviceVariables(v: Violations, field: string, env: Record<string, string>): void {
  for (const name of Object.keys(env))
    if (selectsDevices(name))
      v.add(`${field}.${name.slice(0, 64)}`, "selects devices, which RemoteGPU sets from the GPUs the environment holds");
}

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A DNS-1123 subdomain, as Kubernetes wants for most object names: dot-separated labels, at most 253 characters. */
export function isDnsSubdomain(name: string, max = 253): boolean {
  return name.length <= max && name.split(".").every((label) => DNS_LABEL.test(label));
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this refuses
const CONTROL = /[\x00-\x1f\x7f]/;

/** Checks a string is present (or allowed empty) and at most `max` characters. */
export function checkString(
  v: Violations,
  field: string,
  value: string,
  opts: { required?: boolean; max: number; pattern?: RegExp; patternHint?: string },
): void {
  if (value === "") {
    v.check(!opts.required, field, "required");
    return;
  }
  if (value.length > opts.max) {
    v.add(field, `at most ${opts.max} characters`);
    return;
  }
  // PostgreSQL refuses NUL in text, and no field of ours is meant to hold control characters.
  if (CONTROL.test(value)) {
    v.add(field, "must not contain control characters");
    return;
  }
  if (opts.pattern && !opts.pattern.test(value)) v.add(field, opts.patternHint ?? `must match ${opts.pattern}`);
}

/** Keeps int64 values that came through protobuf as bigint inside JavaScript's exact integer range. */
export function toSafeNumber(v: Violations, field: string, value: bigint, min = 0n): number {
  if (value < min) {
    v.add(field, `must be ${min} or more`);
    return 0;
  }
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    v.add(field, "too large");
    return 0;
  }
  return Number(value);
}

/** For an enum named in an update mask but left unset: records the problem, returns undefined. */
export function required(v: Violations, field: string): undefined {
  v.add(field, "required when named in update_mask");
  return undefined;
}
