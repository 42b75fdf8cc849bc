/**
 * One `nvidia-smi --query-gpu=… --format=csv,noheader,nounits --loop-ms=<period>` kept running, its
 * output cut into readings. Every nvidia-smi start initialises NVML for all GPUs, which on servers
 * with many GPUs takes seconds of CPU (1.5-15 s a call are reported, persistence mode or not); in
 * loop mode that is paid once and each period costs only the queries.
 *
 * A reading is one line per GPU, in index order. A group ends when it has as many lines as GPUs
 * were expected, when an index does not increase (the next period began), or after a second
 * without output (a GPU fewer). Lines that are not GPU rows (nvidia-smi prints XID and ECC events
 * between periods in loop mode) are kept only as the last thing said, for the log.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";

/** Quiet time after which a group short of the expected lines is taken as whole. */
const GROUP_QUIET_MS = 1000;

export interface LoopReading {
  /** The group's lines, as one-shot query-gpu output. */
  text: string;
  /** When its first line arrived. */
  at: Date;
}

export interface QueryGpuLoopOptions {
  binary: string;
  fields: readonly string[];
  periodMs: number;
  /** GPU lines per period, from the last one-shot output. */
  gpus: number;
  now: () => Date;
  /** Keeps the child's pid, for stopLeftoverLoop after an agent that was killed. */
  pidFile?: string;
}

export class QueryGpuLoop {
  readonly fields: readonly string[];
  readonly periodMs: number;
  readonly startedAt: Date;
  private readonly child: ChildProcess;
  private readonly killOnExit = () => this.child.kill("SIGTERM");
  private partial = "";
  private group: string[] = [];
  private groupAt = new Date(0);
  private lastIndex = -1;
  private quiet?: NodeJS.Timeout;
  private newest?: LoopReading;
  private said = "";
  private exitedWith?: string;

  constructor(private readonly o: QueryGpuLoopOptions) {
    this.fields = o.fields;
    this.periodMs = o.periodMs;
    this.startedAt = o.now();
    const args = [`--query-gpu=${o.fields.join(",")}`, "--format=csv,noheader,nounits", `--loop-ms=${o.periodMs}`];
    this.child = spawn(o.binary, args, { stdio: ["ignore", "pipe", "pipe"], windowsHide: true });
    this.child.stdout!.setEncoding("utf8").on("data", (chunk: string) => this.take(chunk));
    this.child.stderr!.setEncoding("utf8").on("data", (chunk: string) => this.remember(chunk));
    this.child.on("error", (err) => {
      this.exitedWith ??= err.message;
    });
    this.child.on("exit", (code, signal) => {
      this.exitedWith ??= signal ? `killed by ${signal}` : `exited with status ${code}`;
      process.off("exit", this.killOnExit);
    });
    process.on("exit", this.killOnExit);
    if (o.pidFile && this.child.pid !== undefined) writeFileSync(o.pidFile, `${this.child.pid}\n`);
  }

  /** The newest whole reading, unless it is older than `maxAgeMs`. */
  latest(maxAgeMs: number): LoopReading | undefined {
    const r = this.newest;
    return r && this.o.now().getTime() - r.at.getTime() <= maxAgeMs ? r : undefined;
  }

  /** Why it stopped giving readings: how it ended and the last thing it printed that was not a row. */
  get trouble(): string {
    const parts = [this.exitedWith ?? "still running", this.said && `last said: ${JSON.stringify(this.said.slice(0, 200))}`];
    return parts.filter(Boolean).join("; ");
  }

  get exited(): boolean {
    return this.exitedWith !== undefined;
  }

  stop(): void {
    clearTimeout(this.quiet);
    process.off("exit", this.killOnExit);
    if (!this.exited) this.child.kill("SIGTERM");
    if (this.o.pidFile) rmSync(this.o.pidFile, { force: true });
  }

  private take(chunk: string): void {
    const lines = (this.partial + chunk).split(/\r?\n/);
    this.partial = lines.pop()!;
    for (const line of lines) {
      if (line.trim() === "") continue;
      const index = /^\s*(\d+)\s*,/.exec(line);
      if (!index) {
        this.remember(line);
        continue;
      }
      const i = Number(index[1]);
      if (this.group.length > 0 && i <= this.lastIndex) this.finish();
      if (this.group.length === 0) this.groupAt = this.o.now();
      this.group.push(line);
      this.lastIndex = i;
      if (this.group.length >= this.o.gpus) this.finish();
    }
    clearTimeout(this.quiet);
    if (this.group.length > 0) this.quiet = setTimeout(() => this.finish(), GROUP_QUIET_MS).unref();
  }

  private finish(): void {
    clearTimeout(this.quiet);
    if (this.group.length > 0) this.newest = { text: `${this.group.join("\n")}\n`, at: this.groupAt };
    this.group = [];
    this.lastIndex = -1;
  }

  private remember(text: string): void {
    const last = text.trim().split(/\r?\n/).pop()?.trim();
    if (last) this.said = last;
  }
}

/**
 * Stops the loop an earlier agent left behind (killed before it could stop it: its nvidia-smi would
 * run on, querying every GPU each period), if the pid file names a process that is still one.
 */
export function stopLeftoverLoop(pidFile: string): void {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, "utf8").trim());
  } catch {
    return;
  }
  try {
    // The pid may have been reused since: only a query-gpu loop is stopped.
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (Number.isInteger(pid) && pid > 0 && cmdline.includes("--query-gpu=") && cmdline.includes("--loop-ms="))
      process.kill(pid, "SIGTERM");
  } catch {
    // gone already, or not Linux
  }
  rmSync(pidFile, { force: true });
}
