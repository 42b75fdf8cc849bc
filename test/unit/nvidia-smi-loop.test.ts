import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { NvidiaSmiCollector } from "../../agent/src/nvidia-smi.js";
import { NewestRows, stopLeftoverLoop } from "../../agent/src/nvidia-smi-loop.js";

describe("NewestRows", () => {
  const at = (s: number) => new Date(1_000_000 + s * 1000);
  const read = (rows: NewestRows, indices: number[], afterSeq: number) => {
    const r = rows.reading(indices, afterSeq);
    return r && { text: r.text, at: r.at, seq: r.seq };
  };

  it("keeps each GPU's newest row from output in pieces, and gives a reading once every GPU has a later one", () => {
    const rows = new NewestRows();
    rows.push("0, GPU-a, 1", at(1)); // half a line: nothing yet
    assert.equal(rows.reading([0], 0), undefined);
    rows.push("0\n", at(2));
    rows.push("Xid (PCI:0000:00:09): 79, pid=0, GPU has fallen off the bus.\n", at(3));
    assert.equal(rows.reading([0, 1], 0), undefined, "GPU 1 has no row yet");
    rows.push("1, GPU-b, 11\n", at(4));
    assert.deepEqual(read(rows, [0, 1], 0), { text: "0, GPU-a, 10\n1, GPU-b, 11\n", at: at(2), seq: 2 });
    assert.equal(rows.said, "Xid (PCI:0000:00:09): 79, pid=0, GPU has fallen off the bus.");

    // The next reading needs a row of each GPU later than the last reading's newest, whatever the
    // wall clock says (here it stepped back).
    assert.equal(rows.reading([0, 1], 2), undefined);
    rows.push("0, GPU-a, 20\n", at(-5));
    assert.equal(rows.reading([0, 1], 2), undefined, "GPU 1's row is the one already read");
    rows.push("1, GPU-b, 21\r\n", at(-4));
    assert.deepEqual(read(rows, [0, 1], 2), { text: "0, GPU-a, 20\n1, GPU-b, 21\n", at: at(-5), seq: 4 });
    assert.equal(rows.lastSeq, 4);
    assert.equal(rows.reading([], 0), undefined);
  });

  it("tells a GPU index it was not told to expect", () => {
    const rows = new NewestRows();
    rows.push("0, GPU-a\n1, GPU-b\n", at(1));
    assert.equal(rows.listsOthers([0, 1]), undefined);
    assert.equal(rows.listsOthers([0]), 1);
  });
});

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

  it("starts one nvidia-smi at the period and takes each reading from it, waiting for the next rather than repeating one", async () => {
    const pidFile = join(dir, "loop.pid");
    const collector = new NvidiaSmiCollector({ binary: standIn(healthy), cudaVersion: false, loopPidFile: pidFile });
    const utilisation = (r: { samples: { metrics: { gpuUtilizationPercent?: number } }[] }) =>
      r.samples.map((s) => s.metrics.gpuUtilizationPercent);
    try {
      // The first reading at a period is a one-shot call; the second, too, and it starts the loop.
      assert.deepEqual(utilisation(await collector.collect(600)), [0, 0]);
      assert.equal(starts().length, 1);
      assert.equal((await collector.collect(600)).samples.length, 2);
      await waitFor("two periods", () => periods() >= 2);
      const asked = Date.now();
      const second = await collector.collect(600);
      assert.ok(second.samples[0]!.time.getTime() < asked, "stamped with when its rows came, before it was asked for");
      const n = second.samples[0]!.metrics.gpuUtilizationPercent!;
      assert.ok(n >= 2, "the newest period's output");
      assert.deepEqual(
        second.inventory.map((g) => g.uuid),
        ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"],
      );
      assert.deepEqual(second.warnings, [], "the XID lines between periods are not GPU rows");
      // Asked again at once, it waits for the next period instead of giving the same rows twice.
      const third = await collector.collect(600);
      assert.deepEqual(utilisation(third), [n + 1, n + 1]);
      const gap = third.samples[0]!.time.getTime() - second.samples[0]!.time.getTime();
      assert.ok(gap >= 500, `stamped with when its rows came, a period after the last (${gap} ms)`);
      // Asked twice at once (as overlapping heartbeat timers would), one after the other.
      const [a, b] = await Promise.all([collector.collect(600), collector.collect(600)]);
      assert.deepEqual(
        [utilisation(a), utilisation(b)],
        [
          [n + 2, n + 2],
          [n + 3, n + 3],
        ],
      );

      // Two calls for the first readings, one loop for the rest.
      const started = starts();
      assert.equal(started.length, 3);
      assert.match(started[2]!, /--query-gpu=index,uuid,.* --format=csv,noheader,nounits --loop-ms=600$/);
      const [pid, startTime] = readFileSync(pidFile, "utf8").trim().split(" ");
      assert.equal(started[2]!.split(" ")[1], pid);
      assert.equal(startTime, readFileSync(`/proc/${pid}/stat`, "utf8").split(" ")[21], "field 22 of /proc/<pid>/stat");

      // Closed while a reading waits for the loop (the agent is stopping): the reading comes from a
      // one-shot call, without a warning, and no loop starts after.
      const waiting = collector.collect(600);
      await sleep(50);
      collector.close();
      assert.deepEqual((await waiting).warnings, []);
      await waitFor("the loop to end", () => !alive(Number(pid)));
      assert.equal(existsSync(pidFile), false);
      await collector.collect(600);
      await collector.collect(600);
      assert.equal(starts().length, 6);
      assert.equal(starts().filter((l) => l.includes("--loop-ms=")).length, 1);
    } finally {
      collector.close();
    }
  });

  it("starts the loop again when the period changes or it lists a GPU the call before it did not", async () => {
    const growing = healthy.replace("row 1 bbbbbbbb $n", 'row 1 bbbbbbbb $n; [ "$ms" = 400 ] && [ "$n" -ge 3 ] && row 2 cccccccc $n');
    const collector = new NvidiaSmiCollector({ binary: standIn(growing), cudaVersion: false });
    const loops = () => starts().filter((l) => l.includes("--loop-ms="));
    try {
      await collector.collect(200);
      await collector.collect(200);
      await waitFor("the loop's first period", () => periods() >= 1);
      const looped = await collector.collect(200);
      assert.ok(
        looped.samples.every((g) => g.metrics.gpuUtilizationPercent! >= 1),
        "read from the loop",
      );

      // A new period: one-shot calls until it was asked for twice, then a loop at it.
      for (let i = 0; i < 2; i++) assert.deepEqual((await collector.collect(400)).warnings, []);
      await waitFor("the new loop", () => loops().length === 2);
      assert.match(loops()[1]!, /--loop-ms=400$/);
      await waitFor("the old loop to end", () => !alive(Number(loops()[0]!.split(" ")[1])));

      const newLoop = loops()[1]!.split(" ")[1];
      await waitFor("a third GPU in the new loop", () => calls().includes(`period ${newLoop} 3`));
      const reading = await collector.collect(400);
      assert.deepEqual(reading.warnings, ["nvidia-smi --loop-ms=400 lists GPU 2, which the call before it did not; starting it again"]);
      assert.equal(reading.inventory.length, 2, "read by a one-shot call (this stand-in lists two)");
    } finally {
      collector.close();
    }
  });

  it("replaces a loop that ends, and after three in a row, runs nvidia-smi once per reading", async () => {
    const broken = ['    echo "Failed to initialize NVML: Unknown Error" >&2', '    echo "exit $$" >> "$log"', "    exit 255"].join("\n");
    const collector = new NvidiaSmiCollector({ binary: standIn(broken), cudaVersion: false });
    const loopsEnded = () => starts().every((l) => !l.includes("--loop-ms=") || !alive(Number(l.split(" ")[1])));
    try {
      const warnings: string[][] = [];
      for (let i = 1; i <= 6; i++) {
        const reading = await collector.collect(200);
        assert.equal(reading.inventory.length, 2);
        warnings.push(reading.warnings);
        await waitFor("the loops to end", loopsEnded);
      }
      const trouble = 'exited with status 255; last said: "Failed to initialize NVML: Unknown Error"';
      assert.deepEqual(warnings, [
        [],
        [],
        [`nvidia-smi --loop-ms=200 gives no readings (${trouble}); starting it again`],
        [`nvidia-smi --loop-ms=200 gives no readings (${trouble}); starting it again`],
        [
          `nvidia-smi --loop-ms=200 gives no readings (${trouble}); 3 loops replaced in a row, running nvidia-smi once per reading from now on`,
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

  it("counts a loop that gave readings and then stopped as replaced too", async () => {
    // Each loop gives one period, then ends.
    const once = ["    row 0 aaaaaaaa 7; row 1 bbbbbbbb 7", '    echo "period $$ 1" >> "$log"', "    exit 0"].join("\n");
    const collector = new NvidiaSmiCollector({ binary: standIn(once), cudaVersion: false });
    const loops = () => starts().filter((l) => l.includes("--loop-ms="));
    const allEnded = () => loops().every((l) => !alive(Number(l.split(" ")[1])));
    try {
      const warnings: string[] = [];
      const utilisation: number[] = [];
      for (let i = 0; i < 9; i++) {
        await waitFor("the loops to end", allEnded);
        const reading = await collector.collect(200);
        warnings.push(...reading.warnings);
        utilisation.push(reading.samples[0]!.metrics.gpuUtilizationPercent!);
      }
      // one-shot, one-shot (loop 1), loop 1, replaced (loop 2), loop 2, replaced (loop 3), loop 3, replaced: no more loops, one-shot.
      assert.deepEqual(utilisation, [0, 0, 7, 0, 7, 0, 7, 0, 0]);
      assert.equal(loops().length, 3);
      assert.equal(warnings.length, 3);
      assert.match(warnings[2]!, /exited with status 0\); 3 loops replaced in a row, running nvidia-smi once per reading from now on$/);
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
      // Field 22 of /proc/<pid>/stat; these processes' names (field 2) have no spaces.
      const startTime = (pid: number) => readFileSync(`/proc/${pid}/stat`, "utf8").split(" ")[21];
      // A pid file whose start time is not the process's (its pid was reused): left alone.
      writeFileSync(pidFile, `${leftover.pid} 1\n`);
      stopLeftoverLoop(pidFile);
      await sleep(200);
      assert.equal(leftover.exitCode, null);
      writeFileSync(pidFile, `${leftover.pid} ${startTime(leftover.pid!)}\n`);
      stopLeftoverLoop(pidFile);
      await waitFor("the leftover loop to end", () => leftover.exitCode !== null || leftover.signalCode !== null);
      assert.equal(leftover.signalCode, "SIGTERM");
      assert.equal(existsSync(pidFile), false);

      writeFileSync(pidFile, `${other.pid} ${startTime(other.pid!)}\n`);
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
