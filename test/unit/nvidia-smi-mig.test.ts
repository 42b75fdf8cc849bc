import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import {
  migDeviceInventoryIndex,
  parseMigListing,
  parseMigQuery,
  parseMigQueryXml,
  withMigDevices,
  type MigListing,
  type MigQuery,
  type QueriedMigDevice,
} from "../../agent/src/mig.js";
import { canonicalField, NvidiaSmiCollector, parseQueryGpuCsv, QUERY_FIELDS } from "../../agent/src/nvidia-smi.js";
import { parseSimulatedMig, SimulatedGpus } from "../../agent/src/simulated-gpus.js";
import { deniedGpuDevices } from "../../agent/src/workloads.js";
import { agentArgv, ROOT } from "../support/child.js";

const MiB = 1048576;
/** A queried GPU's MIG devices as [device index, GI, CI, MiB total, MiB used]. */
const devicesOf = (gpu: { migDevices: QueriedMigDevice[] }) =>
  gpu.migDevices.map((d) => [d.deviceIndex, d.gpuInstanceId, d.computeInstanceId, d.memoryTotalBytes! / MiB, d.memoryUsedBytes! / MiB]);
const NOW = new Date("2026-07-14T09:00:27.000Z");
const MASKED_GPU = "GPU-00000000-0000-0000-0000-000000000000";
const maskedMig = (n: number) => `MIG-0000000${n}-0000-0000-0000-00000000000${n}`;

/** Recorded outputs, copied byte-for-byte; see test/fixtures/nvidia-smi/SOURCES.md. */
function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/nvidia-smi/${name}`, import.meta.url), "utf8");
}
const H100 = "utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h100-mig__590.48.01";
const H200 = "utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h200-mig__590.48.01";
const A100_XML = "influxdata-telegraf__a100-sxm4-v12.xml";
const A100_LIST = "influxdata-telegraf__issue5812_a100-sxm4-80gb_list.txt";
const A100_OLD_LIST = "DicardoX-Oh_My_TensorRT_ToolKit__readme_a100-pcie-40gb_460.80_list.txt";

/** The four A100s of the telegraf issue as query-gpu would print them (QUERY_FIELDS, noheader, nounits); GPU 0 in MIG mode. */
const A100_QUERY_GPU = [
  "0, GPU-513536b6-7d19-9063-b049-1e69664bb298, NVIDIA A100-SXM4-80GB, 535.54.03, 81920, 50, [N/A], [N/A], 33, 62.15, 400.00, 1410, [N/A], 0, 0, Enabled",
  "1, GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95, NVIDIA A100-SXM4-80GB, 535.54.03, 81920, 4, 0, 0, 30, 60.02, 400.00, 210, [N/A], 0, 0, Disabled",
  "2, GPU-5e375e7e-b41f-155b-dcdc-534524c356fc, NVIDIA A100-SXM4-80GB, 535.54.03, 81920, 4, 0, 0, 31, 59.87, 400.00, 210, [N/A], 0, 0, Disabled",
  "3, GPU-69ec2344-ebac-b028-f88f-452abb3d7f11, NVIDIA A100-SXM4-80GB, 535.54.03, 81920, 4, 0, 0, 29, 61.30, 400.00, 210, [N/A], 0, 0, Disabled",
]
  .join("\n")
  .concat("\n");

/**
 * A stand-in nvidia-smi: `--query-gpu=<fields>` answered from a recorded header CSV (units stripped
 * as `nounits` does) or from ready noheader rows; other argument lists from `answers`, keyed by the
 * arguments joined with spaces ("" is the plain table). A function answer may throw.
 */
function standIn(queryGpu: { csv: string } | { rows: string }, answers: Record<string, string | (() => string)>) {
  const calls: string[][] = [];
  const run = async (_file: string, args: string[]) => {
    calls.push(args);
    if (args[0]?.startsWith("--query-gpu=")) {
      if ("rows" in queryGpu) return `${queryGpu.rows.trimEnd()}\n`;
      const [header, ...rows] = queryGpu.csv.trimEnd().split(/\r?\n/);
      const columns = header!.split(",").map((c) => /^\s*(.*?)(?:\s+\[(.*)\])?\s*$/.exec(c)!);
      const fields = args[0].replace(/^--query-gpu=/, "").split(",");
      const answer = (row: string) => {
        const cells = row.split(",").map((c) => c.trim());
        return fields
          .map((f) => {
            const at = columns.findIndex((c) => c[1] === canonicalField(f));
            const unit = columns[at]![2];
            return unit && cells[at]!.endsWith(` ${unit}`) ? cells[at]!.slice(0, -unit.length - 1) : cells[at]!;
          })
          .join(", ");
      };
      return `${rows.map(answer).join("\n")}\n`;
    }
    const answer = answers[args.join(" ")];
    if (answer === undefined)
      throw Object.assign(new Error("Command failed"), { code: 2, stderr: `unexpected arguments: ${args.join(" ")}` });
    return typeof answer === "function" ? answer() : answer;
  };
  return { run, calls };
}

/** A recorded header CSV with every row's mig.mode.current cell replaced by `mode`. */
function withMigMode(csv: string, mode: string): string {
  const [header, ...rows] = csv.trimEnd().split(/\r?\n/);
  const at = header!.split(",").findIndex((c) => c.trim() === "mig.mode.current");
  assert.ok(at >= 0, "the recording has mig.mode.current");
  const replaced = rows.map((row) =>
    row
      .split(", ")
      .map((cell, i) => (i === at ? mode : cell))
      .join(", "),
  );
  return `${[header, ...replaced].join("\n")}\n`;
}

const QUERY_ARGS = [`--query-gpu=${QUERY_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];

describe("MIG devices in the agent's GPU inventory", () => {
  describe("nvidia-smi -L", () => {
    it("reads the new MIG-<uuid> format under its GPU (H100, 590.48.01)", () => {
      const listing = parseMigListing(fixture(`${H100}__list.txt`));
      assert.deepEqual(listing.warnings, []);
      assert.deepEqual(listing.gpus, [
        {
          index: 0,
          name: "NVIDIA H100 80GB HBM3",
          uuid: MASKED_GPU,
          migDevices: [
            { deviceIndex: 0, profile: "3g.40gb", uuid: maskedMig(0) },
            { deviceIndex: 1, profile: "2g.20gb", uuid: maskedMig(1) },
            { deviceIndex: 2, profile: "1g.10gb", uuid: maskedMig(2) },
            { deviceIndex: 3, profile: "1g.10gb", uuid: maskedMig(3) },
          ],
        },
      ]);
    });

    it("keeps compute-instance profiles as printed (H200: 1c.3g.71gb and 2c.3g.71gb share a GPU instance)", () => {
      const listing = parseMigListing(fixture(`${H200}__list.txt`));
      assert.deepEqual(
        listing.gpus[0]!.migDevices.map((d) => [d.deviceIndex, d.profile]),
        [
          [0, "1c.3g.71gb"],
          [1, "2c.3g.71gb"],
          [2, "2g.35gb"],
          [3, "1g.18gb"],
          [4, "1g.18gb"],
        ],
      );
    });

    it("puts each MIG device under its own GPU on a host where only some GPUs are partitioned", () => {
      const listing = parseMigListing(fixture(A100_LIST));
      assert.deepEqual(
        listing.gpus.map((g) => [g.index, g.uuid, g.migDevices.length]),
        [
          [0, "GPU-513536b6-7d19-9063-b049-1e69664bb298", 4],
          [1, "GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95", 0],
          [2, "GPU-5e375e7e-b41f-155b-dcdc-534524c356fc", 0],
          [3, "GPU-69ec2344-ebac-b028-f88f-452abb3d7f11", 0],
        ],
      );
      assert.equal(listing.gpus[0]!.migDevices[3]!.uuid, "MIG-930574a9-d43a-5d2b-95da-3e68384c8d6b");
    });

    it("reads the R460 MIG-GPU-<uuid>/<gi>/<ci> format with unpadded columns (A100 PCIe, 460.80)", () => {
      const listing = parseMigListing(fixture(A100_OLD_LIST));
      assert.deepEqual(listing.warnings, []);
      assert.equal(listing.gpus[0]!.name, "A100-PCIE-40GB");
      assert.deepEqual(listing.gpus[0]!.migDevices, [
        { deviceIndex: 0, profile: "4g.20gb", uuid: "MIG-GPU-9de3d0e8-33f5-10dc-0c79-2c88a7ab0a23/2/0" },
        { deviceIndex: 1, profile: "2g.10gb", uuid: "MIG-GPU-9de3d0e8-33f5-10dc-0c79-2c88a7ab0a23/3/0" },
        { deviceIndex: 2, profile: "1g.5gb", uuid: "MIG-GPU-9de3d0e8-33f5-10dc-0c79-2c88a7ab0a23/9/0" },
      ]);
    });

    it("refuses what is not -L output, and names a line it does not know", () => {
      assert.throws(() => parseMigListing("No devices were found\n"), /not nvidia-smi -L output/);
      assert.throws(() => parseMigListing(""), /not nvidia-smi -L output/);
      const listing = parseMigListing(`${fixture(`${H100}__list.txt`)}  MPS server running\n`);
      assert.equal(listing.gpus[0]!.migDevices.length, 4);
      assert.deepEqual(listing.warnings, ['nvidia-smi -L line 6: not understood: "  MPS server running"']);
    });
  });

  describe("nvidia-smi -q", () => {
    it("reads each MIG Device block of the H100 recording, not the GPU's own FB memory", () => {
      const query = parseMigQuery(fixture(`${H100}__idle_q.txt`));
      assert.deepEqual(query.warnings, []);
      assert.equal(query.gpus.length, 1);
      const gpu = query.gpus[0]!;
      assert.deepEqual([gpu.busId, gpu.uuid, gpu.minorNumber, gpu.migEnabled], ["00000000:00:09.0", MASKED_GPU, 0, true]);
      assert.deepEqual(devicesOf(gpu), [
        [0, 2, 0, 40448, 26],
        [1, 3, 0, 20096, 17],
        [2, 9, 0, 9984, 9],
        [3, 10, 0, 9984, 9],
      ]);
    });

    it("reads two compute instances of one GPU instance, each showing the instance's memory (H200)", () => {
      const gpu = parseMigQuery(fixture(`${H200}__idle_q.txt`)).gpus[0]!;
      assert.equal(gpu.busId, "00000000:83:00.0");
      assert.deepEqual(devicesOf(gpu), [
        [0, 2, 0, 71424, 22],
        [1, 2, 1, 71424, 22],
        [2, 3, 0, 33280, 17],
        [3, 9, 0, 16384, 9],
        [4, 10, 0, 16384, 9],
      ]);
    });

    it("finds no MIG device on a GPU with MIG mode disabled (H100, 590.48.01)", () => {
      const gpu = parseMigQuery(fixture("utkuozdemir-nvidia_gpu_exporter__linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle_q.txt"))
        .gpus[0]!;
      assert.equal(gpu.migEnabled, false);
      assert.deepEqual(gpu.migDevices, []);
    });

    it("refuses the table and other text that has no GPU section", () => {
      assert.throws(() => parseMigQuery(fixture(`${H100}__load_table.txt`)), /not nvidia-smi -q output/);
    });

    it("reads the same from -q -x <mig_devices> (A100 SXM4 80GB, 535.54.03)", () => {
      const query = parseMigQueryXml(fixture(A100_XML));
      assert.deepEqual(query.warnings, []);
      const gpu = query.gpus[0]!;
      assert.deepEqual(
        [gpu.busId, gpu.uuid, gpu.minorNumber, gpu.migEnabled],
        ["00000000:01:00.0", "GPU-513536b6-7d19-9063-b049-1e69664bb298", 1, true],
      );
      assert.deepEqual(devicesOf(gpu), [
        [0, 3, 0, 19968, 12],
        [1, 4, 0, 19968, 12],
        [2, 5, 0, 19968, 12],
        [3, 6, 0, 19968, 12],
      ]);
      assert.throws(() => parseMigQueryXml(fixture(`${H100}__idle_q.txt`)), /not nvidia-smi -q -x output/);
    });
  });

  describe("merged into inventory and samples", () => {
    const h100 = () => {
      const reading = parseQueryGpuCsv(fixture(`${H100}__load_query-gpu.csv`), undefined, NOW);
      for (const g of reading.inventory) g.cudaVersion = "13.1";
      return withMigDevices(reading, parseMigListing(fixture(`${H100}__list.txt`)), parseMigQuery(fixture(`${H100}__idle_q.txt`)));
    };

    it("lists the H100 and then its four MIG devices, each with its own UUID, index, memory and place", () => {
      const merged = h100();
      assert.deepEqual(merged.warnings, []);
      const [parent, ...slices] = merged.inventory;
      assert.deepEqual(
        [parent!.index, parent!.uuid, parent!.migEnabled, parent!.parentUuid, parent!.memoryBytes / MiB],
        [0, MASKED_GPU, true, undefined, 81559],
      );
      assert.deepEqual(slices[0], {
        index: 1000,
        uuid: maskedMig(0),
        model: "NVIDIA H100 80GB HBM3",
        memoryBytes: 40448 * MiB,
        driverVersion: "590.48.01",
        cudaVersion: "13.1",
        migEnabled: false,
        parentUuid: MASKED_GPU,
        migProfile: "3g.40gb",
        migDeviceIndex: 0,
        gpuInstanceId: 2,
        computeInstanceId: 0,
      });
      assert.deepEqual(
        slices.map((s) => [s.index, s.uuid, s.migProfile, s.gpuInstanceId, s.memoryBytes / MiB]),
        [
          [1000, maskedMig(0), "3g.40gb", 2, 40448],
          [1001, maskedMig(1), "2g.20gb", 3, 20096],
          [1002, maskedMig(2), "1g.10gb", 9, 9984],
          [1003, maskedMig(3), "1g.10gb", 10, 9984],
        ],
      );
    });

    it("samples each MIG device's memory and nothing else; the GPU's own sample is the recorded one", () => {
      const merged = h100();
      const [parent, ...slices] = merged.samples;
      assert.equal(parent!.gpuUuid, MASKED_GPU);
      assert.equal(parent!.metrics.gpuUtilizationPercent, undefined, "nvidia-smi prints [N/A] in MIG mode");
      assert.equal(parent!.metrics.temperatureCelsius, 53);
      assert.equal(parent!.metrics.memoryUsedBytes, 11125 * MiB);
      assert.deepEqual(
        slices.map((s) => [s.gpuUuid, s.index, s.time, s.metrics]),
        [
          [maskedMig(0), 1000, NOW, { memoryUsedBytes: 26 * MiB, memoryTotalBytes: 40448 * MiB }],
          [maskedMig(1), 1001, NOW, { memoryUsedBytes: 17 * MiB, memoryTotalBytes: 20096 * MiB }],
          [maskedMig(2), 1002, NOW, { memoryUsedBytes: 9 * MiB, memoryTotalBytes: 9984 * MiB }],
          [maskedMig(3), 1003, NOW, { memoryUsedBytes: 9 * MiB, memoryTotalBytes: 9984 * MiB }],
        ],
      );
    });

    it("numbers a MIG device 1000 × (its GPU's index + 1) + its device index, after its own GPU", () => {
      assert.equal(migDeviceInventoryIndex(0, 6), 1006);
      assert.equal(migDeviceInventoryIndex(7, 0), 8000);
      const reading = parseQueryGpuCsv(A100_QUERY_GPU, QUERY_FIELDS, NOW);
      const merged = withMigDevices(reading, parseMigListing(fixture(A100_LIST)), parseMigQueryXml(fixture(A100_XML)));
      assert.deepEqual(merged.warnings, []);
      assert.deepEqual(
        merged.inventory.map((g) => [g.index, g.migProfile ?? "whole", g.memoryBytes / MiB]),
        [
          [0, "whole", 81920],
          [1000, "1g.20gb", 19968],
          [1001, "1g.20gb", 19968],
          [1002, "1g.20gb", 19968],
          [1003, "1g.20gb", 19968],
          [1, "whole", 81920],
          [2, "whole", 81920],
          [3, "whole", 81920],
        ],
      );
      assert.deepEqual(
        merged.samples.map((s) => s.index),
        [0, 1000, 1001, 1002, 1003, 1, 2, 3],
      );
    });

    it("gives a GPU in MIG mode without MIG devices none, and says nothing", () => {
      const reading = parseQueryGpuCsv(`${A100_QUERY_GPU.split("\n")[0]}\n`, QUERY_FIELDS, NOW);
      const listing: MigListing = parseMigListing("GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-513536b6-7d19-9063-b049-1e69664bb298)\n");
      const query: MigQuery = {
        gpus: [{ busId: "00000000:01:00.0", uuid: "GPU-513536b6-7d19-9063-b049-1e69664bb298", migEnabled: true, migDevices: [] }],
        warnings: [],
      };
      const merged = withMigDevices(reading, listing, query);
      assert.deepEqual(merged.warnings, []);
      assert.deepEqual(
        merged.inventory.map((g) => [g.index, g.migEnabled]),
        [[0, true]],
      );
      assert.equal(merged.samples.length, 1);
    });

    it("leaves out, with a warning, a MIG device only one of -L and -q knows (re-partitioned in between)", () => {
      const reading = parseQueryGpuCsv(fixture(`${H100}__load_query-gpu.csv`), undefined, NOW);
      const query = parseMigQuery(fixture(`${H100}__idle_q.txt`));
      query.gpus[0]!.migDevices.splice(1, 1);
      const merged = withMigDevices(reading, parseMigListing(fixture(`${H100}__list.txt`)), query);
      assert.deepEqual(
        merged.inventory.map((g) => g.index),
        [0, 1000, 1002, 1003],
      );
      assert.deepEqual(merged.warnings, [
        `GPU 0 (${MASKED_GPU}): MIG device 1 (${maskedMig(1)}) is listed by nvidia-smi -L but not shown by -q: left out`,
      ]);
    });
  });

  describe("NvidiaSmiCollector", () => {
    it("runs -L and -q when a GPU is in MIG mode, at every collection, and lists its MIG devices (recorded H100)", async () => {
      const smi = standIn(
        { csv: fixture(`${H100}__load_query-gpu.csv`) },
        { "": fixture(`${H100}__load_table.txt`), "-L": fixture(`${H100}__list.txt`), "-q": fixture(`${H100}__idle_q.txt`) },
      );
      const collector = new NvidiaSmiCollector({ run: smi.run, now: () => NOW });
      const result = await collector.collect();
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(
        result.inventory.map((g) => [g.index, g.uuid, g.migProfile, g.driverVersion, g.cudaVersion]),
        [
          [0, MASKED_GPU, undefined, "590.48.01", "13.1"],
          [1000, maskedMig(0), "3g.40gb", "590.48.01", "13.1"],
          [1001, maskedMig(1), "2g.20gb", "590.48.01", "13.1"],
          [1002, maskedMig(2), "1g.10gb", "590.48.01", "13.1"],
          [1003, maskedMig(3), "1g.10gb", "590.48.01", "13.1"],
        ],
      );
      assert.deepEqual(Object.keys(result.samples[1]!.metrics).sort(), ["memoryTotalBytes", "memoryUsedBytes"]);
      await collector.collect();
      assert.deepEqual(smi.calls, [QUERY_ARGS, [], ["-L"], ["-q"], QUERY_ARGS, ["-L"], ["-q"]]);
    });

    it("runs neither on a host without MIG mode", async () => {
      const rows = A100_QUERY_GPU.split("\n").slice(1).join("\n");
      const smi = standIn({ rows }, { "": fixture(`${H100}__load_table.txt`) });
      const result = await new NvidiaSmiCollector({ run: smi.run, now: () => NOW }).collect();
      assert.equal(result.inventory.length, 3);
      assert.deepEqual(smi.calls, [QUERY_ARGS, []]);
    });

    it("keeps a GPU in MIG mode, with its MIG devices, through a reading whose mig.mode.current is N/A (recorded H100)", async () => {
      const enabled = fixture(`${H100}__load_query-gpu.csv`);
      const queryGpu = { csv: enabled };
      const smi = standIn(queryGpu, {
        "": fixture(`${H100}__load_table.txt`),
        "-L": fixture(`${H100}__list.txt`),
        "-q": fixture(`${H100}__idle_q.txt`),
      });
      const collector = new NvidiaSmiCollector({ run: smi.run, now: () => NOW });
      assert.equal((await collector.collect()).inventory.length, 5);

      for (const glitch of ["[N/A]", "[Unknown Error]", "ERR!"]) {
        queryGpu.csv = withMigMode(enabled, glitch);
        const result = await collector.collect();
        assert.deepEqual(
          result.inventory.map((g) => [g.index, g.migEnabled]),
          [
            [0, true],
            [1000, false],
            [1001, false],
            [1002, false],
            [1003, false],
          ],
        );
        assert.deepEqual(result.warnings, [
          `line 1: GPU 0 (${MASKED_GPU}): mig.mode.current reads ${JSON.stringify(glitch)}: still in MIG mode, as last read`,
        ]);
      }
      assert.deepEqual(smi.calls.slice(-2), [["-L"], ["-q"]]);
    });

    it("takes a GPU out of MIG mode on an explicit Disabled only, and never puts one in MIG mode it was not seen in", async () => {
      const enabled = fixture(`${H100}__load_query-gpu.csv`);
      const queryGpu = { csv: withMigMode(enabled, "[N/A]") };
      const smi = standIn(queryGpu, {
        "": fixture(`${H100}__load_table.txt`),
        "-L": fixture(`${H100}__list.txt`),
        "-q": fixture(`${H100}__idle_q.txt`),
      });
      const collector = new NvidiaSmiCollector({ run: smi.run, now: () => NOW });
      const modes = async () => (await collector.collect()).inventory.map((g) => [g.index, g.migEnabled]);
      assert.deepEqual(await modes(), [[0, false]]);
      queryGpu.csv = enabled;
      assert.equal((await modes()).length, 5);
      queryGpu.csv = withMigMode(enabled, "Disabled");
      assert.deepEqual(await modes(), [[0, false]]);
      queryGpu.csv = withMigMode(enabled, "[N/A]");
      assert.deepEqual(await modes(), [[0, false]]);
      assert.equal(smi.calls.filter((args) => args[0] === "-L").length, 1);
    });

    it("keeps a GPU in MIG mode, without MIG devices, when its mode is N/A and nvidia-smi -L then fails", async () => {
      const enabled = fixture(`${H100}__load_query-gpu.csv`);
      const queryGpu = { csv: enabled };
      let listFails = false;
      const smi = standIn(queryGpu, {
        "": fixture(`${H100}__load_table.txt`),
        "-L": () => {
          if (listFails) throw Object.assign(new Error("Command failed: nvidia-smi -L"), { code: 15, stdout: "", stderr: "GPU is lost\n" });
          return fixture(`${H100}__list.txt`);
        },
        "-q": fixture(`${H100}__idle_q.txt`),
      });
      const collector = new NvidiaSmiCollector({ run: smi.run, now: () => NOW });
      await collector.collect();
      queryGpu.csv = withMigMode(enabled, "[N/A]");
      listFails = true;
      const result = await collector.collect();
      assert.deepEqual(
        result.inventory.map((g) => [g.uuid, g.migEnabled, g.parentUuid]),
        [[MASKED_GPU, true, undefined]],
      );
      assert.deepEqual(result.warnings, [
        `line 1: GPU 0 (${MASKED_GPU}): mig.mode.current reads "[N/A]": still in MIG mode, as last read`,
        "MIG devices not read, this reading has none (GPUs in MIG mode are still reported so): nvidia-smi -L failed: GPU is lost",
      ]);
    });

    it("keeps the GPU in MIG mode, without MIG devices, and warns when nvidia-smi -L fails", async () => {
      const smi = standIn(
        { csv: fixture(`${H100}__load_query-gpu.csv`) },
        {
          "": fixture(`${H100}__load_table.txt`),
          "-L": () => {
            throw Object.assign(new Error("Command failed: nvidia-smi -L"), {
              code: 9,
              stdout: "Unable to determine the device handle for GPU0000:00:09.0: Unknown Error\n",
              stderr: "",
            });
          },
          "-q": fixture(`${H100}__idle_q.txt`),
        },
      );
      const result = await new NvidiaSmiCollector({ run: smi.run, now: () => NOW }).collect();
      assert.deepEqual(
        result.inventory.map((g) => [g.uuid, g.migEnabled]),
        [[MASKED_GPU, true]],
      );
      assert.equal(result.samples.length, 1);
      assert.deepEqual(result.warnings, [
        "MIG devices not read, this reading has none (GPUs in MIG mode are still reported so): nvidia-smi -L failed: Unable to determine the device handle for GPU0000:00:09.0: Unknown Error",
      ]);
    });

    it("keeps the GPU in MIG mode, without MIG devices, and warns when nvidia-smi -q is not what it expects", async () => {
      const smi = standIn(
        { csv: fixture(`${H100}__load_query-gpu.csv`) },
        { "": fixture(`${H100}__load_table.txt`), "-L": fixture(`${H100}__list.txt`), "-q": "No devices were found\n" },
      );
      const result = await new NvidiaSmiCollector({ run: smi.run, now: () => NOW }).collect();
      assert.equal(result.inventory.length, 1);
      assert.match(
        result.warnings[0]!,
        /^MIG devices not read, this reading has none \(GPUs in MIG mode are still reported so\): not nvidia-smi -q output/,
      );
    });

    it("reads -q -x where -q shows none of the MIG devices -L lists", async () => {
      const qText =
        "==============NVSMI LOG==============\n\nGPU 00000000:01:00.0\n    GPU UUID : GPU-513536b6-7d19-9063-b049-1e69664bb298\n";
      const smi = standIn(
        { rows: A100_QUERY_GPU },
        { "": fixture(`${H100}__load_table.txt`), "-L": fixture(A100_LIST), "-q": qText, "-q -x": fixture(A100_XML) },
      );
      const result = await new NvidiaSmiCollector({ run: smi.run, now: () => NOW }).collect();
      assert.deepEqual(result.warnings, []);
      assert.deepEqual(smi.calls.slice(2), [["-L"], ["-q"], ["-q", "-x"]]);
      assert.deepEqual(
        result.inventory.filter((g) => g.parentUuid).map((g) => [g.uuid, g.gpuInstanceId]),
        [
          ["MIG-ce861fb0-a248-58ce-a9a8-f9adbc22a66a", 3],
          ["MIG-a45882f0-9215-5733-a0c1-49286ab31cb5", 4],
          ["MIG-f00d722c-f4e1-52c9-aa31-750441ae1bfe", 5],
          ["MIG-930574a9-d43a-5d2b-95da-3e68384c8d6b", 6],
        ],
      );
    });
  });

  describe("simulated MIG (--simulate-mig)", () => {
    it("puts every simulated GPU in MIG mode with the slices asked for, numbered as the driver would", async () => {
      const gpus = new SimulatedGpus(2, "host-a", { mig: parseSimulatedMig("3g.40gb:1,1g.10gb:4") });
      const { inventory, samples } = await gpus.collect(NOW);
      assert.deepEqual(
        inventory.map((g) => [g.index, g.migEnabled, g.migProfile, g.migDeviceIndex, g.gpuInstanceId, g.memoryBytes / MiB]),
        [
          [0, true, undefined, undefined, undefined, 81559],
          [1000, false, "3g.40gb", 0, 2, 40448],
          [1001, false, "1g.10gb", 1, 9, 9984],
          [1002, false, "1g.10gb", 2, 10, 9984],
          [1003, false, "1g.10gb", 3, 11, 9984],
          [1004, false, "1g.10gb", 4, 12, 9984],
          [1, true, undefined, undefined, undefined, 81559],
          [2000, false, "3g.40gb", 0, 2, 40448],
          [2001, false, "1g.10gb", 1, 9, 9984],
          [2002, false, "1g.10gb", 2, 10, 9984],
          [2003, false, "1g.10gb", 3, 11, 9984],
          [2004, false, "1g.10gb", 4, 12, 9984],
        ],
      );
      const [gpu0] = inventory;
      for (const s of inventory.slice(1, 6)) {
        assert.equal(s.parentUuid, gpu0!.uuid);
        assert.equal(s.model, gpu0!.model);
        assert.match(s.uuid, /^MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      }
      assert.equal(new Set(inventory.map((g) => g.uuid)).size, inventory.length);

      assert.deepEqual(
        samples.map((s) => s.index),
        inventory.map((g) => g.index),
      );
      const slice = samples[1]!;
      assert.deepEqual(Object.keys(slice.metrics).sort(), ["memoryTotalBytes", "memoryUsedBytes"]);
      assert.ok(slice.metrics.memoryUsedBytes! > 0 && slice.metrics.memoryUsedBytes! < slice.metrics.memoryTotalBytes!);
      const parent = samples[0]!;
      assert.equal(parent.metrics.gpuUtilizationPercent, undefined);
      assert.equal(parent.metrics.memoryUtilizationPercent, undefined);
      const slicesUsed = samples.slice(1, 6).reduce((n, s) => n + s.metrics.memoryUsedBytes!, 0);
      assert.ok(parent.metrics.memoryUsedBytes! >= slicesUsed);
      assert.ok(parent.metrics.powerDrawWatts! > 0);
    });

    it("gives seven 1g.10gb the GPU instances 7 to 13, and whole GPUs without the option", async () => {
      const { inventory } = await new SimulatedGpus(1, "host-a", { mig: parseSimulatedMig("1g.10gb:7") }).collect(NOW);
      assert.deepEqual(
        inventory.slice(1).map((g) => [g.migDeviceIndex, g.gpuInstanceId]),
        [0, 1, 2, 3, 4, 5, 6].map((i) => [i, 7 + i]),
      );
      const whole = await new SimulatedGpus(1, "host-a").collect(NOW);
      assert.deepEqual(
        whole.inventory.map((g) => [g.uuid, g.migEnabled]),
        [[inventory[0]!.uuid, false]],
      );
      assert.equal(typeof whole.samples[0]!.metrics.gpuUtilizationPercent, "number");
    });

    it("keeps the same MIG UUIDs for the same host and layout, and others for another host", async () => {
      const uuids = async (seed: string) =>
        (await new SimulatedGpus(2, seed, { mig: parseSimulatedMig("2g.20gb:3") }).collect(NOW)).inventory.map((g) => g.uuid);
      assert.deepEqual(await uuids("host-a"), await uuids("host-a"));
      const other = new Set(await uuids("host-b"));
      assert.ok((await uuids("host-a")).every((u) => !other.has(u)));
    });

    it("refuses profiles that do not look like MIG profiles, bad counts, and more than a GPU holds", () => {
      assert.deepEqual(parseSimulatedMig("1c.3g.40gb:1,1g.10gb+me:1"), [
        { profile: "1c.3g.40gb", count: 1 },
        { profile: "1g.10gb+me", count: 1 },
      ]);
      assert.throws(() => parseSimulatedMig("h100:1"), /"h100" is not a MIG profile/);
      assert.throws(() => parseSimulatedMig("1g.10g:1"), /"1g.10g" is not a MIG profile/);
      assert.throws(() => parseSimulatedMig("10g.10gb:1"), /"10g.10gb" is not a MIG profile/);
      assert.throws(() => parseSimulatedMig("1g.10gb"), /"1g.10gb" is not <profile>:<count>/);
      assert.throws(() => parseSimulatedMig("1g.10gb:0"), /the count must be 1 or more/);
      assert.throws(() => parseSimulatedMig("1g.10gb:8"), /8 compute slices in all .* more than the 7 of a GPU/);
      assert.throws(() => parseSimulatedMig("3g.40gb:2,2g.20gb:1"), /8 compute slices in all/);
      assert.throws(() => parseSimulatedMig("1g.20gb:7"), /140 GB in all .* more than the 80 GB of an H100/);
    });

    describe("the agent's flags", function () {
      this.timeout(60_000);
      const run = promisify(execFile);
      const agent = async (...flags: string[]) => {
        const base = ["--server", "http://127.0.0.1:1", "--host-id", "h-1", "--token", "t"];
        try {
          const { stdout } = await run(process.execPath, agentArgv([...base, ...flags]), { cwd: ROOT, timeout: 30_000 });
          return { code: 0, out: stdout };
        } catch (err) {
          const e = err as { code: number; stderr: string };
          return { code: e.code, out: e.stderr };
        }
      };

      it("refuses --simulate-mig without --simulate-gpus, and a bad layout, before starting", async () => {
        const alone = await agent("--simulate-mig", "1g.10gb:7");
        assert.equal(alone.code, 2);
        assert.match(alone.out, /agent: --simulate-mig: only with --simulate-gpus N/);
        const tooMany = await agent("--simulate-gpus", "1", "--simulate-mig", "3g.40gb:3");
        assert.equal(tooMany.code, 2);
        assert.match(tooMany.out, /agent: --simulate-mig: 9 compute slices in all/);
        assert.doesNotMatch(tooMany.out, /only with --simulate-gpus/);
      });

      it("documents --simulate-mig in --help", async () => {
        const help = await agent("--help");
        assert.equal(help.code, 0);
        assert.match(help.out, /--simulate-mig PROFILE:COUNT/);
      });
    });
  });

  describe("process mode's GPU device rules", () => {
    const minors = new Map([
      ["GPU-a", 0],
      ["GPU-b", 1],
      ["MIG-a0", 0],
      ["MIG-a1", 0],
    ]);

    it("leaves a MIG device's parent open and fences the other GPUs", () => {
      assert.deepEqual(deniedGpuDevices(minors, ["MIG-a1"]), ["195:1"]);
    });

    it("fences every GPU but the one given, and all of them when given none", () => {
      assert.deepEqual(deniedGpuDevices(minors, ["GPU-b"]), ["195:0"]);
      assert.deepEqual(deniedGpuDevices(minors, []), ["195:0", "195:1"]);
      assert.deepEqual(deniedGpuDevices(undefined, ["GPU-a"]), []);
    });
  });
});
