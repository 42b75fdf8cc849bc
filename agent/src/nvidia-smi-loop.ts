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
  /** Its newest row's sequence number: the next reading's rows must all be later. */
  seq: number;
  /** When its newest row arrived, on the monotonic clock (performance.now()). */
  arrived: number;
}

/** The GPU index a query-gpu row starts with (index is always the first field asked for). */
export function rowIndex(line: string): number | undefined {
  const index = /^\s*(\d+)\s*,/.exec(line);
  return index ? Number(index[1]) : undefined;
}

/**
 * The newest row of each GPU index, from query-gpu output that arrives in pieces. Rows are ordered
 * by a sequence number, not by the wall clock, which may step back.
 */
export class NewestRows {
  private partial = "";
  private readonly rows = new Map<number, { line: string; at: Date; seq: number; arrived: number }>();
  /** The sequence number of the last row. */
  lastSeq = 0;
  /** The last line that was not a GPU row. */
  said = "";

  push(chunk: string, at: Date): void {
    const lines = (this.partial + chunk).split(/\r?\n/);
    this.partial = lines.pop()!;
    for (const line of lines) {
      const index = rowIndex(line);
      if (index !== undefined) this.rows.set(index, { line, at, seq: ++this.lastSeq, arrived: performance.now() });
      else if (line.trim() !== "") this.said = line.trim();
    }
  }

  /** A row for each of `indices`, all later than row `afterSeq`; undefined while one is missing or earlier. */
  reading(indices: readonly number[], afterSeq: number): LoopReading | undefined {
    const picked = indices.map((i) => this.rows.get(i));
    if (picked.length === 0 || picked.some((r) => r === undefined || r.seq <= afterSeq)) return undefined;
    const rows = picked as NonNullable<(typeof picked)[number]>[];
    const newest = rows.reduce((a, b) => (b.seq > a.seq ? b : a));
    return {
      text: rows.map((r) => `${r.line}\n`).join(""),
      at: new Date(Math.min(...rows.map((r) => r.at.getTime()))),
      seq: newest.seq,
      arrived: newest.arrived,
    };
  }

  /** A GPU index a row came for that is not among `indices` (the GPUs are not the ones expected). */
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

/** How long a loop asked to stop has before it is killed. */
const STOP_GRACE_MS = 5000;

export class QueryGpuLoop {
  readonly fields: readonly string[];
  readonly periodMs: number;
  /** When it was started, on the monotonic clock. */
  readonly started = performance.now();
  readonly rows = new NewestRows();
  private readonly child: ChildProcess;
  private readonly killOnExit = () => this.stop();
  private endedWith?: string;
  /** Resolved (and replaced) whenever output comes or the loop ends. */
  private changed!: Promise<void>;
  private notify!: () => void;

  constructor(private readonly o: QueryGpuLoopOptions) {
    this.fields = o.fields;
    this.periodMs = o.periodMs;
    this.rearm();
    const args = [`--query-gpu=${o.fields.join(",")}`, "--format=csv,noheader,nounits", `--loop-ms=${o.periodMs}`];
    this.child = spawn(o.binary, args, { stdio: ["ignore", "pipe", "pipe"], windowsHide: true });
    // Listeners first: a spawn that fails (ENOENT, EMFILE) reports an error and may have no pipes.
    this.child.on("error", (err) => this.end(err.message));
    // After its output was read to the end (unlike "exit").
    this.child.on("close", (code, signal) => this.end(signal ? `killed by ${signal}` : `exited with status ${code}`));
    this.child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      this.rows.push(chunk, o.now());
      this.changes();
    });
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      const last = chunk.trim().split(/\r?\n/).pop()?.trim();
      if (last) this.rows.said = last;
    });
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
   * The first reading of `indices` later than row `afterSeq`, waiting for it until `deadline` (on
   * the monotonic clock); undefined if none came by then or the loop ended.
   */
  async next(indices: readonly number[], afterSeq: number, deadline: number): Promise<LoopReading | undefined> {
    for (;;) {
      const reading = this.rows.reading(indices, afterSeq);
      const left = deadline - performance.now();
      if (reading || this.ended || left <= 0) return reading;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.changed, new Promise((resolve) => (timer = setTimeout(resolve, left)))]);
      clearTimeout(timer);
    }
  }

  /** How it ended, if it did, and the last thing it printed that was not a row. */
  get trouble(): string {
    const said = this.rows.said && `last said: ${JSON.stringify(this.rows.said.slice(0, 200))}`;
    return [this.endedWith ?? "still running", said].filter(Boolean).join("; ");
  }

  get ended(): boolean {
    return this.endedWith !== undefined;
  }

  /** Asks it to stop (SIGTERM), and kills it if it has not within STOP_GRACE_MS. */
  stop(): void {
    process.off("exit", this.killOnExit);
    if (this.ended) return;
    this.child.kill("SIGTERM");
    setTimeout(() => this.ended || this.child.kill("SIGKILL"), STOP_GRACE_MS).unref();
  }

  private rearm(): void {
    this.changed = new Promise((resolve) => (this.notify = resolve));
  }

  private changes(): void {
    const notify = this.notify;
    this.rearm();
    notify();
  }

  private end(why: string): void {
    if (this.endedWith !== undefined) return;
    this.endedWith = why;
    process.off("exit", this.killOnExit);
    this.changes();
    // Its pid file goes with it, unless a newer loop has written its own there since.
    const { pidFile } = this.o;
    try {
      if (pidFile && readFileSync(pidFile, "utf8").split(" ")[0] === String(this.child.pid)) rmSync(pidFile, { force: true });
    } catch {
      // none, or it cannot be read: stopLeftoverLoop checks what it names
    }
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
  try {
    rmSync(pidFile, { force: true });
  } catch {
    // left: what it names is checked again next time
  }
}
