import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { NvidiaSmiCollector } from "../../agent/src/nvidia-smi.js";
import { stopLeftoverLoop } from "../../agent/src/nvidia-smi-loop.js";

// A stand-in nvidia-smi (a shell script): once, it prints two GPUs with 0% utilisation; with
// --loop-ms it runs `loopBody`, whose `row INDEX UUID UTIL` prints one GPU. Every start, and every
// period of a loop, is written to calls.log.
describe("nvidia-smi in loop mode", function () {
  this.timeout(30_000);
  let dir = "";
  before(function () {
    if (process.platform !== "linux") this.skip();
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "remotegpu-nvidia-smi-loop-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const standIn = (loopBody: string) => {
    const file = join(dir, "nvidia-smi");
    const log = join(dir, "calls.log");
    writeFileSync(
      file,
      [
        "#!/bin/sh",
        `log='${log}'`,
        'echo "start $$ $*" >> "$log"',
        'row() { printf \'%s, GPU-%s-0000-0000-0000-000000000000, NVIDIA H200, 590.48.01, 143771, 16959, %s, 45, 36, 295.01, 700.00, 1980, [N/A], 0, 0, Disabled\\n\' "$1" "$2" "$3"; }',
        'case "$3" in',
        '  --loop-ms=*) ms=$(echo "$3" | cut -d= -f2)',
        loopBody,
        "    ;;",
        "  *) row 0 aaaaaaaa 0; row 1 bbbbbbbb 0 ;;",
        "esac",
      ].join("\n"),
    );
    chmodSync(file, 0o755);
    return file;
  };
  // Two GPUs per period with utilisation = the period's number, and an XID event between periods.
  const healthy = [
    "    n=0",
    "    while :; do",
    "      n=$((n+1)); row 0 aaaaaaaa $n; row 1 bbbbbbbb $n",
    '      echo "period $$ $n" >> "$log"',
    '      sleep 0.$(printf %03d "$ms")',
    '      echo "Xid (PCI:0000:00:09): 13, pid=1234, Graphics Exception"',
    "    done",
  ].join("\n");

  const calls = () => {
    const log = join(dir, "calls.log");
    return existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : [];
  };
  const starts = () => calls().filter((l) => l.startsWith("start "));
  const waitFor = async (what: string, ok: () => boolean) => {
    const deadline = Date.now() + 10_000;
    while (!ok()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; calls: ${calls().join(" | ")}`);
      await sleep(20);
    }
    await sleep(100); // for the agent's side to read what was written
  };
  const periods = () => calls().filter((l) => l.startsWith("period ")).length;
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it("starts one nvidia-smi at the period and reads its newest output instead of one per reading", async () => {
    const pidFile = join(dir, "loop.pid");
    const collector = new NvidiaSmiCollector({ binary: standIn(healthy), cudaVersion: false, loopPidFile: pidFile });
    try {
      // The first reading at a period is a one-shot call; the second, too, and it starts the loop.
      assert.equal((await collector.collect(300)).samples.length, 2);
      assert.equal(starts().length, 1);
      const first = await collector.collect(300);
      assert.deepEqual(
        first.samples.map((s) => s.metrics.gpuUtilizationPercent),
        [0, 0],
      );
      assert.deepEqual(first.warnings, []);
      await waitFor("two periods", () => periods() >= 2);
      const second = await collector.collect(300);
      const seen = periods();
      assert.ok(second.samples[0]!.metrics.gpuUtilizationPercent! >= 2, "the newest period's output");
      assert.deepEqual(
        second.inventory.map((g) => g.uuid),
        ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"],
      );
      assert.deepEqual(second.warnings, [], "the XID lines between periods are not GPU rows");
      assert.ok(Date.now() - second.samples[0]!.time.getTime() < 2000, "stamped with when it arrived");
      await waitFor("two more periods", () => periods() >= seen + 2);
      const third = await collector.collect(300);
      assert.ok(third.samples[1]!.metrics.gpuUtilizationPercent! > second.samples[1]!.metrics.gpuUtilizationPercent!);
      assert.ok(third.samples[0]!.time > second.samples[0]!.time);

      // Two calls for the first readings, one loop for the rest.
      const started = starts();
      assert.equal(started.length, 3);
      assert.match(started[2]!, /--query-gpu=index,uuid,.* --format=csv,noheader,nounits --loop-ms=300$/);
      const pid = Number(readFileSync(pidFile, "utf8"));
      assert.equal(started[2]!.split(" ")[1], String(pid));
      collector.close();
      await waitFor("the loop to end", () => !alive(pid));
      assert.equal(existsSync(pidFile), false);
    } finally {
      collector.close();
    }
  });

  it("starts the loop again when the period changes, and reads a GPU that drops out as gone", async () => {
    const dropping = healthy.replace("row 1 bbbbbbbb $n", '[ "$n" -lt 3 ] && row 1 bbbbbbbb $n');
    const collector = new NvidiaSmiCollector({ binary: standIn(dropping), cudaVersion: false });
    try {
      await collector.collect(200);
      await collector.collect(200);
      await waitFor("four periods", () => periods() >= 4);
      const reading = await collector.collect(200);
      assert.deepEqual(
        reading.inventory.map((g) => g.index),
        [0],
      );
      assert.equal(starts().length, 3);

      // A new period: one-shot calls until it was asked for twice, then a loop at it.
      for (let i = 0; i < 2; i++) assert.equal((await collector.collect(400)).inventory.length, 2);
      const loops = () => starts().filter((l) => l.includes("--loop-ms="));
      await waitFor("the new loop", () => loops().length === 2);
      assert.match(loops()[1]!, /--loop-ms=400$/);
      const oldLoop = Number(loops()[0]!.split(" ")[1]);
      await waitFor("the old loop to end", () => !alive(oldLoop));
    } finally {
      collector.close();
    }
  });

  it("starts a loop that dies again, and after three that gave nothing, runs nvidia-smi once per reading", async () => {
    const broken = ['    echo "Failed to initialize NVML: Unknown Error" >&2', '    echo "exit $$" >> "$log"', "    exit 255"].join("\n");
    const collector = new NvidiaSmiCollector({ binary: standIn(broken), cudaVersion: false });
    const exits = () => calls().filter((l) => l.startsWith("exit ")).length;
    try {
      const warnings: string[][] = [];
      for (let i = 1; i <= 6; i++) {
        const reading = await collector.collect(200);
        assert.equal(reading.inventory.length, 2);
        warnings.push(reading.warnings);
        if (i >= 2 && i <= 4) await waitFor(`loop ${i - 1} to exit`, () => exits() >= i - 1);
      }
      const trouble = 'exited with status 255; last said: "Failed to initialize NVML: Unknown Error"';
      assert.deepEqual(warnings, [
        [],
        [],
        [`nvidia-smi --loop-ms=200 gives no readings (${trouble}); starting it again`],
        [`nvidia-smi --loop-ms=200 gives no readings (${trouble}); starting it again`],
        [
          `nvidia-smi --loop-ms=200 gives no readings (${trouble}); 3 loops in a row gave none, running nvidia-smi once per reading from now on`,
        ],
        [],
      ]);
      const started = starts();
      assert.equal(started.length, 9, "six one-shot calls and three loops");
      assert.equal(started.filter((l) => l.includes("--loop-ms=")).length, 3);
    } finally {
      collector.close();
    }
  });

  it("runs once per reading when asked to, or when no period is given", async () => {
    const collector = new NvidiaSmiCollector({ binary: standIn(healthy), cudaVersion: false, loop: false });
    await collector.collect(200);
    await collector.collect(200);
    await collector.collect(200);
    const unasked = new NvidiaSmiCollector({ binary: standIn(healthy), cudaVersion: false });
    await unasked.collect();
    await unasked.collect();
    assert.equal(starts().length, 5);
    assert.equal(starts().filter((l) => l.includes("--loop-ms=")).length, 0);
  });

  it("stops the loop a killed agent left behind, and nothing else its pid file names", async () => {
    const binary = standIn(healthy);
    const pidFile = join(dir, "loop.pid");
    const leftover = spawn(binary, ["--query-gpu=index,uuid", "--format=csv,noheader,nounits", "--loop-ms=500"], { stdio: "ignore" });
    const other = spawn("sleep", ["30"], { stdio: "ignore" });
    try {
      await waitFor("the leftover loop", () => periods() >= 1);
      writeFileSync(pidFile, `${leftover.pid}\n`);
      stopLeftoverLoop(pidFile);
      await waitFor("the leftover loop to end", () => leftover.exitCode !== null || leftover.signalCode !== null);
      assert.equal(leftover.signalCode, "SIGTERM");
      assert.equal(existsSync(pidFile), false);

      writeFileSync(pidFile, `${other.pid}\n`);
      stopLeftoverLoop(pidFile);
      await sleep(200);
      assert.equal(other.exitCode, null);
      assert.equal(other.signalCode, null);
    } finally {
      leftover.kill();
      other.kill();
    }
  });
});
