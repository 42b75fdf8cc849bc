import { strict as assert } from "node:assert";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  canonicalField,
  collectNvidiaSmi,
  NVIDIA_SMI_EMPTY_OUTPUT,
  NVIDIA_SMI_NOT_FOUND,
  NvidiaSmiCollector,
  parseDriverVersions,
  parseQueryGpuCsv,
  parseQueryGpuRows,
  QUERY_FIELDS,
} from "../../agent/src/nvidia-smi.js";

const MiB = 1048576;
const NOW = new Date("2026-07-14T08:12:53.000Z");
const MASKED_UUID = "GPU-00000000-0000-0000-0000-000000000000";

/** Recorded outputs, copied byte-for-byte; see test/fixtures/nvidia-smi/SOURCES.md. */
function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/nvidia-smi/${name}`, import.meta.url), "utf8");
}

const exporter = (capture: string) => fixture(`utkuozdemir-nvidia_gpu_exporter__${capture}`);
const exporterVersions = (capture: string) => parseDriverVersions(exporter(capture));

const R610 = "utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-geforce-rtx-2080-super__610.57.04";
const R610_TABLE = `${R610}__idle_table.txt`;
const R610_QUERY_GPU = `${R610}__load_query-gpu.csv`;
const R595_TABLE = "utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-geforce-rtx-2080-super__595.71.05__idle_table.txt";

/** nvidia-smi's answer when it refuses a query field: on stdout, exit status 2. */
function rejection(field: string): Error {
  return Object.assign(new Error("Command failed: nvidia-smi"), {
    code: 2,
    stdout: `Field "${field}" is not a valid field to query.\n\n`,
    stderr: "",
  });
}

/**
 * A stand-in nvidia-smi that answers from recordings: `--query-gpu=<fields>` with the recorded
 * header CSV's values for those fields, units stripped as `nounits` does; no arguments with the
 * recorded table. Fields in `rejects` get nvidia-smi's complaint, as a driver without them would.
 */
function recordedNvidiaSmi(csv: string, table: string, rejects: readonly string[] = []) {
  const [header, ...rows] = csv.trimEnd().split(/\r?\n/);
  const columns = header!.split(",").map((c) => /^\s*(.*?)(?:\s+\[(.*)\])?\s*$/.exec(c)!);
  const calls: string[][] = [];
  const run = async (_file: string, args: string[]) => {
    calls.push(args);
    if (args.length === 0) return table;
    const fields = args[0]!.replace(/^--query-gpu=/, "").split(",");
    const refused = fields.find((f) => rejects.includes(f));
    if (refused) throw rejection(refused);
    const answer = (row: string) => {
      const cells = row.split(",").map((c) => c.trim());
      return fields
        .map((f) => {
          const at = columns.findIndex((c) => c[1] === canonicalField(f));
          assert.ok(at >= 0, `no recorded column for ${f}`);
          const unit = columns[at]![2];
          return unit && cells[at]!.endsWith(` ${unit}`) ? cells[at]!.slice(0, -unit.length - 1) : cells[at]!;
        })
        .join(", ");
    };
    return `${rows.map(answer).join("\n")}\n`;
  };
  return { run, calls };
}

describe("nvidia-smi collector", () => {
  describe("query-gpu CSV with a header (nvidia_gpu_exporter captures, --format=csv)", () => {
    it("reads an H100 under load (590.48.01): units stripped, MiB to bytes, fan [N/A] left out", () => {
      const text = exporter("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load_query-gpu.csv");
      const rows = parseQueryGpuRows(text);
      assert.equal(rows.hasHeader, true);
      assert.equal(rows.fields.length, 212);

      const result = parseQueryGpuCsv(text, undefined, NOW);
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(result.inventory, [
        {
          index: 0,
          uuid: MASKED_UUID,
          model: "NVIDIA H100 80GB HBM3",
          memoryBytes: 81559 * MiB,
          driverVersion: "590.48.01",
          cudaVersion: "",
          migEnabled: false,
        },
      ]);
      assert.equal(result.samples.length, 1);
      const sample = result.samples[0]!;
      assert.equal(sample.gpuUuid, MASKED_UUID);
      assert.equal(sample.index, 0);
      assert.equal(sample.time, NOW);
      // Not in query-gpu: XIDs and PCIe throughput stay unset.
      assert.equal(sample.metrics.lastXid, undefined);
      assert.equal(sample.metrics.pcieRxBytesPerSecond, undefined);
      assert.equal(sample.metrics.pcieTxBytesPerSecond, undefined);
      assert.deepEqual(sample.metrics, {
        gpuUtilizationPercent: 100,
        memoryUtilizationPercent: 11,
        memoryUsedBytes: 19818 * MiB,
        memoryTotalBytes: 81559 * MiB,
        temperatureCelsius: 59,
        powerDrawWatts: 631.95, // power.draw; power.draw.instant said 625.68
        powerLimitWatts: 700,
        smClockMhz: 1980,
        eccCorrectedErrors: 0,
        eccUncorrectedErrors: 0,
      });
      assert.equal("fanSpeedPercent" in sample.metrics, false);
    });

    it("keeps an idle H100's zeros as zeros, not as absent values", () => {
      const { samples } = parseQueryGpuCsv(exporter("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle_query-gpu.csv"), undefined, NOW);
      const m = samples[0]!.metrics;
      assert.equal(m.gpuUtilizationPercent, 0);
      assert.equal(m.memoryUtilizationPercent, 0);
      assert.equal(m.memoryUsedBytes, 0);
      assert.equal(m.temperatureCelsius, 41);
      assert.equal(m.powerDrawWatts, 69.85);
      assert.equal(m.smClockMhz, 345);
    });

    it("reads an H200 under load (143771 MiB)", () => {
      const result = parseQueryGpuCsv(exporter("linux-x86_64__nvidia-h200__590.48.01__load_query-gpu.csv"), undefined, NOW);
      assert.deepEqual(result.warnings, []);
      const gpu = result.inventory[0]!;
      assert.equal(gpu.model, "NVIDIA H200");
      assert.equal(gpu.memoryBytes, 143771 * MiB);
      assert.equal(gpu.migEnabled, false);
      const m = result.samples[0]!.metrics;
      assert.equal(m.gpuUtilizationPercent, 100);
      assert.equal(m.memoryUtilizationPercent, 7);
      assert.equal(m.memoryUsedBytes, 32362 * MiB);
      assert.equal(m.temperatureCelsius, 52);
      assert.equal(m.powerDrawWatts, 627.4);
      assert.equal(m.fanSpeedPercent, undefined);
    });

    it("marks H200 and H100 in MIG mode as MIG-enabled, whose utilization query-gpu reports as [N/A]", () => {
      const h200 = parseQueryGpuCsv(exporter("linux-x86_64__nvidia-h200-mig__590.48.01__load_query-gpu.csv"), undefined, NOW);
      assert.deepEqual(h200.warnings, []);
      assert.equal(h200.inventory[0]!.model, "NVIDIA H200");
      assert.equal(h200.inventory[0]!.migEnabled, true);
      assert.deepEqual(h200.samples[0]!.metrics, {
        memoryUsedBytes: 16959 * MiB,
        memoryTotalBytes: 143771 * MiB,
        temperatureCelsius: 36,
        powerDrawWatts: 295.01,
        powerLimitWatts: 700,
        smClockMhz: 1980,
        eccCorrectedErrors: 0,
        eccUncorrectedErrors: 0,
      });

      const h100 = parseQueryGpuCsv(exporter("linux-x86_64__nvidia-h100-mig__590.48.01__load_query-gpu.csv"), undefined, NOW);
      assert.equal(h100.inventory[0]!.model, "NVIDIA H100 80GB HBM3");
      assert.equal(h100.inventory[0]!.migEnabled, true);
      assert.equal(h100.samples[0]!.metrics.gpuUtilizationPercent, undefined);
      assert.equal(h100.samples[0]!.metrics.memoryUsedBytes, 11125 * MiB);
      assert.equal(h100.samples[0]!.metrics.powerDrawWatts, 433.78);
    });

    it("reads a GeForce RTX 2080 SUPER on Linux (595.71.05): fan present, ECC [N/A] left out", () => {
      const result = parseQueryGpuCsv(
        exporter("linux-x86_64__nvidia-geforce-rtx-2080-super__595.71.05__load_query-gpu.csv"),
        undefined,
        NOW,
      );
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(result.inventory, [
        {
          index: 0,
          uuid: MASKED_UUID,
          model: "NVIDIA GeForce RTX 2080 SUPER",
          memoryBytes: 8192 * MiB,
          driverVersion: "595.71.05",
          cudaVersion: "",
          migEnabled: false,
        },
      ]);
      assert.deepEqual(result.samples[0]!.metrics, {
        gpuUtilizationPercent: 8,
        memoryUtilizationPercent: 3,
        memoryUsedBytes: 819 * MiB,
        memoryTotalBytes: 8192 * MiB,
        temperatureCelsius: 45,
        powerDrawWatts: 111.5,
        powerLimitWatts: 250,
        smClockMhz: 2055,
        fanSpeedPercent: 38,
      });
    });

    it("reads a GeForce RTX 4080 SUPER: a stopped fan is 0 %, and power.draw wins over power.draw.instant", () => {
      const m = parseQueryGpuCsv(exporter("linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__load_query-gpu.csv"), undefined, NOW)
        .samples[0]!.metrics;
      assert.equal(m.fanSpeedPercent, 0);
      assert.equal(m.powerDrawWatts, 84.24);
      assert.equal(m.memoryTotalBytes, 16376 * MiB);
      assert.equal(m.smClockMhz, 2805);
    });

    it("reads a GeForce RTX 2080 SUPER on Windows (610.62, 239 fields)", () => {
      const result = parseQueryGpuCsv(
        exporter("windows-x86_64__nvidia-geforce-rtx-2080-super__610.62__load_query-gpu.csv"),
        undefined,
        NOW,
      );
      assert.deepEqual(result.warnings, []);
      assert.equal(result.inventory[0]!.driverVersion, "610.62");
      assert.equal(result.inventory[0]!.model, "NVIDIA GeForce RTX 2080 SUPER");
      const m = result.samples[0]!.metrics;
      assert.equal(m.memoryUsedBytes, 1366 * MiB);
      assert.equal(m.temperatureCelsius, 44);
      assert.equal(m.powerDrawWatts, 97.99);
      assert.equal(m.fanSpeedPercent, 38);
      assert.equal(m.smClockMhz, 2040);
    });

    it("reads an old driver (465.27, clocks_throttle_reasons.* names, no power.draw.instant)", () => {
      const text = exporter("samples_ubuntu20.04_v465.27_query-gpu.csv");
      assert.equal(parseQueryGpuRows(text).fields.length, 115);
      const result = parseQueryGpuCsv(text, undefined, NOW);
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(result.inventory, [
        {
          index: 0,
          uuid: "GPU-df6e7a7c-7314-46f8-abc4-b88b36dcf3aa",
          model: "NVIDIA GeForce RTX 2080 SUPER",
          memoryBytes: 7979 * MiB,
          driverVersion: "465.27",
          cudaVersion: "",
          migEnabled: false,
        },
      ]);
      const m = result.samples[0]!.metrics;
      assert.equal(m.powerDrawWatts, 30.37);
      assert.equal(m.smClockMhz, 300);
      assert.equal(m.memoryUtilizationPercent, 10);
    });

    it("takes a lone mig.mode.current header as a header; [N/A] is neither enabled nor disabled", () => {
      const text = fixture("Syllo-nvtop__pr470_rtx_mig-mode-NA.csv");
      const rows = parseQueryGpuRows(text);
      assert.equal(rows.hasHeader, true);
      assert.deepEqual(rows.fields, ["mig.mode.current"]);
      assert.equal(rows.rows.length, 1);
      assert.equal(rows.rows[0]!.migEnabled, undefined);
      const result = parseQueryGpuCsv(text, undefined, NOW);
      assert.deepEqual(result.inventory, []);
      assert.deepEqual(result.warnings, ["line 2: skipped: no uuid and index"]);
    });
  });

  describe("recordings made with their own field lists", () => {
    it("reads 8x GeForce GTX TITAN X (gpustat, noheader,nounits)", () => {
      const fields = ["index", "uuid", "name", "temperature.gpu", "utilization.gpu", "memory.used", "memory.total"];
      const result = parseQueryGpuCsv(fixture("wookayin-gpustat__issue5_8x-gtx-titan-x_noheader_nounits.csv"), fields, NOW);
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(
        result.inventory.map((g) => g.index),
        [0, 1, 2, 3, 4, 5, 6, 7],
      );
      assert.ok(
        result.inventory.every((g) => g.model === "GeForce GTX TITAN X" && g.memoryBytes === 12206 * MiB && g.migEnabled === false),
      );
      assert.equal(result.inventory[7]!.uuid, "GPU-f199c9ea-65d8-5382-aefe-a9e8fb48057b");
      assert.deepEqual(result.samples[1], {
        gpuUuid: "GPU-86fe97db-bf54-a056-4e8d-9b07e1a298e7",
        index: 1,
        time: NOW,
        metrics: { temperatureCelsius: 54, gpuUtilizationPercent: 86, memoryUsedBytes: 10032 * MiB, memoryTotalBytes: 12206 * MiB },
      });
    });

    it("reads a Tesla V100-SXM2-32GB queried with --id=3 (telegraf, 440.64.00): fan [N/A]", () => {
      const fields = [
        "fan.speed",
        "memory.total",
        "memory.used",
        "memory.free",
        "pstate",
        "temperature.gpu",
        "name",
        "uuid",
        "utilization.gpu",
        "utilization.memory",
        "index",
      ];
      const result = parseQueryGpuCsv(fixture("influxdata-telegraf__issue7659_v100-sxm2_fan-NA_noheader_nounits.csv"), fields, NOW);
      assert.deepEqual(result.warnings, []);
      // The reporter redacted the UUID into a malformed one; it is kept as the opaque key it is.
      assert.deepEqual(result.inventory, [
        {
          index: 3,
          uuid: "GPU-124-124-1241-241241241242341",
          model: "Tesla V100-SXM2-32GB",
          memoryBytes: 32510 * MiB,
          driverVersion: "",
          cudaVersion: "",
          migEnabled: false,
        },
      ]);
      assert.deepEqual(result.samples[0]!.metrics, {
        gpuUtilizationPercent: 0,
        memoryUtilizationPercent: 0,
        memoryUsedBytes: 0,
        memoryTotalBytes: 32510 * MiB,
        temperatureCelsius: 35,
      });
    });

    it("reads 2x RTX A6000 without uuid or index (prmon): rows parse, inventory skips them", () => {
      const fields = ["clocks.max.sm", "memory.total", "gpu_name"];
      const text = fixture("HSF-prmon__issue317_2x-rtx-a6000_noheader_nounits.csv");
      const rows = parseQueryGpuRows(text, fields);
      assert.equal(rows.hasHeader, false);
      assert.equal(rows.rows.length, 2);
      for (const row of rows.rows) {
        assert.equal(row.name, "NVIDIA RTX A6000");
        assert.equal(row.raw["clocks.max.sm"], "2100");
        // The maximum SM clock is not the current one.
        assert.deepEqual(row.metrics, { memoryTotalBytes: 49140 * MiB });
      }
      const result = parseQueryGpuCsv(text, fields, NOW);
      assert.deepEqual(result.inventory, []);
      assert.deepEqual(result.warnings, ["line 1: skipped: no uuid and index", "line 2: skipped: no uuid and index"]);
    });

    it("reads an old driver's fan [Not Supported] (i3pystatus)", () => {
      const fields = [
        "memory.total",
        "memory.free",
        "memory.used",
        "temperature.gpu",
        "fan.speed",
        "utilization.gpu",
        "utilization.memory",
      ];
      const rows = parseQueryGpuRows(fixture("enkore-i3pystatus__pr776_old-driver_fan-not-supported_noheader_nounits.csv"), fields);
      assert.deepEqual(rows.warnings, []);
      assert.deepEqual(rows.rows[0]!.metrics, {
        memoryTotalBytes: 2004 * MiB,
        memoryUsedBytes: 0,
        temperatureCelsius: 44,
        gpuUtilizationPercent: 0,
        memoryUtilizationPercent: 0,
      });
    });

    it("reads a GeForce GTX 770 on Windows: noheader with units kept, 8x [Not Supported] (Megaminer)", () => {
      const fields = [
        "gpu_name",
        "utilization.gpu",
        "utilization.memory",
        "temperature.gpu",
        "power.draw",
        "power.limit",
        "fan.speed",
        "pstate",
        "clocks.current.graphics",
        "clocks.current.memory",
        "power.max_limit",
        "power.default_limit",
      ];
      const rows = parseQueryGpuRows(fixture("tutulino-Megaminer__issue235_gtx770_not-supported_noheader.csv"), fields);
      assert.deepEqual(rows.warnings, []);
      const row = rows.rows[0]!;
      assert.equal(row.name, "GeForce GTX 770");
      assert.equal(row.raw.pstate, "P0");
      assert.deepEqual(row.metrics, { temperatureCelsius: 52, fanSpeedPercent: 52 });
    });

    it("reads a GeForce RTX 2080 Ti on Windows (442.19): header with units under nounits, blank line, [Unknown Error]", () => {
      // The header decides the columns, whatever `fields` says.
      const rows = parseQueryGpuRows(fixture("Quake4-MindMiner__issue627_rtx2080ti_unknown-error_nounits.csv"), ["index"]);
      assert.equal(rows.hasHeader, true);
      assert.deepEqual(rows.warnings, []);
      assert.equal(rows.rows.length, 1);
      const row = rows.rows[0]!;
      assert.equal(row.line, 3);
      assert.equal(row.name, "GeForce RTX 2080 Ti");
      assert.equal(row.raw["power.default_limit"], "[Unknown Error]");
      assert.deepEqual(row.metrics, {
        gpuUtilizationPercent: 100,
        memoryUtilizationPercent: 37,
        temperatureCelsius: 56,
        powerDrawWatts: 228.82,
        powerLimitWatts: 210,
        fanSpeedPercent: 56,
      });
    });

    it("reads two mixed GPUs with an index but no uuid (netdata python.d docstring)", () => {
      const fields = [
        "index",
        "utilization.gpu",
        "utilization.memory",
        "memory.total",
        "memory.used",
        "memory.free",
        "fan.speed",
        "temperature.gpu",
      ];
      const text = fixture("unattributed-netdata-pythond-module__host143_mixed-gpus_noheader_nounits.csv");
      const rows = parseQueryGpuRows(text, fields);
      assert.deepEqual(
        rows.rows.map((r) => [r.index, r.metrics.memoryTotalBytes]),
        [
          [0, 4095 * MiB],
          [1, 2047 * MiB],
        ],
      );
      assert.deepEqual(rows.rows[1]!.metrics, {
        gpuUtilizationPercent: 0,
        memoryUtilizationPercent: 12,
        memoryUsedBytes: 190 * MiB,
        memoryTotalBytes: 2047 * MiB,
        temperatureCelsius: 36,
        fanSpeedPercent: 25,
      });
      const result = parseQueryGpuCsv(text, fields, NOW);
      assert.deepEqual(result.inventory, []);
      assert.deepEqual(result.warnings, ["line 1: skipped: no uuid", "line 2: skipped: no uuid"]);
    });

    it("never yields NaN, Infinity or a negative number from any recording", () => {
      const cases: Array<[string, string[] | undefined]> = [
        ["utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load_query-gpu.csv", undefined],
        ["utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h200-mig__590.48.01__load_query-gpu.csv", undefined],
        ["utkuozdemir-nvidia_gpu_exporter__windows-x86_64__nvidia-geforce-rtx-2080-super__610.62__load_query-gpu.csv", undefined],
        [
          "tutulino-Megaminer__issue235_gtx770_not-supported_noheader.csv",
          [
            "gpu_name",
            "utilization.gpu",
            "utilization.memory",
            "temperature.gpu",
            "power.draw",
            "power.limit",
            "fan.speed",
            "pstate",
            "clocks.current.graphics",
            "clocks.current.memory",
            "power.max_limit",
            "power.default_limit",
          ],
        ],
        ["Quake4-MindMiner__issue627_rtx2080ti_unknown-error_nounits.csv", undefined],
      ];
      for (const [name, fields] of cases) {
        for (const row of parseQueryGpuRows(fixture(name), fields).rows) {
          for (const [key, value] of Object.entries(row.metrics)) {
            assert.ok(typeof value === "number" && Number.isFinite(value) && value >= 0, `${name}: ${key} = ${value}`);
          }
        }
      }
    });
  });

  describe("synthetic edge cases", () => {
    const a100 = (index: number, uuid: string, rest = "45, 12, 40, 250.10, 400.00, 1410, [N/A], 0, 0, Disabled") =>
      `${index}, ${uuid}, NVIDIA A100-SXM4-80GB, 535.54.03, 81920, 1024, ${rest}`;

    it("copes with CRLF, blank lines, trailing spaces, a BOM, a GPU that fell off the bus and a row without uuid", () => {
      const text =
        "\uFEFF" +
        [
          `${a100(0, "GPU-aaaaaaaa-0000-0000-0000-000000000000")}   `,
          "",
          "Unable to determine the device handle for GPU 0000:3B:00.0: Unknown Error",
          a100(2, "[N/A]"),
          "   ",
          a100(3, "GPU-aaaaaaaa-0000-0000-0000-000000000003", "[Not Supported], N/A, 38, , [Unknown Error], 1410, 30, 1, 0, Enabled"),
          "",
        ].join("\r\n");
      const result = parseQueryGpuCsv(text, QUERY_FIELDS, NOW);
      assert.deepEqual(
        result.inventory.map((g) => [g.index, g.uuid, g.model, g.memoryBytes, g.driverVersion, g.migEnabled]),
        [
          [0, "GPU-aaaaaaaa-0000-0000-0000-000000000000", "NVIDIA A100-SXM4-80GB", 81920 * MiB, "535.54.03", false],
          [3, "GPU-aaaaaaaa-0000-0000-0000-000000000003", "NVIDIA A100-SXM4-80GB", 81920 * MiB, "535.54.03", true],
        ],
      );
      assert.deepEqual(result.samples[0]!.metrics, {
        gpuUtilizationPercent: 45,
        memoryUtilizationPercent: 12,
        memoryUsedBytes: 1024 * MiB,
        memoryTotalBytes: 81920 * MiB,
        temperatureCelsius: 40,
        powerDrawWatts: 250.1,
        powerLimitWatts: 400,
        smClockMhz: 1410,
        eccCorrectedErrors: 0,
        eccUncorrectedErrors: 0,
      });
      assert.deepEqual(result.samples[1]!.metrics, {
        memoryUsedBytes: 1024 * MiB,
        memoryTotalBytes: 81920 * MiB,
        temperatureCelsius: 38,
        smClockMhz: 1410,
        fanSpeedPercent: 30,
        eccCorrectedErrors: 1,
        eccUncorrectedErrors: 0,
      });
      assert.equal(result.warnings.length, 2);
      assert.match(result.warnings[0]!, /^line 3: skipped: expected 16 columns, found 1: "Unable to determine/);
      assert.equal(result.warnings[1], "line 4: skipped: no uuid");
    });

    it("skips a row with an unreadable index and reports unreadable values without inventing numbers", () => {
      const text = [
        a100(0, "GPU-a").replace(/^0/, "x"),
        a100(1, "GPU-b", "45, 12, hot, 250.10, 400.00, 1410 GHz, [N/A], 0, 0, Disabled"),
        "",
      ].join("\n");
      const result = parseQueryGpuCsv(text, QUERY_FIELDS, NOW);
      assert.deepEqual(
        result.inventory.map((g) => g.uuid),
        ["GPU-b"],
      );
      assert.equal(result.samples[0]!.metrics.temperatureCelsius, undefined);
      assert.equal(result.samples[0]!.metrics.smClockMhz, undefined);
      assert.deepEqual(result.warnings, [
        'line 1: index: unreadable value "x"',
        "line 1: skipped: no index",
        'line 2: temperature.gpu: unreadable value "hot"',
        'line 2: clocks.current.sm: unexpected unit in "1410 GHz"',
      ]);
    });

    it("reads decimal commas only where the column count proves them, and refuses thousands-looking ones", () => {
      const text = [
        // 18 pieces on ",", 16 on ", ": "250,10" and "400,5" are decimals.
        a100(0, "GPU-a", "45, 12, 40, 250,10, 400,5, 1410, [N/A], 0, 0, Disabled"),
        // "1,410" could be 1.410 or 1410: dropped with a warning.
        a100(1, "GPU-b", "45, 12, 40, 250,10, 400, 1,410, [N/A], 0, 0, Disabled"),
        // Still one column too many after the strict split: the row is refused.
        a100(2, "GPU-c", "45, 12, 40, 250,10, 400, 1410, [N/A], 0, 0, Disabled, extra"),
        // Fits on ",": plain decimals as nvidia-smi prints them.
        a100(3, "GPU-d"),
        "",
      ].join("\n");
      const result = parseQueryGpuCsv(text, QUERY_FIELDS, NOW);
      assert.deepEqual(
        result.samples.map((s) => [s.gpuUuid, s.metrics.powerDrawWatts, s.metrics.powerLimitWatts, s.metrics.smClockMhz]),
        [
          ["GPU-a", 250.1, 400.5, 1410],
          ["GPU-b", 250.1, 400, undefined],
          ["GPU-d", 250.1, 400, 1410],
        ],
      );
      assert.equal(result.warnings.length, 2);
      assert.equal(result.warnings[0], 'line 2: clocks.current.sm: ambiguous number "1,410" (decimal or thousands comma)');
      assert.match(result.warnings[1]!, /^line 3: skipped: expected 16 columns, found 18/);
    });

    it("gives an empty result for empty or header-only output", () => {
      assert.deepEqual(parseQueryGpuCsv("", QUERY_FIELDS, NOW), { inventory: [], samples: [], warnings: [] });
      assert.deepEqual(parseQueryGpuCsv("\r\n\r\n", QUERY_FIELDS, NOW), { inventory: [], samples: [], warnings: [] });
      const header = "index, uuid, name, memory.total [MiB], utilization.gpu [%]\r\n";
      assert.deepEqual(parseQueryGpuCsv(header, QUERY_FIELDS, NOW), { inventory: [], samples: [], warnings: [] });
    });

    it("throws on text that is not query-gpu CSV at all", () => {
      const table = fixture("utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load_table.txt");
      assert.throws(() => parseQueryGpuCsv(table), /not nvidia-smi --query-gpu CSV output: "Tue Jul 14 08:12:53 2026"/);
      assert.throws(() => parseQueryGpuCsv("No devices were found\n"), /not nvidia-smi --query-gpu CSV output: "No devices were found"/);
      assert.throws(
        () =>
          parseQueryGpuCsv(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n",
          ),
        /not nvidia-smi --query-gpu CSV output/,
      );
    });

    it("reads driver and CUDA versions from the table banner and from -q, before and after R610 renamed them", () => {
      const versions = (name: string) => parseDriverVersions(fixture(name));
      // R610: "KMD Version: 610.57.04     CUDA UMD Version: 13.3" (Linux and Windows).
      assert.deepEqual(versions(R610_TABLE), { driverVersion: "610.57.04", cudaVersion: "13.3" });
      assert.deepEqual(exporterVersions("windows-x86_64__nvidia-geforce-rtx-2080-super__610.62__idle_table.txt"), {
        driverVersion: "610.62",
        cudaVersion: "13.3",
      });
      // R610 -q prints both spellings, the old ones as "610.57.04 [Deprecated; … Use KMD Version instead]".
      assert.deepEqual(exporterVersions("linux-x86_64__nvidia-geforce-rtx-2080-super__610.57.04__idle_q.txt"), {
        driverVersion: "610.57.04",
        cudaVersion: "13.3",
      });
      // Before: "Driver Version: 595.71.05      CUDA Version: 13.2".
      assert.deepEqual(versions(R595_TABLE), { driverVersion: "595.71.05", cudaVersion: "13.2" });
      assert.deepEqual(exporterVersions("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load_table.txt"), {
        driverVersion: "590.48.01",
        cudaVersion: "13.1",
      });
      assert.deepEqual(exporterVersions("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle_q.txt"), {
        driverVersion: "590.48.01",
        cudaVersion: "13.1",
      });
      assert.deepEqual(versions("leptonai-gpud__nvidia-smi.525.125.06.out.0.valid.txt"), {
        driverVersion: "525.125.06",
        cudaVersion: "12.0",
      });
      assert.deepEqual(parseDriverVersions("| NVIDIA-SMI 418.43   Driver Version: 418.43   CUDA Version: N/A |"), {
        driverVersion: "418.43",
        cudaVersion: "",
      });
    });
  });

  describe("collectNvidiaSmi", () => {
    const QUERY_ARGS = [`--query-gpu=${QUERY_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];
    // MIG mode off: a GPU in MIG mode makes the collector read -L and -q too (nvidia-smi-mig.test.ts).
    const ROW =
      "0, GPU-aaaaaaaa-0000-0000-0000-000000000000, NVIDIA H200, 590.48.01, 143771, 16959, [N/A], [N/A], 36, 295.01, 700.00, 1980, [N/A], 0, 0, Disabled\n";

    it("asks for QUERY_FIELDS as noheader,nounits CSV and parses the answer", async () => {
      assert.equal(
        QUERY_ARGS[0],
        "--query-gpu=index,uuid,name,driver_version,memory.total,memory.used,utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit,clocks.sm,fan.speed,ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total,mig.mode.current",
      );
      const calls: Array<[string, string[]]> = [];
      const result = await collectNvidiaSmi({
        run: async (file, args) => {
          calls.push([file, args]);
          return ROW;
        },
        now: () => NOW,
      });
      assert.deepEqual(calls, [["nvidia-smi", QUERY_ARGS]]);
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(result.inventory, [
        {
          index: 0,
          uuid: "GPU-aaaaaaaa-0000-0000-0000-000000000000",
          model: "NVIDIA H200",
          memoryBytes: 143771 * MiB,
          driverVersion: "590.48.01",
          cudaVersion: "",
          migEnabled: false,
        },
      ]);
      assert.equal(result.samples[0]!.time, NOW);
      assert.equal(result.samples[0]!.metrics.powerDrawWatts, 295.01);
    });

    it("uses the given binary and fills the CUDA version from the table when asked", async () => {
      const table = fixture("utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load_table.txt");
      const calls: string[][] = [];
      const result = await collectNvidiaSmi({
        binary: "/usr/bin/nvidia-smi",
        queryCudaVersion: true,
        run: async (file, args) => {
          assert.equal(file, "/usr/bin/nvidia-smi");
          calls.push(args);
          return args.length === 0 ? table : ROW;
        },
        now: () => NOW,
      });
      assert.deepEqual(calls, [QUERY_ARGS, []]);
      assert.equal(result.inventory[0]!.cudaVersion, "13.1");
    });

    const argsFor = (fields: readonly string[]) => [`--query-gpu=${fields.join(",")}`, "--format=csv,noheader,nounits"];
    const without = (...dropped: string[]) => QUERY_FIELDS.filter((f) => !dropped.includes(f));

    it("queries again without mig.mode.current when a pre-R450 driver rejects it, reading MIG as off", async () => {
      const calls: string[][] = [];
      const result = await collectNvidiaSmi({
        run: async (_file, args) => {
          calls.push(args);
          if (args[0]!.includes("mig.mode.current"))
            throw Object.assign(rejection("mig.mode.current"), {
              stdout: "",
              stderr: 'Field "mig.mode.current" is not a valid field to query.\n\n',
            });
          return "3, GPU-124-124-1241-241241241242341, Tesla V100-SXM2-32GB, 440.64.00, 32510, 0, 0, 0, 35, 41.50, 300.00, 135, [N/A], 0, 0\n";
        },
        now: () => NOW,
      });
      assert.deepEqual(calls, [QUERY_ARGS, argsFor(without("mig.mode.current"))]);
      assert.deepEqual(
        result.inventory.map((g) => [g.index, g.model, g.driverVersion, g.migEnabled]),
        [[3, "Tesla V100-SXM2-32GB", "440.64.00", false]],
      );
      assert.equal(result.samples[0]!.metrics.eccUncorrectedErrors, 0);
      assert.equal(result.warnings.length, 1);
      assert.match(result.warnings[0]!, /nvidia-smi rejected a field \(Field "mig.mode.current" is not a valid field to query\.\)/);
    });

    describe("R610 and later drivers (recorded RTX 2080 SUPER, 610.57.04)", () => {
      it("reports driver 610.57.04 and CUDA 13.3 from the new KMD / CUDA UMD banner, reading the table once", async () => {
        const smi = recordedNvidiaSmi(fixture(R610_QUERY_GPU), fixture(R610_TABLE));
        const collector = new NvidiaSmiCollector({ run: smi.run, now: () => NOW });
        const result = await collector.collect();
        assert.deepEqual(result.warnings, []);
        assert.deepEqual(result.inventory, [
          {
            index: 0,
            uuid: MASKED_UUID,
            model: "NVIDIA GeForce RTX 2080 SUPER",
            memoryBytes: 8192 * MiB,
            driverVersion: "610.57.04",
            cudaVersion: "13.3",
            migEnabled: false,
          },
        ]);
        assert.equal(result.samples[0]!.metrics.powerDrawWatts, 98.14);
        assert.equal(result.samples[0]!.metrics.smClockMhz, 2070);

        const again = await collector.collect();
        assert.equal(again.inventory[0]!.cudaVersion, "13.3");
        assert.deepEqual(smi.calls, [QUERY_ARGS, [], QUERY_ARGS]);
      });

      it("still reports the driver version when the driver rejects driver_version (and mig.mode.current), and remembers", async () => {
        const smi = recordedNvidiaSmi(fixture(R610_QUERY_GPU), fixture(R610_TABLE), ["driver_version", "mig.mode.current"]);
        const collector = new NvidiaSmiCollector({ run: smi.run, now: () => NOW });
        const result = await collector.collect();
        assert.deepEqual(
          result.inventory.map((g) => [g.model, g.driverVersion, g.cudaVersion, g.migEnabled]),
          [["NVIDIA GeForce RTX 2080 SUPER", "610.57.04", "13.3", false]],
        );
        assert.equal(result.samples[0]!.metrics.memoryUsedBytes, 815 * MiB);
        assert.deepEqual(smi.calls, [
          QUERY_ARGS,
          argsFor(without("driver_version")),
          argsFor(without("driver_version", "mig.mode.current")),
          [],
        ]);
        assert.deepEqual(result.warnings, [
          'nvidia-smi rejected a field (Field "driver_version" is not a valid field to query.); querying without "driver_version" from now on, its values are absent',
          'nvidia-smi rejected a field (Field "mig.mode.current" is not a valid field to query.); querying without "mig.mode.current" from now on, its values are absent',
        ]);
        assert.deepEqual(collector.queryFields, without("driver_version", "mig.mode.current"));

        // The next collection asks for the fields that work, once, and says nothing more.
        smi.calls.length = 0;
        const next = await collector.collect();
        assert.deepEqual(smi.calls, [argsFor(without("driver_version", "mig.mode.current"))]);
        assert.deepEqual(next.warnings, []);
        assert.equal(next.inventory[0]!.driverVersion, "610.57.04");
      });

      it("takes the table's driver version where driver_version answers with a deprecation placeholder (595.71.05 banner)", async () => {
        const calls: string[][] = [];
        const result = await collectNvidiaSmi({
          run: async (_file, args) => {
            calls.push(args);
            if (args.length === 0) return fixture(R595_TABLE);
            return "0, GPU-a, NVIDIA GeForce RTX 2080 SUPER, [Requested functionality has been deprecated], 8192, 214, 0, 3, 40, 37.12, 250.00, 300, 37, [N/A], [N/A], [N/A]\n";
          },
          now: () => NOW,
        });
        // Not asked for the CUDA version, the table is read for the driver version all the same.
        assert.deepEqual(calls, [QUERY_ARGS, []]);
        assert.deepEqual(
          result.inventory.map((g) => [g.driverVersion, g.cudaVersion]),
          [["595.71.05", "13.2"]],
        );
        assert.deepEqual(result.warnings, []);
      });

      it("gives up after maxRejectedFields rejections in one collection, naming them", async () => {
        const calls: string[][] = [];
        const collector = new NvidiaSmiCollector({
          maxRejectedFields: 2,
          run: async (_file, args) => {
            calls.push(args);
            throw rejection(
              args[0]!
                .replace(/^--query-gpu=/, "")
                .split(",")
                .at(-1)!,
            );
          },
        });
        await assert.rejects(collector.collect(), {
          message:
            'nvidia-smi rejected the field "ecc.errors.corrected.volatile.total": gave up, 2 fields were dropped already (mig.mode.current, ecc.errors.uncorrected.volatile.total)',
        });
        assert.equal(calls.length, 3);
      });

      it("does not drop uuid or index, nor a field it never asked for", async () => {
        const failing = (field: string) => new NvidiaSmiCollector({ run: async () => Promise.reject(rejection(field)) }).collect();
        await assert.rejects(failing("uuid"), { message: 'nvidia-smi rejected the field "uuid": GPUs cannot be reported without it' });
        await assert.rejects(failing("index"), { message: 'nvidia-smi rejected the field "index": GPUs cannot be reported without it' });
        await assert.rejects(failing("pstate"), { message: 'nvidia-smi rejected the field "pstate": not one this collector asked for' });
      });
    });

    it("says so when nvidia-smi exits 0 and prints nothing, instead of reporting no GPUs", async () => {
      for (const output of ["", "\n", " \r\n\r\n"]) {
        await assert.rejects(collectNvidiaSmi({ run: async () => output }), { message: NVIDIA_SMI_EMPTY_OUTPUT });
      }
      assert.match(NVIDIA_SMI_EMPTY_OUTPUT, /exited 0 but printed nothing/);
    });

    it("never reports a wrong value from output cut short at any byte", async () => {
      const full =
        "0, GPU-aaaaaaaa-0000-0000-0000-000000000000, NVIDIA H200, 590.48.01, 143771, 16959, 87, 45, 36, 295.01, 700.00, 1980, [N/A], 0, 123\n" +
        "1, GPU-aaaaaaaa-0000-0000-0000-000000000001, NVIDIA H200, 590.48.01, 143771, 20480, 91, 52, 41, 612.45, 700.00, 1980, [N/A], 0, 456\n";
      // As a driver without mig.mode.current answers: its last column is a number.
      const fields = without("mig.mode.current");
      const collect = (text: string) =>
        collectNvidiaSmi({
          run: async (_file, args) => (args[0]!.includes("mig.mode") ? Promise.reject(rejection("mig.mode.current")) : text),
          now: () => NOW,
        });
      const expected = await collect(full);
      assert.deepEqual(
        expected.samples.map((s) => s.metrics.eccUncorrectedErrors),
        [123, 456],
      );

      for (let end = 1; end < full.length; end++) {
        const text = full.slice(0, end);
        const got = await collect(text);
        for (const gpu of got.inventory) {
          const want = expected.inventory.find((g) => g.uuid === gpu.uuid);
          assert.ok(want, `cut at ${end}: unknown GPU ${gpu.uuid}`);
          assert.deepEqual(gpu, want, `cut at ${end}`);
        }
        for (const sample of got.samples) {
          const want = expected.samples.find((s) => s.gpuUuid === sample.gpuUuid)!;
          for (const [key, value] of Object.entries(sample.metrics)) {
            assert.equal(value, want.metrics[key as keyof typeof want.metrics], `cut at ${end}: ${key}`);
          }
        }
        // Cut anywhere but after a whole line: the user is told.
        if (!text.endsWith("\n")) assert.ok(got.warnings.length > 1, `cut at ${end}: no warning`);
      }
      assert.deepEqual(parseQueryGpuRows(full.slice(0, -2), fields).warnings, [
        'line 2: ecc.errors.uncorrected.volatile.total: "45" not read: output cut short, this cell may be partial',
      ]);
      assert.match(
        parseQueryGpuRows(full.slice(0, -20), fields).warnings[0]!,
        /^line 2: skipped: expected 15 columns, found 12 \(output cut short: no newline after the last line\): "1, GPU-/,
      );
    });

    it("says how to fix a missing nvidia-smi (injected run rejecting with ENOENT)", async () => {
      const enoent = Object.assign(new Error("spawn nvidia-smi ENOENT"), { code: "ENOENT", errno: -2, syscall: "spawn nvidia-smi" });
      await assert.rejects(
        collectNvidiaSmi({
          run: async () => {
            throw enoent;
          },
        }),
        (error: Error) => {
          assert.equal(error.message, "nvidia-smi not found: install the NVIDIA driver or run the agent with --simulate-gpus N");
          assert.equal(error.message, NVIDIA_SMI_NOT_FOUND);
          assert.equal(error.cause, enoent);
          return true;
        },
      );
    });

    it("says the same when the real execFile cannot find the binary", async () => {
      await assert.rejects(collectNvidiaSmi({ binary: join(tmpdir(), "remotegpu-no-such-dir", "nvidia-smi") }), {
        message: NVIDIA_SMI_NOT_FOUND,
      });
    });

    it("passes on the driver's complaint when nvidia-smi fails", async () => {
      const failure = Object.assign(new Error("Command failed: nvidia-smi"), {
        code: 9,
        stdout:
          "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n\n",
        stderr: "",
      });
      await assert.rejects(
        collectNvidiaSmi({
          run: async () => {
            throw failure;
          },
        }),
        {
          message:
            "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
        },
      );
    });

    describe("through execFile, with a stand-in nvidia-smi script", () => {
      let dir = "";
      before(function () {
        if (process.platform === "win32") this.skip();
        dir = mkdtempSync(join(tmpdir(), "remotegpu-nvidia-smi-"));
      });
      after(() => {
        if (dir) rmSync(dir, { recursive: true, force: true });
      });

      const script = (name: string, body: string) => {
        const file = join(dir, name);
        writeFileSync(file, `#!/bin/sh\n${body}\n`);
        chmodSync(file, 0o755);
        return file;
      };

      it("passes the arguments and reads stdout", async () => {
        const binary = script(
          "nvidia-smi",
          `[ "$1" = "${QUERY_ARGS[0]}" ] && [ "$2" = "${QUERY_ARGS[1]}" ] || { echo "bad args: $*" >&2; exit 2; }\nprintf '%s\\n' '${ROW.trim()}'`,
        );
        const result = await collectNvidiaSmi({ binary, now: () => NOW });
        assert.deepEqual(result.warnings, []);
        assert.equal(result.inventory[0]!.model, "NVIDIA H200");
      });

      it("drops a field that nvidia-smi refuses on stdout with exit status 2, driver version from the R610 table", async () => {
        const table = join(dir, "table.txt");
        writeFileSync(table, fixture(R610_TABLE));
        const row =
          "0, GPU-aaaaaaaa-0000-0000-0000-000000000000, NVIDIA H200, 143771, 16959, 87, 45, 36, 295.01, 700.00, 1980, [N/A], 0, 0, Disabled";
        const binary = script(
          "r610-nvidia-smi",
          [
            'case "$1" in',
            `  *driver_version*) echo 'Field "driver_version" is not a valid field to query.'; echo; exit 2 ;;`,
            `  --query-gpu=*) printf '%s\\n' '${row}' ;;`,
            `  *) cat '${table}' ;;`,
            "esac",
          ].join("\n"),
        );
        const result = await new NvidiaSmiCollector({ binary, now: () => NOW }).collect();
        assert.deepEqual(
          result.inventory.map((g) => [g.model, g.driverVersion, g.cudaVersion, g.migEnabled]),
          [["NVIDIA H200", "610.57.04", "13.3", false]],
        );
        assert.equal(result.warnings.length, 1);
        assert.match(result.warnings[0]!, /querying without "driver_version" from now on/);
      });

      it("fails clearly when nvidia-smi exits 0 without output", async () => {
        await assert.rejects(collectNvidiaSmi({ binary: script("silent-nvidia-smi", "exit 0") }), { message: NVIDIA_SMI_EMPTY_OUTPUT });
      });

      it("gives up after the timeout", async () => {
        const binary = script("slow-nvidia-smi", "exec sleep 5");
        await assert.rejects(collectNvidiaSmi({ binary, timeoutMs: 200 }), { message: "nvidia-smi did not answer within 0.2 s" });
      });
    });
  });
});
