import { GpuStatus, timestampDate, type Gpu, type GpuSample } from "@remotegpu/sdk";
import type { Cli } from "./connection.js";
import { allGpus, resolveHost } from "./hosts.js";
import { age, bytes, table } from "./table.js";

/** How long `--once` waits for GPUs that have no sample yet. */
const ONCE_WAIT_MS = 5_000;
const REDRAW_MS = 1_000;
const REFRESH_INVENTORY_MS = 10_000;

interface Row {
  gpu: Gpu;
  sample?: GpuSample;
}

const key = (hostId: string, uuid: string) => `${hostId}/${uuid}`;

/**
 * `top [--host HOST] [--once]`: GPU telemetry as a table redrawn in place until Ctrl-C. The table
 * starts from each GPU's latest sample (ListGpus), then follows WatchGpuTelemetry.
 */
export async function topCommand(cli: Cli, opts: { host?: string; once: boolean }): Promise<void> {
  const hostId = opts.host ? (await resolveHost(cli, opts.host)).id : "";
  const rows = new Map<string, Row>();
  const refresh = async () => {
    for (const gpu of await allGpus(cli, hostId)) {
      const k = key(gpu.hostId, gpu.uuid);
      const old = rows.get(k)?.sample;
      const latest = gpu.latestSample;
      rows.set(k, { gpu, sample: old && (!latest || newer(old, latest)) ? old : latest });
    }
  };
  await refresh();

  const stop = new AbortController();
  const onAbort = () => stop.abort();
  cli.signal.addEventListener("abort", onAbort, { once: true });
  const complete = () => [...rows.values()].every((r) => r.sample);
  const tty = process.stdout.isTTY && !cli.json;
  let deadline: NodeJS.Timeout | undefined;
  let redraw: NodeJS.Timeout | undefined;
  let lastRefresh = Date.now();
  if (opts.once) {
    if (complete()) stop.abort();
    else deadline = setTimeout(() => stop.abort(), ONCE_WAIT_MS);
  } else {
    if (tty) process.stdout.write("\x1b[?25l");
    const draw = () => {
      if (cli.json) return;
      const title = `${new Date().toTimeString().slice(0, 8)}  ${rows.size} GPU(s)  (Ctrl-C to quit)`;
      cli.out(`${tty ? "\x1b[H\x1b[J" : "\n"}${title}\n${render(rows)}`);
    };
    draw();
    redraw = setInterval(() => {
      if (Date.now() - lastRefresh > REFRESH_INVENTORY_MS) {
        lastRefresh = Date.now();
        refresh().catch(() => undefined); // a failed refresh keeps the old inventory; the stream reports real trouble
      }
      draw();
    }, REDRAW_MS);
  }
  try {
    if (!stop.signal.aborted) {
      for await (const { sample } of cli.client.gpus.watchGpuTelemetry({ hostId }, { signal: stop.signal })) {
        const row = sample && rows.get(key(sample.hostId, sample.gpuUuid));
        if (!row) continue;
        row.sample = sample;
        if (cli.json && !opts.once) cli.out(JSON.stringify(snapshot(row)));
        if (opts.once && complete()) break;
      }
    }
  } catch (err) {
    if (!stop.signal.aborted) throw err;
  } finally {
    clearTimeout(deadline);
    clearInterval(redraw);
    cli.signal.removeEventListener("abort", onAbort);
    if (tty && !opts.once) process.stdout.write("\x1b[?25h");
  }
  if (opts.once) cli.out(cli.json ? JSON.stringify([...sorted(rows)].map(snapshot), null, 2) : render(rows));
}

function newer(a: GpuSample, b: GpuSample): boolean {
  return !!a.sampleTime && !!b.sampleTime && timestampDate(a.sampleTime) > timestampDate(b.sampleTime);
}

function sorted(rows: Map<string, Row>): Row[] {
  return [...rows.values()].sort((a, b) => a.gpu.hostName.localeCompare(b.gpu.hostName) || a.gpu.index - b.gpu.index);
}

function snapshot({ gpu, sample }: Row) {
  const m = sample?.metrics;
  return {
    host: gpu.hostName,
    index: gpu.index,
    uuid: gpu.uuid,
    model: gpu.model,
    status: GpuStatus[gpu.status],
    sampleTime: sample?.sampleTime ? timestampDate(sample.sampleTime).toISOString() : null,
    gpuUtilizationPercent: m?.gpuUtilizationPercent ?? null,
    memoryUsedBytes: m?.memoryUsedBytes === undefined ? null : Number(m.memoryUsedBytes),
    memoryTotalBytes: m?.memoryTotalBytes === undefined ? null : Number(m.memoryTotalBytes),
    temperatureCelsius: m?.temperatureCelsius ?? null,
    powerDrawWatts: m?.powerDrawWatts ?? null,
    powerLimitWatts: m?.powerLimitWatts ?? null,
  };
}

function render(rows: Map<string, Row>): string {
  if (rows.size === 0) return "no GPUs";
  const now = new Date();
  const dash = (v: unknown, f: () => string) => (v === undefined || v === null ? "-" : f());
  return table(
    ["HOST", "GPU", "MODEL", "STATUS", "UTIL", "", "MEMORY", "TEMP", "POWER", "SAMPLE"],
    sorted(rows).map((r) => {
      const s = snapshot(r);
      return [
        s.host,
        `#${s.index}`,
        s.model.replace(/^NVIDIA /, ""),
        s.status,
        dash(s.gpuUtilizationPercent, () => `${Math.round(s.gpuUtilizationPercent!)}%`),
        dash(s.gpuUtilizationPercent, () => bar(s.gpuUtilizationPercent!)),
        dash(s.memoryUsedBytes, () => `${bytes(s.memoryUsedBytes!)} / ${s.memoryTotalBytes === null ? "?" : bytes(s.memoryTotalBytes)}`),
        dash(s.temperatureCelsius, () => `${Math.round(s.temperatureCelsius!)}°C`),
        dash(s.powerDrawWatts, () => `${Math.round(s.powerDrawWatts!)}${s.powerLimitWatts ? ` / ${Math.round(s.powerLimitWatts)}` : ""} W`),
        s.sampleTime ? age(new Date(s.sampleTime), now) : "no sample",
      ];
    }),
    [4, 6, 7, 8],
  );
}

/** A 10-cell utilisation bar. */
function bar(percent: number): string {
  const cells = Math.round(Math.min(100, Math.max(0, percent)) / 10);
  return "█".repeat(cells) + "░".repeat(10 - cells);
}
