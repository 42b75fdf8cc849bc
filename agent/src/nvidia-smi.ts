/**
 * The node agent's real GPU collector: `nvidia-smi --query-gpu=… --format=csv,noheader,nounits`,
 * once per collection or kept running in loop mode (see nvidia-smi-loop.ts), parsed into the
 * inventory the control plane keeps (model, memory, driver…) and one telemetry sample per GPU.
 *
 * What query-gpu cannot tell us, and therefore comes from elsewhere or stays empty:
 * - the CUDA version: not a query-gpu field. The plain `nvidia-smi` table prints it in its banner
 *   ("CUDA Version: 13.2", from R610 "CUDA UMD Version: 13.3"); NvidiaSmiCollector reads that once
 *   with `parseDriverVersions`, and takes the driver version from it too where query-gpu has none.
 * - XIDs: the driver reports them as kernel log events (NVRM: Xid …) or through NVML events, never
 *   as a query-gpu field, so `lastXid` is never set by this collector.
 * - PCIe throughput: NVML has counters, query-gpu has no field for them, so rx/tx stay undefined.
 * - MIG devices: query-gpu lists only whole GPUs. When one is in MIG mode, NvidiaSmiCollector reads
 *   `nvidia-smi -L` and `nvidia-smi -q` as well and lists its MIG devices after it (see mig.ts).
 */
import { execFile } from "node:child_process";
import { type LoopReading, QueryGpuLoop, rowIndex } from "./nvidia-smi-loop.js";
import { parseMigListing, parseMigQuery, parseMigQueryXml, withMigDevices } from "./mig.js";
import type { GpuInventoryEntry, GpuMetrics, GpuSampleRecord } from "./readings.js";

/**
 * Fields the collector asks for, in order. All have been accepted by query-gpu for many driver
 * generations, except `mig.mode.current` (MIG came with the A100 and R450 drivers), and R610 marks
 * `driver_version` deprecated: NvidiaSmiCollector drops whichever one a driver rejects.
 */
export const QUERY_FIELDS: readonly string[] = Object.freeze([
  "index",
  "uuid",
  "name",
  "driver_version",
  "memory.total",
  "memory.used",
  "utilization.gpu",
  "utilization.memory",
  "temperature.gpu",
  "power.draw",
  "power.limit",
  "clocks.sm",
  "fan.speed",
  "ecc.errors.corrected.volatile.total",
  "ecc.errors.uncorrected.volatile.total",
  "mig.mode.current",
]);

export interface NvidiaSmiResult {
  inventory: GpuInventoryEntry[];
  samples: GpuSampleRecord[];
  /** Rows skipped and values dropped, each with its line number and reason. */
  warnings: string[];
}

/** One data line of query-gpu output, before the uuid/index requirement is applied. */
export interface ParsedGpuRow {
  /** 1-based line number in the parsed text. */
  line: number;
  index?: number;
  uuid?: string;
  name?: string;
  driverVersion?: string;
  /** From mig.mode.current: true for "Enabled", false for "Disabled", undefined when absent or N/A. */
  migEnabled?: boolean;
  metrics: GpuMetrics;
  /**
   * Every cell, keyed by canonical field name (header spelling, without the unit). The last cell of
   * a last line that has no newline after it is "" (absent): the output may have been cut inside it.
   */
  raw: Record<string, string>;
}

export interface ParsedGpuRows {
  /** Canonical field names the columns were read as (from the header when there is one). */
  fields: string[];
  hasHeader: boolean;
  rows: ParsedGpuRow[];
  warnings: string[];
}

/**
 * Short names query-gpu accepts for a field, mapped to the name its CSV header prints
 * (`--query-gpu=gpu_name` comes back under the header "name").
 */
const FIELD_ALIASES: Readonly<Record<string, string>> = {
  gpu_name: "name",
  gpu_uuid: "uuid",
  gpu_serial: "serial",
  gpu_bus_id: "pci.bus_id",
  "clocks.gr": "clocks.current.graphics",
  "clocks.sm": "clocks.current.sm",
  "clocks.mem": "clocks.current.memory",
  "clocks.video": "clocks.current.video",
  "clocks.applications.gr": "clocks.applications.graphics",
  "clocks.applications.mem": "clocks.applications.memory",
  "clocks.default_applications.gr": "clocks.default_applications.graphics",
  "clocks.default_applications.mem": "clocks.default_applications.memory",
  "clocks.max.gr": "clocks.max.graphics",
  "clocks.max.mem": "clocks.max.memory",
};

type Kind = "percent" | "mebibytes" | "celsius" | "watts" | "megahertz" | "count";

/** Units each kind of value may carry (in the value or the header), with the factor to our unit. */
const UNIT_FACTORS: Readonly<Record<Kind, Readonly<Record<string, number>>>> = {
  percent: { "": 1, "%": 1 },
  // Memory is reported in MiB; the domain wants bytes.
  mebibytes: { "": 1048576, MiB: 1048576, KiB: 1024, GiB: 1073741824 },
  celsius: { "": 1, C: 1 },
  watts: { "": 1, W: 1 },
  megahertz: { "": 1, MHz: 1 },
  count: { "": 1 },
};

/** Where each metric comes from: the first of `fields` with a value wins. */
const METRIC_SOURCES: ReadonlyArray<{ metric: keyof GpuMetrics; fields: readonly string[]; kind: Kind }> = [
  { metric: "gpuUtilizationPercent", fields: ["utilization.gpu"], kind: "percent" },
  { metric: "memoryUtilizationPercent", fields: ["utilization.memory"], kind: "percent" },
  { metric: "memoryUsedBytes", fields: ["memory.used"], kind: "mebibytes" },
  { metric: "memoryTotalBytes", fields: ["memory.total"], kind: "mebibytes" },
  { metric: "temperatureCelsius", fields: ["temperature.gpu"], kind: "celsius" },
  // Newer drivers split power.draw into .instant and .average; power.draw itself is still there.
  { metric: "powerDrawWatts", fields: ["power.draw", "power.draw.instant", "power.draw.average"], kind: "watts" },
  { metric: "powerLimitWatts", fields: ["power.limit", "enforced.power.limit"], kind: "watts" },
  { metric: "smClockMhz", fields: ["clocks.current.sm"], kind: "megahertz" },
  { metric: "fanSpeedPercent", fields: ["fan.speed"], kind: "percent" },
  { metric: "eccCorrectedErrors", fields: ["ecc.errors.corrected.volatile.total"], kind: "count" },
  { metric: "eccUncorrectedErrors", fields: ["ecc.errors.uncorrected.volatile.total"], kind: "count" },
];

/** Field names a header line must contain at least one of, so that a data row is never taken for one. */
const KNOWN_FIELDS: ReadonlySet<string> = new Set([
  ...QUERY_FIELDS.map(canonicalField),
  ...Object.values(FIELD_ALIASES),
  ...METRIC_SOURCES.flatMap((s) => s.fields),
  "timestamp",
  "count",
  "serial",
  "pci.bus_id",
  "memory.free",
  "pstate",
  "mig.mode.pending",
]);

/** A header cell: a dotted field name, optionally followed by " [unit]". */
const HEADER_CELL = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*(?:\s+\[[^\]]*\])?$/;

export function canonicalField(name: string): string {
  const bare = name.trim();
  return FIELD_ALIASES[bare] ?? bare;
}

/** Splits "memory.used [MiB]" into its field name and unit. */
function splitHeaderCell(cell: string): { field: string; unit: string } {
  const m = /^(.*?)\s*\[([^\]]*)\]$/.exec(cell.trim());
  return m ? { field: canonicalField(m[1]!), unit: m[2]!.trim() } : { field: canonicalField(cell), unit: "" };
}

/** Placeholders nvidia-smi prints where it has no value: [N/A], [Not Supported], [Unknown Error], … */
function isMissing(value: string): boolean {
  return (
    value === "" || /^\[.*\]$/.test(value) || /^n\/?a$/i.test(value) || value === "ERR!" || /^(not supported|unknown error)$/i.test(value)
  );
}

function looksLikeHeader(cells: string[]): boolean {
  return cells.every((c) => HEADER_CELL.test(c)) && cells.some((c) => KNOWN_FIELDS.has(splitHeaderCell(c).field));
}

/**
 * Splits one data line into exactly `expected` cells, or says why it cannot.
 *
 * nvidia-smi separates cells with ", " and prints decimals with ".". Were a locale ever to print
 * "228,82", the plain split on "," gives more cells than fields; the line is then split on a comma
 * followed by whitespace only, which leaves such decimals inside their cell, and the caller is told
 * to read them as decimals (`localized`). A line that fits neither way is rejected.
 */
function splitRow(line: string, expected: number): { cells: string[]; localized: boolean } | { problem: string } {
  const plain = line.split(",").map((c) => c.trim());
  if (plain.length === expected) return { cells: plain, localized: false };
  if (plain.length > expected) {
    const strict = line.split(/,\s+/).map((c) => c.trim());
    if (strict.length === expected) return { cells: strict, localized: true };
  }
  return { problem: `expected ${expected} columns, found ${plain.length}` };
}

/**
 * Reads one number with its optional unit ("1024 MiB", "45 %", "250.00 W", "1410"), converted by
 * `kind`'s factor. Missing placeholders give no value and no problem.
 */
function parseMeasurement(raw: string, kind: Kind, headerUnit: string, localized: boolean): { value?: number; problem?: string } {
  if (isMissing(raw)) return {};
  let text = raw;
  if (localized) {
    const comma = /^([+-]?\d+),(\d+)(.*)$/.exec(text);
    if (comma) {
      // Two digits after the comma can only be a decimal part; three could be a thousands group.
      if (comma[2]!.length === 3) return { problem: `ambiguous number "${raw}" (decimal or thousands comma)` };
      text = `${comma[1]}.${comma[2]}${comma[3]}`;
    }
  }
  const m = /^([+-]?\d+(?:\.\d+)?)\s*([^\d\s.,].*)?$/.exec(text);
  if (!m) return { problem: `unreadable value "${raw}"` };
  const unit = m[2]?.trim() || headerUnit;
  const factors = UNIT_FACTORS[kind];
  const factor = Object.hasOwn(factors, unit) ? factors[unit] : undefined;
  if (factor === undefined) return { problem: `unexpected unit in "${raw}"` };
  const value = Number(m[1]) * factor;
  if (!Number.isFinite(value)) return { problem: `unreadable value "${raw}"` };
  return { value: kind === "mebibytes" ? Math.round(value) : value };
}

/** A text cell's value, or undefined for nvidia-smi's placeholders. */
function presentText(raw: string | undefined): string | undefined {
  return raw === undefined || isMissing(raw) ? undefined : raw;
}

/**
 * Parses query-gpu CSV into rows, without requiring uuid or index (recordings made with other
 * field lists often have neither). A first line made of field names is taken as the header
 * (names may carry " [unit]", and values may then carry units too); otherwise `fields` gives the
 * column order. Blank lines, CRLF, a BOM and trailing spaces are ignored; a line that repeats the
 * header is skipped. Bad lines and values become warnings. Output cut short (no newline after the
 * last line) never yields a partial value: a last row missing cells is skipped, and the last cell
 * of a complete-looking one is read as absent.
 *
 * Throws only when the text cannot be query-gpu CSV at all: no header, several columns expected,
 * and not one comma in any line (the driver's "NVIDIA-SMI has failed…", "No devices were found",
 * the table output, XML…).
 */
export function parseQueryGpuRows(input: string, fields: readonly string[] = QUERY_FIELDS): ParsedGpuRows {
  const warnings: string[] = [];
  const pieces = input.replace(/^\uFEFF/, "").split("\n");
  // nvidia-smi ends every line with a newline: text after the last one is a line cut short (a
  // killed process, a full pipe), whose last cell may hold "12" of "123". Its number, or 0.
  const cutLine = pieces[pieces.length - 1]!.trim() === "" ? 0 : pieces.length;
  const lines = pieces.map((l, i) => ({ number: i + 1, text: l.replace(/\r$/, "").trim() })).filter((l) => l.text !== "");

  let columns = fields.map((f) => ({ field: canonicalField(f), unit: "" }));
  let hasHeader = false;
  let headerText: string | undefined;
  const first = lines[0];
  if (first && looksLikeHeader(first.text.split(",").map((c) => c.trim()))) {
    hasHeader = true;
    headerText = first.text;
    columns = first.text.split(",").map(splitHeaderCell);
    lines.shift();
  }

  // A lone cut line ("0" of "0, GPU-…") is output cut short, skipped below with a warning.
  if (!hasHeader && columns.length > 1 && lines.length > 0 && !lines.some((l) => l.text.includes(",") || l.number === cutLine)) {
    throw new Error(`not nvidia-smi --query-gpu CSV output: ${JSON.stringify(lines[0]!.text.slice(0, 200))}`);
  }

  const rows: ParsedGpuRow[] = [];
  for (const line of lines) {
    if (line.text === headerText) continue;
    const split = splitRow(line.text, columns.length);
    if ("problem" in split) {
      const cut = line.number === cutLine ? " (output cut short: no newline after the last line)" : "";
      warnings.push(`line ${line.number}: skipped: ${split.problem}${cut}: ${JSON.stringify(line.text.slice(0, 200))}`);
      continue;
    }
    if (line.number === cutLine) {
      const last = columns[columns.length - 1]!.field;
      warnings.push(
        `line ${line.number}: ${last}: "${split.cells[split.cells.length - 1]}" not read: output cut short, this cell may be partial`,
      );
      split.cells[split.cells.length - 1] = "";
    }
    const raw: Record<string, string> = {};
    const units: Record<string, string> = {};
    columns.forEach((c, i) => {
      raw[c.field] = split.cells[i]!;
      units[c.field] = c.unit;
    });

    const row: ParsedGpuRow = { line: line.number, metrics: {}, raw };
    const index = presentText(raw.index);
    if (index !== undefined) {
      if (/^\d+$/.test(index)) row.index = Number(index);
      else warnings.push(`line ${line.number}: index: unreadable value "${index}"`);
    }
    const uuid = presentText(raw.uuid);
    if (uuid !== undefined) row.uuid = uuid;
    const name = presentText(raw.name);
    if (name !== undefined) row.name = name;
    const driverVersion = presentText(raw.driver_version);
    if (driverVersion !== undefined) row.driverVersion = driverVersion;
    const mig = presentText(raw["mig.mode.current"])?.toLowerCase();
    if (mig === "enabled") row.migEnabled = true;
    else if (mig === "disabled") row.migEnabled = false;

    for (const source of METRIC_SOURCES) {
      for (const field of source.fields) {
        const cell = raw[field];
        if (cell === undefined) continue;
        const { value, problem } = parseMeasurement(cell, source.kind, units[field] ?? "", split.localized);
        if (problem) warnings.push(`line ${line.number}: ${field}: ${problem}`);
        if (value !== undefined) {
          row.metrics[source.metric] = value;
          break;
        }
      }
    }
    rows.push(row);
  }
  return { fields: columns.map((c) => c.field), hasHeader, rows, warnings };
}

/**
 * Parses `nvidia-smi --query-gpu=… --format=csv[,noheader][,nounits]` output into inventory and
 * samples. With a header line the header decides the columns; without one, `fields` does
 * (default QUERY_FIELDS). A row without a uuid or an index is skipped with a warning: the control
 * plane keys GPUs by uuid and (host, index). Values nvidia-smi does not have ([N/A],
 * [Not Supported], …) leave the metric out, never NaN or 0. Samples are stamped with `now`: the
 * `timestamp` field, when asked for, is local time without a zone.
 */
export function parseQueryGpuCsv(input: string, fields: readonly string[] = QUERY_FIELDS, now: Date = new Date()): NvidiaSmiResult {
  return readingOf(parseQueryGpuRows(input, fields), now, (row) => row.migEnabled ?? false);
}

/** A query-gpu row with what a GPU cannot be reported without. */
type GpuRow = ParsedGpuRow & { uuid: string; index: number };

/**
 * Inventory and samples from parsed rows, as parseQueryGpuCsv describes; `migMode` says whether a
 * row's GPU is in MIG mode, and may add warnings ("line N: …") to those it is given.
 */
function readingOf(parsed: ParsedGpuRows, now: Date, migMode: (row: GpuRow, warnings: string[]) => boolean): NvidiaSmiResult {
  const warnings = [...parsed.warnings];
  const inventory: GpuInventoryEntry[] = [];
  const samples: GpuSampleRecord[] = [];
  for (const row of parsed.rows) {
    if (row.uuid === undefined || row.index === undefined) {
      const missing = row.uuid === undefined && row.index === undefined ? "uuid and index" : row.uuid === undefined ? "uuid" : "index";
      warnings.push(`line ${row.line}: skipped: no ${missing}`);
      continue;
    }
    if (row.metrics.memoryTotalBytes === undefined) warnings.push(`line ${row.line}: GPU ${row.uuid} reports no memory.total`);
    inventory.push({
      index: row.index,
      uuid: row.uuid,
      model: row.name ?? "",
      memoryBytes: row.metrics.memoryTotalBytes ?? 0,
      driverVersion: row.driverVersion ?? "",
      cudaVersion: "",
      migEnabled: migMode({ ...row, uuid: row.uuid, index: row.index }, warnings),
    });
    samples.push({ gpuUuid: row.uuid, index: row.index, time: now, metrics: row.metrics });
  }
  // Row problems found here and by the row parser, in line order (the sort is stable).
  const lineOf = (w: string) => Number(/^line (\d+):/.exec(w)?.[1] ?? 0);
  warnings.sort((a, b) => lineOf(a) - lineOf(b));
  return { inventory, samples, warnings };
}

/** Versions the driver prints above its GPUs, "" where absent or N/A. */
export interface DriverVersions {
  driverVersion: string;
  cudaVersion: string;
}

/**
 * Reads the driver and CUDA versions from the banner of the plain `nvidia-smi` table, or from the
 * head of `nvidia-smi -q` (both print "Name : value"). R610 renamed them: the table banner reads
 * "KMD Version: 610.57.04   CUDA UMD Version: 13.3" where older drivers print "Driver Version:
 * 595.71.05   CUDA Version: 13.2"; `-q` prints both spellings, the old ones marked deprecated.
 * The new names win when both are there.
 */
export function parseDriverVersions(text: string): DriverVersions {
  const read = (...names: string[]) => {
    for (const name of names) {
      const m = new RegExp(`(?:^|[\\s|])${name}\\s*:\\s*(\\d+(?:\\.\\d+)*)`, "m").exec(text);
      if (m) return m[1]!;
    }
    return "";
  };
  return { driverVersion: read("KMD Version", "Driver Version"), cudaVersion: read("CUDA UMD Version", "CUDA Version") };
}

export const NVIDIA_SMI_NOT_FOUND = "nvidia-smi not found: install the NVIDIA driver or run the agent with --simulate-gpus N";

/** What the collector says when nvidia-smi exits 0 without a line: that is not "no GPUs". */
export const NVIDIA_SMI_EMPTY_OUTPUT =
  "nvidia-smi --query-gpu exited 0 but printed nothing: no GPU can be read (without GPUs it says so and fails)";

/** Fields without which a GPU cannot be reported at all: their rejection is an error, not a retry. */
const REQUIRED_FIELDS: readonly string[] = ["index", "uuid"];

export interface NvidiaSmiCollectorOptions {
  /** The nvidia-smi executable. @default "nvidia-smi" from PATH */
  binary?: string;
  /** Runs the binary and resolves with its stdout. @default execFile with `timeoutMs` */
  run?: (file: string, args: string[]) => Promise<string>;
  /** @default () => new Date() */
  now?: () => Date;
  /** Limit for one nvidia-smi call with the default `run`. @default 10_000 */
  timeoutMs?: number;
  /**
   * Fill `cudaVersion` from the plain `nvidia-smi` table, read once and then remembered. The table
   * is read anyway (and its driver version used) when query-gpu gives a GPU no driver version.
   * @default true
   */
  cudaVersion?: boolean;
  /** Fields one collection may drop because nvidia-smi rejected them before it gives up. @default 4 */
  maxRejectedFields?: number;
  /**
   * Collections given a period read the newest output of one nvidia-smi kept running with
   * `--loop-ms=<period>` instead of starting one each (see collect). @default true
   */
  loop?: boolean;
  /** Where the loop's pid is kept (see stopLeftoverLoop). @default none */
  loopPidFile?: string;
}

/** Loops replaced in a row (see collect) before the collector stops starting them. */
const LOOP_FAILURES_TO_GIVE_UP = 3;
/** Readings a loop gives before the loops replaced before it are forgiven. */
const LOOP_READINGS_TO_TRUST = 10;
/** The least time a new loop is given for its first reading (NVML's start-up can take seconds). */
const LOOP_STARTUP_MS = 30_000;

function defaultRun(timeoutMs: number): (file: string, args: string[]) => Promise<string> {
  return (file, args) =>
    new Promise((resolve, reject) => {
      execFile(
        file,
        args,
        { timeout: timeoutMs, maxBuffer: 8 * 1024 * 1024, windowsHide: true, encoding: "utf8" },
        (error, stdout, stderr) => {
          if (error) reject(Object.assign(error, { stdout, stderr, timeoutMs }));
          else resolve(stdout);
        },
      );
    });
}

/** What nvidia-smi said when it failed: its stderr, else stdout, else the error message. */
function failureText(error: unknown): string {
  const e = error as { stderr?: unknown; stdout?: unknown; message?: unknown };
  for (const part of [e?.stderr, e?.stdout, e?.message]) {
    if (typeof part === "string" && part.trim() !== "") return part.trim();
  }
  return String(error);
}

function describeFailure(error: unknown): Error {
  const e = error as { code?: unknown; killed?: unknown; signal?: unknown; timeoutMs?: unknown };
  if (e?.code === "ENOENT") return new Error(NVIDIA_SMI_NOT_FOUND, { cause: error });
  if (e?.killed === true && typeof e.timeoutMs === "number") {
    return new Error(`nvidia-smi did not answer within ${e.timeoutMs / 1000} s`, { cause: error });
  }
  return new Error(`nvidia-smi failed: ${failureText(error).split(/\r?\n/)[0]}`, { cause: error });
}

/**
 * The field nvidia-smi refuses, from its complaint `Field "mig.mode.current" is not a valid field
 * to query.` (printed on stdout with exit status 2; some Windows builds print curly quotes). It
 * names only the first field it refuses, so each rejected field costs one more call.
 */
function rejectedField(text: string): { field: string; complaint: string } | undefined {
  const m = /^\s*(Field\s+["'“”]([^"'“”]+)["'“”]\s+is not a valid field to query\.?)/im.exec(text);
  return m ? { field: m[2]!.trim(), complaint: m[1]! } : undefined;
}

/**
 * The node agent's GPU collector. One instance per agent: it remembers what it learnt from
 * earlier calls, so a rejected field or the table banner costs an extra nvidia-smi call once.
 *
 * Rejected fields: a driver may refuse a field of QUERY_FIELDS (R450 brought mig.mode.current;
 * R610 marks driver_version deprecated in favour of kmd_version, so a later one may drop it). The
 * query is then repeated without the field, at most `maxRejectedFields` times per collection,
 * and the shorter list is kept for later collections; the values it carried are read as absent.
 * index and uuid cannot be done without, their rejection is an error.
 *
 * Driver version: from query-gpu's driver_version per GPU while the driver still answers it.
 * Where it gives none (field rejected, or a placeholder such as "[Requested functionality has
 * been deprecated]"), from the banner of the plain `nvidia-smi` table ("KMD Version:" from R610,
 * "Driver Version:" before), which is read anyway for the CUDA version: one light call, read once.
 * `nvidia-smi -q` shows the same two lines but prints every property of every GPU, much more
 * output and time for two values; `parseDriverVersions` reads both formats all the same.
 *
 * MIG: when a GPU of the reading is in MIG mode, and only then, every collection also runs
 * `nvidia-smi -L` (the MIG devices' UUIDs and profiles) and `nvidia-smi -q` (their instance ids and
 * memory), so that a re-partition shows at the next reading; where `-q` shows no MIG device at all
 * but `-L` lists some, `-q -x` is tried. Should either fail or be unreadable, the reading keeps
 * its GPUs without MIG devices and says why in a warning; a GPU in MIG mode is still reported so.
 * A GPU's MIG mode is remembered: only an explicit "Disabled" takes it out of MIG mode, a reading
 * without a mode ([N/A], an error, the field rejected) keeps the last one known (see migModeOf).
 */
export class NvidiaSmiCollector {
  private readonly binary: string;
  private readonly run: (file: string, args: string[]) => Promise<string>;
  private readonly now: () => Date;
  private readonly wantCudaVersion: boolean;
  private readonly maxRejectedFields: number;
  private fields: readonly string[] = QUERY_FIELDS;
  /** The table banner's versions once read; a failed read is tried again next collection. */
  private banner: DriverVersions | undefined;
  /** Each GPU's last known MIG mode, by UUID: what a reading without one falls back on. */
  private readonly migModes = new Map<string, boolean>();
  private loop: QueryGpuLoop | undefined;
  /** The GPU indices of the one-shot call that started the loop: what each of its readings holds. */
  private loopIndices: number[] = [];
  /** The loop's readings must be later than this row (the last reading's newest). */
  private loopSeq = 0;
  /** When that row arrived (monotonic clock). */
  private loopArrived = 0;
  private loopReadings = 0;
  /** Loops replaced since one gave LOOP_READINGS_TO_TRUST readings; at LOOP_FAILURES_TO_GIVE_UP, no more. */
  private loopFailures = 0;
  private loopOn: boolean;
  private closed = false;
  private readonly loopPidFile: string | undefined;
  /** The period the last collection was given. */
  private lastPeriodMs: number | undefined;
  /** The collection under way: the next waits for it. */
  private pending: Promise<unknown> = Promise.resolve();

  constructor(options: NvidiaSmiCollectorOptions = {}) {
    this.binary = options.binary ?? "nvidia-smi";
    this.run = options.run ?? defaultRun(options.timeoutMs ?? 10_000);
    this.now = options.now ?? (() => new Date());
    this.wantCudaVersion = options.cudaVersion ?? true;
    this.maxRejectedFields = options.maxRejectedFields ?? 4;
    this.loopOn = options.loop ?? true;
    this.loopPidFile = options.loopPidFile;
  }

  /** The fields the next collection asks for: QUERY_FIELDS less those the driver rejected. */
  get queryFields(): readonly string[] {
    return this.fields;
  }

  /**
   * Runs `nvidia-smi --query-gpu=<queryFields> --format=csv,noheader,nounits` and parses it. A
   * missing binary gives NVIDIA_SMI_NOT_FOUND, empty output NVIDIA_SMI_EMPTY_OUTPUT; any other
   * failure an Error that quotes nvidia-smi's first line of complaint.
   *
   * Given the same period twice in a row (an agent's first reading is taken before the server says
   * its period), a successful call also starts the same query in loop mode (`--loop-ms=<periodMs>`,
   * see nvidia-smi-loop.ts). The collections after it take the loop's next reading: a row for each
   * GPU of that call, all later than the last reading's (or the last one-shot call's), stamped with
   * when the oldest arrived. Once a loop has given a reading, the next is waited for until half a
   * period after it was due; until a new loop gives its first (at least 30 s),
   * one-shot calls answer. A loop that ends, falls silent, lists other GPUs, or runs with another
   * period or field list is stopped and started again after a one-shot call; after
   * LOOP_FAILURES_TO_GIVE_UP replaced in a row (an nvidia-smi whose output waits in a pipe buffer,
   * say) the collector says so and runs one call per collection. Collections run one at a time.
   */
  collect(periodMs?: number): Promise<NvidiaSmiResult> {
    const result = this.pending.then(() => this.collectNow(periodMs));
    this.pending = result.catch(() => undefined);
    return result;
  }

  private async collectNow(periodMs: number | undefined): Promise<NvidiaSmiResult> {
    const notes: string[] = [];
    const looped = periodMs === undefined ? undefined : await this.fromLoop(periodMs, notes);
    const output = looped?.text ?? (await this.queryGpus(notes));
    if (output.trim() === "") throw new Error(NVIDIA_SMI_EMPTY_OUTPUT);
    // A starting loop's first reading must not be older than this call's.
    if (!looped && this.loop) this.loopSeq = this.loop.rows.lastSeq;
    if (!looped && periodMs !== undefined && periodMs === this.lastPeriodMs) this.startLoop(periodMs, output);
    this.lastPeriodMs = periodMs;
    const at = looped?.at ?? this.now();
    const result = readingOf(parseQueryGpuRows(output, this.fields), at, (row, warnings) => this.migModeOf(row, warnings));
    result.warnings.unshift(...notes);

    const missingDriver = result.inventory.some((g) => g.driverVersion === "");
    if (result.inventory.length > 0 && (this.wantCudaVersion || missingDriver)) {
      const banner = await this.readBanner(result.warnings);
      for (const gpu of result.inventory) {
        gpu.cudaVersion = banner?.cudaVersion ?? "";
        if (gpu.driverVersion === "") gpu.driverVersion = banner?.driverVersion ?? "";
      }
    }
    if (!result.inventory.some((g) => g.migEnabled)) return result;
    return this.addMigDevices(result);
  }

  /** Stops the loop, if one runs, and starts none after. */
  close(): void {
    this.closed = true;
    this.stopLoop();
  }

  private stopLoop(): void {
    this.loop?.stop();
    this.loop = undefined;
  }

  /** The loop's next reading; stops a loop that is not working (see collect). */
  private async fromLoop(periodMs: number, notes: string[]): Promise<LoopReading | undefined> {
    const loop = this.loop;
    if (!loop) return undefined;
    const name = `nvidia-smi --loop-ms=${periodMs}`;
    const startupMs = Math.max(2 * periodMs + 2000, LOOP_STARTUP_MS);
    if (loop.periodMs !== periodMs || loop.fields !== this.fields) {
      this.stopLoop(); // asked for another period, or a field was dropped since
      return undefined;
    }
    const other = loop.rows.listsOthers(this.loopIndices);
    if (other === undefined) {
      const gave = this.loopReadings > 0;
      // Half a period after the next rows were due; no wait for a new loop's first.
      const deadline = gave ? this.loopArrived + 1.5 * periodMs : 0;
      const reading = await loop.next(this.loopIndices, this.loopSeq, deadline);
      if (this.closed || this.loop !== loop) return undefined; // stopped meanwhile: the agent is stopping
      if (reading) {
        this.loopSeq = reading.seq;
        this.loopArrived = reading.arrived;
        if (++this.loopReadings === LOOP_READINGS_TO_TRUST) this.loopFailures = 0;
        return reading;
      }
      if (!gave && !loop.ended && performance.now() - loop.started <= startupMs) return undefined;
    }
    this.stopLoop();
    this.loopFailures++;
    const silent = this.loopReadings > 0 ? "nothing new half a period after it was due" : `nothing in ${startupMs / 1000} s`;
    const why =
      other !== undefined
        ? `${name} lists GPU ${other}, which the call before it did not`
        : `${name} gives no readings (${loop.ended ? "" : `${silent}, `}${loop.trouble})`;
    if (this.loopFailures >= LOOP_FAILURES_TO_GIVE_UP) {
      this.loopOn = false;
      notes.push(`${why}; ${this.loopFailures} loops replaced in a row, running nvidia-smi once per reading from now on`);
    } else {
      notes.push(`${why}; starting it again`);
    }
    return undefined;
  }

  private startLoop(periodMs: number, output: string): void {
    if (!this.loopOn || this.closed || this.loop) return;
    const indices = output.split("\n").flatMap((line) => rowIndex(line) ?? []);
    if (indices.length === 0) return;
    this.loop = new QueryGpuLoop({ binary: this.binary, fields: this.fields, periodMs, now: this.now, pidFile: this.loopPidFile });
    this.loopIndices = indices;
    this.loopSeq = 0;
    this.loopReadings = 0;
  }

  /**
   * Whether a GPU is in MIG mode: what its row says when it says "Enabled" or "Disabled", else
   * (N/A, an error, the field absent) what it last said, else not. The server fails every
   * environment on the slices of a GPU reported out of MIG mode, so a glitch must not look like one.
   */
  private migModeOf(row: GpuRow, warnings: string[]): boolean {
    if (row.migEnabled !== undefined) {
      this.migModes.set(row.uuid, row.migEnabled);
      return row.migEnabled;
    }
    const last = this.migModes.get(row.uuid) ?? false;
    if (last) {
      const cell = row.raw["mig.mode.current"];
      const read = cell === undefined ? "is not read" : `reads ${JSON.stringify(cell)}`;
      warnings.push(`line ${row.line}: GPU ${row.index} (${row.uuid}): mig.mode.current ${read}: still in MIG mode, as last read`);
    }
    return last;
  }

  /**
   * The reading with its MIG devices, or as it is with a warning when they cannot be read: its GPUs
   * in MIG mode stay so, without MIG devices, until a reading shows them again.
   */
  private async addMigDevices(result: NvidiaSmiResult): Promise<NvidiaSmiResult> {
    const read = async <T>(args: string[], parse: (text: string) => T): Promise<T> => {
      let text: string;
      try {
        text = await this.run(this.binary, args);
      } catch (error) {
        throw new Error(describeFailure(error).message.replace(/^nvidia-smi/, `nvidia-smi ${args.join(" ")}`), { cause: error });
      }
      return parse(text);
    };
    try {
      const listing = await read(["-L"], parseMigListing);
      let query = await read(["-q"], parseMigQuery);
      const listedAny = listing.gpus.some((g) => g.migDevices.length > 0);
      if (listedAny && query.gpus.every((g) => g.migDevices.length === 0)) query = await read(["-q", "-x"], parseMigQueryXml);
      const merged = withMigDevices(result, listing, query);
      return { ...merged, warnings: [...result.warnings, ...merged.warnings] };
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      result.warnings.push(`MIG devices not read, this reading has none (GPUs in MIG mode are still reported so): ${why}`);
      return result;
    }
  }

  /** Query-gpu's stdout, after dropping the fields the driver rejects (each drop noted). */
  private async queryGpus(notes: string[]): Promise<string> {
    const dropped: string[] = [];
    for (;;) {
      let failure: Error | undefined;
      let rejection: ReturnType<typeof rejectedField>;
      try {
        const output = await this.run(this.binary, [`--query-gpu=${this.fields.join(",")}`, "--format=csv,noheader,nounits"]);
        // Seen only with a non-zero status so far; an exit 0 with the complaint is taken the same way.
        rejection = rejectedField(output);
        if (rejection === undefined) return output;
      } catch (error) {
        failure = describeFailure(error);
        const e = error as { stdout?: unknown; stderr?: unknown };
        if (failure.message !== NVIDIA_SMI_NOT_FOUND) rejection = rejectedField(`${e?.stderr ?? ""}\n${e?.stdout ?? ""}`);
        if (rejection === undefined) throw failure;
      }

      const { field, complaint } = rejection;
      const at = this.fields.findIndex((f) => f === field || canonicalField(f) === canonicalField(field));
      const fail = (why: string) => new Error(`nvidia-smi rejected the field "${field}": ${why}`, { cause: failure });
      if (at < 0) throw fail("not one this collector asked for");
      if (REQUIRED_FIELDS.includes(canonicalField(field))) throw fail("GPUs cannot be reported without it");
      if (dropped.length >= this.maxRejectedFields)
        throw fail(`gave up, ${dropped.length} fields were dropped already (${dropped.join(", ")})`);
      this.fields = this.fields.filter((_, i) => i !== at);
      dropped.push(field);
      notes.push(`nvidia-smi rejected a field (${complaint}); querying without "${field}" from now on, its values are absent`);
    }
  }

  /** The table banner's versions, read on first need; undefined (with a warning) when the table fails. */
  private async readBanner(warnings: string[]): Promise<DriverVersions | undefined> {
    if (this.banner) return this.banner;
    try {
      this.banner = parseDriverVersions(await this.run(this.binary, []));
    } catch (error) {
      warnings.push(`CUDA and driver versions from the nvidia-smi table unknown: ${describeFailure(error).message}`);
      return undefined;
    }
    if (this.banner.cudaVersion === "") warnings.push("nvidia-smi table shows no CUDA version");
    if (this.banner.driverVersion === "") warnings.push("nvidia-smi table shows no driver version");
    return this.banner;
  }
}

export interface CollectNvidiaSmiOptions extends Omit<NvidiaSmiCollectorOptions, "cudaVersion"> {
  /** Also run the plain `nvidia-smi` table to fill `cudaVersion`. @default false */
  queryCudaVersion?: boolean;
}

/**
 * One collection by a fresh NvidiaSmiCollector, which remembers nothing: a rejected field is
 * rejected again on every call. An agent should keep one NvidiaSmiCollector instead.
 */
export async function collectNvidiaSmi(options: CollectNvidiaSmiOptions = {}): Promise<NvidiaSmiResult> {
  return new NvidiaSmiCollector({ ...options, cudaVersion: options.queryCudaVersion ?? false }).collect();
}
