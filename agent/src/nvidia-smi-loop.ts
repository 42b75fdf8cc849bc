/**
 * One `nvidia-smi --query-gpu=… --format=csv,noheader,nounits --loop-ms=<period>` kept running, its
 * output read as it comes. Every nvidia-smi start initialises NVML for all GPUs, which on servers
 * with many GPUs takes seconds of CPU (1.5-15 s a call are reported, persistence mode or not); in
 * loop mode that is paid once and each period costs only the queries.
 *
 * Output is kept as the newest row of each GPU index: a reading is a row for each GPU the last
 * one-shot call listed, all of them newer than the rows of the reading before. Rows may arrive in
 * pieces or with time between them (a slow GPU); lines that are not GPU rows (nvidia-smi prints XID
 * and ECC events between periods in loop mode) are kept only as the last thing said, for the log.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";

export interface LoopReading {
  /** One row per GPU, as one-shot query-gpu output. */
  text: string;
  /** When its oldest row arrived: the time of its samples. */
  at: Date;
  /** When its newest row arrived: the next reading's rows must all be newer. */
  through: Date;
}

/** The GPU index a query-gpu row starts with (index is always the first field asked for). */
export function rowIndex(line: string): number | undefined {
  const index = /^\s*(\d+)\s*,/.exec(line);
  return index ? Number(index[1]) : undefined;
}

/** The newest row of each GPU index, from query-gpu output that arrives in pieces. */
export class NewestRows {
  private partial = "";
  private readonly rows = new Map<number, { line: string; at: Date }>();
  /** The last line that was not a GPU row. */
  said = "";

  push(chunk: string, at: Date): void {
    const lines = (this.partial + chunk).split(/\r?\n/);
    this.partial = lines.pop()!;
    for (const line of lines) {
      const index = rowIndex(line);
      if (index !== undefined) this.rows.set(index, { line, at });
      else if (line.trim() !== "") this.said = line.trim();
    }
  }

  /** A row for each of `indices`, all newer than `after`; undefined while one is missing or older. */
  reading(indices: readonly number[], after: Date): LoopReading | undefined {
    const picked = indices.map((i) => this.rows.get(i));
    if (picked.length === 0 || picked.some((r) => r === undefined || r.at <= after)) return undefined;
    const times = picked.map((r) => r!.at.getTime());
    return {
      text: picked.map((r) => `${r!.line}\n`).join(""),
      at: new Date(Math.min(...times)),
      through: new Date(Math.max(...times)),
    };
  }

  /** Whether a row came for a GPU index not among `indices`: the GPUs are not the ones expected. */
  listsOthers(indices: readonly number[]): number | undefined {
    for (const i of this.rows.keys()) if (!indices.includes(i)) return i;
    return undefined;
  }
}

export interface QueryGpuLoopOptions {
  binary: string;
  fields: readonly string[];
  periodMs: number;
  now: () => Date;
  /** Keeps the child's pid (and start time), for stopLeftoverLoop after an agent that was killed. */
  pidFile?: string;
}

export class QueryGpuLoop {
  readonly fields: readonly string[];
  readonly periodMs: number;
  readonly startedAt: Date;
  readonly rows = new NewestRows();
  private readonly child: ChildProcess;
  private readonly killOnExit = () => this.stop();
  private exitedWith?: string;
  private wake?: () => void;

  constructor(private readonly o: QueryGpuLoopOptions) {
    this.fields = o.fields;
    this.periodMs = o.periodMs;
    this.startedAt = o.now();
    const args = [`--query-gpu=${o.fields.join(",")}`, "--format=csv,noheader,nounits", `--loop-ms=${o.periodMs}`];
    this.child = spawn(o.binary, args, { stdio: ["ignore", "pipe", "pipe"], windowsHide: true });
    this.child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      this.rows.push(chunk, o.now());
      this.wake?.();
    });
    this.child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      const last = chunk.trim().split(/\r?\n/).pop()?.trim();
      if (last) this.rows.said = last;
    });
    this.child.on("error", (err) => this.ended(err.message));
    this.child.on("exit", (code, signal) => this.ended(signal ? `killed by ${signal}` : `exited with status ${code}`));
    process.on("exit", this.killOnExit);
    const pid = this.child.pid;
    if (o.pidFile && pid !== undefined) {
      try {
        writeFileSync(o.pidFile, `${pid} ${startTimeOf(pid) ?? ""}\n`);
      } catch {
        // Without it only a loop left by a killed agent goes unstopped: readings go on.
      }
    }
  }

  /**
   * The first reading of `indices` newer than `after`, waiting up to `waitMs` for it; undefined if
   * none came by then or the loop ended.
   */
  async next(indices: readonly number[], after: Date, waitMs: number): Promise<LoopReading | undefined> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const reading = this.rows.reading(indices, after);
      const left = deadline - Date.now();
      if (reading || this.exited || left <= 0) return reading;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** How it ended, if it did, and the last thing it printed that was not a row. */
  get trouble(): string {
    const said = this.rows.said && `last said: ${JSON.stringify(this.rows.said.slice(0, 200))}`;
    return [this.exitedWith ?? "still running", said].filter(Boolean).join("; ");
  }

  get exited(): boolean {
    return this.exitedWith !== undefined;
  }

  stop(): void {
    process.off("exit", this.killOnExit);
    if (!this.exited) this.child.kill("SIGTERM");
    try {
      if (this.o.pidFile) rmSync(this.o.pidFile, { force: true });
    } catch {
      // a pid file that cannot go names a process that is gone: stopLeftoverLoop checks
    }
  }

  private ended(why: string): void {
    this.exitedWith ??= why;
    process.off("exit", this.killOnExit);
    this.wake?.();
  }
}

/** A process's start time (clock ticks after boot, /proc/<pid>/stat field 22): it tells a reused pid. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/**
 * Stops the loop an earlier agent left behind (killed before it could stop it: its nvidia-smi would
 * run on, querying every GPU each period), if the pid file names a process that is still that one:
 * the same start time, and a query-gpu loop.
 */
export function stopLeftoverLoop(pidFile: string): void {
  let pid: number;
  let startTime: string | undefined;
  try {
    const [p, t] = readFileSync(pidFile, "utf8").trim().split(" ");
    pid = Number(p);
    startTime = t;
  } catch {
    return;
  }
  try {
    if (Number.isInteger(pid) && pid > 0 && startTime && startTimeOf(pid) === startTime) {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (cmdline.includes("--query-gpu=") && cmdline.includes("--loop-ms=")) process.kill(pid, "SIGTERM");
    }
  } catch {
    // gone already, or not Linux
  }
  rmSync(pidFile, { force: true });
}
