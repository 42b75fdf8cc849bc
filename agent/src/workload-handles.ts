import { execFile, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { open, readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { FileTail, LineSplitter } from "./log-lines.js";

// How a workload is started, followed and found again by a later agent: host processes (their output
// in files, so that it does not depend on the agent's pipes) and containers (docker or podman).

export type ContainerEngine = "docker" | "podman";
/** Where a workload's lines go, one stream at a time; `time` when the engine says when a line was written. */
export type Output = (stream: "STDOUT" | "STDERR") => (text: string, time?: Date) => void;

export interface Exit {
  code: number | null;
  signal: string | null;
  /** The status cannot be known: the workload is not this agent's child (an earlier agent started it). */
  unknown?: boolean;
  /** The kernel killed it for going over its memory limit (containers: the engine says so). */
  outOfMemory?: boolean;
}

/** What a later agent needs to find a running workload again, kept in its state file. */
export type Trace =
  | { kind: "process"; pid: number; startTicks: string; bootId: string; offsets: { STDOUT: number; STDERR: number } }
  | { kind: "container"; name: string; logsSince?: string; logsSkip?: number };

/** A started workload, whatever runs it. */
export interface Handle {
  /** Settles once the workload has ended and its output has been read. */
  readonly exited: Promise<Exit>;
  /** Asks it to end and waits; forces it after the grace period. */
  stop(graceMs: number): Promise<void>;
  /** Stops following it and leaves it running (the agent is exiting; the next one adopts it). */
  detach(): Promise<void>;
  /** Where it is and how far its output was read. */
  trace(): Trace;
}

const execFileP = promisify(execFile);
const EXIT_POLL_MS = 250;

/** The first container engine that answers (`version` needs the daemon too), else "none". */
export function detectEngine(): ContainerEngine | "none" {
  for (const engine of ["docker", "podman"] as const) {
    if (spawnSync(engine, ["version"], { stdio: "ignore", timeout: 10_000 }).status === 0) return engine;
  }
  return "none";
}

/** Who a process-mode workload runs as, and its limits (RLIMIT_NPROC of its own uid, RLIMIT_DATA). */
export interface ProcessConfinement {
  uid: number;
  pidsLimit: number;
  memoryBytes?: number;
  /** Puts the process into the environment's cgroups before any of the program runs. */
  enter?: (pid: number) => Promise<void>;
}

// Holds a process until it has been put into its cgroups. It starts with a fixed environment of
// its own (nothing of the tenant's, such as LD_PRELOAD, may run before the cgroup holds it), reads
// the workload's environment from stdin as `export` lines the agent wrote, and only at the end of
// that input (sent after the cgroup entry) sets it and becomes the program. No input at all means
// the agent gave up: it exits without running anything.
const CGROUP_GATE = ["/bin/sh", "-c", 'env=$(cat) && [ -n "$env" ] || exit 111; eval "$env"; exec "$@" </dev/null', "remotegpu-gate"];
export const GATE_ENV = { PATH: "/usr/bin:/bin" };
// By its full path: the tenant's PATH must not pick the program that sets the limits.
const PRLIMIT = existsSync("/usr/bin/prlimit") ? "/usr/bin/prlimit" : "prlimit";

/** The same gate for a program whose stdin is its own (an SSH session): the environment comes on fd 4. */
const SESSION_GATE = ["/bin/sh", "-c", 'env=$(cat <&4) && [ -n "$env" ] || exit 111; exec 4<&-; eval "$env"; exec "$@"', "remotegpu-gate"];

/**
 * The argv that runs `program` confined as a workload is (its uid is the spawn's to set): through
 * the session gate when the workload has cgroups (the caller enters the pid, then writes
 * `exportLines(env)` to fd 4 and closes it), and prlimit with the workload's limits.
 */
export function confinedSessionArgv(confinement: ProcessConfinement, program: string[]): string[] {
  return [
    ...(confinement.enter ? SESSION_GATE : []),
    PRLIMIT,
    `--nproc=${confinement.pidsLimit}`,
    ...(confinement.memoryBytes ? [`--data=${confinement.memoryBytes}`] : []),
    "--",
    ...program,
  ];
}

/** `env` as lines of the shell: `export NAME='value'`; names that are not shell names are left out. */
export function exportLines(env: Record<string, string>): string {
  const quote = (v: string) => `'${v.replace(/'/g, "'\\''")}'`;
  return Object.entries(env)
    .filter(([name]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
    .map(([name, value]) => `export ${name}=${quote(value)}\n`)
    .join("");
}

/** This boot of the host: a trace from another boot names processes that are gone. */
export function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "";
  }
}

/**
 * When `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); undefined when it
 * does not run (gone, or a zombie nobody reaped). Together with the pid it names one process: a
 * reused pid has another start time.
 */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ...": comm may hold spaces and parentheses; the fields follow the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[0] === "Z" || fields[0] === "X" ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

/**
 * Kills the process groups of processes started for `environmentId` that this agent does not follow
 * (an earlier agent's, whose state could not be trusted): they carry REMOTEGPU_ENVIRONMENT_ID in the
 * environment they were started with. Returns how many it found.
 */
export async function killStrays(environmentId: string): Promise<number> {
  const marker = Buffer.from(`\0REMOTEGPU_ENVIRONMENT_ID=${environmentId}\0`);
  let found = 0;
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const environ = await readFile(`/proc/${pid}/environ`).catch(() => undefined);
    if (!environ || !Buffer.concat([Buffer.from([0]), environ]).includes(marker)) continue;
    found++;
    signalGroup(pid, "SIGKILL");
    try {
      process.kill(pid, "SIGKILL"); // in case it left its group
    } catch {
      // gone already
    }
  }
  return found;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is already gone
  }
}

function outputFile(dir: string, stream: "STDOUT" | "STDERR"): string {
  return path.join(dir, stream === "STDOUT" ? "stdout.log" : "stderr.log");
}

/**
 * Spawns the program in its own session and process group (a stop reaches everything it started),
 * its output going to files in `dir` that it keeps writing whether or not an agent reads them.
 */
export async function spawnProcess(
  program: string[],
  cwd: string,
  env: Record<string, string>,
  dir: string,
  output: Output,
  confinement?: ProcessConfinement,
): Promise<Handle> {
  const files = await Promise.all((["STDOUT", "STDERR"] as const).map((s) => open(outputFile(dir, s), "w", 0o600)));
  let child: ReturnType<typeof spawn>;
  let ended: Promise<Exit>;
  // Confined: its own uid (and gid, no other groups), with prlimit setting its limits and then
  // becoming the program (same pid). RLIMIT_NPROC counts every process of the uid, which is its own.
  const argv = confinement
    ? [
        ...(confinement.enter ? CGROUP_GATE : []),
        PRLIMIT,
        `--nproc=${confinement.pidsLimit}`,
        ...(confinement.memoryBytes ? [`--data=${confinement.memoryBytes}`] : []),
        "--",
        ...program,
      ]
    : program;
  const user = confinement ? { uid: confinement.uid, gid: confinement.uid } : {};
  try {
    const gated = Boolean(confinement?.enter);
    child = spawn(argv[0]!, argv.slice(1), {
      cwd,
      env: gated ? GATE_ENV : env,
      detached: true,
      stdio: [gated ? "pipe" : "ignore", files[0]!.fd, files[1]!.fd],
      ...user,
    });
    // Listened for at once: a short program can be gone before the awaits below are.
    ended = new Promise<Exit>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", reject);
    });
    if (confinement?.enter) {
      child.stdin!.on("error", () => undefined); // it died before reading: its exit says so
      try {
        await confinement.enter(child.pid!);
      } catch (err) {
        child.kill("SIGKILL");
        throw err;
      }
      child.stdin!.end(`${exportLines(env)}:\n`); // ":" too: an empty environment is not "the agent gave up"
    }
  } finally {
    await Promise.all(files.map((f) => f.close()));
  }
  child.on("error", () => undefined); // a failed kill of an exited group; nothing to do
  const pid = child.pid!;
  const trace = { pid, startTicks: processStart(pid) ?? "", bootId: bootId() };
  return followProcess(trace, dir, { STDOUT: 0, STDERR: 0 }, output, ended);
}

/** Takes over a process an earlier agent started, if it still runs: the same pid, start time and boot. */
export function adoptProcess(trace: Extract<Trace, { kind: "process" }>, dir: string, output: Output): Handle | undefined {
  if (trace.bootId !== bootId() || processStart(trace.pid) !== trace.startTicks) return undefined;
  const ended = new Promise<Exit>((resolve) => {
    const timer = setInterval(() => {
      if (processStart(trace.pid) === trace.startTicks) return;
      clearInterval(timer);
      resolve({ code: null, signal: null, unknown: true });
    }, EXIT_POLL_MS);
  });
  return followProcess(trace, dir, trace.offsets, output, ended);
}

function followProcess(
  where: { pid: number; startTicks: string; bootId: string },
  dir: string,
  offsets: { STDOUT: number; STDERR: number },
  output: Output,
  ended: Promise<Exit>,
): Handle {
  const { pid } = where;
  const tails = (["STDOUT", "STDERR"] as const).map(
    (s) => new FileTail(outputFile(dir, s), offsets[s], new LineSplitter(output(s)), () => undefined),
  );
  for (const t of tails) t.start();
  let done = false;
  let detached = false;
  const exited = ended.then(async (exit) => {
    done = true;
    // What it left behind in its group goes with it, as in a container.
    signalGroup(pid, "SIGKILL");
    if (!detached) await Promise.all(tails.map((t) => t.stop(true)));
    return exit;
  });
  return {
    exited,
    async stop(graceMs) {
      if (!done) signalGroup(pid, "SIGTERM");
      const force = setTimeout(() => signalGroup(pid, "SIGKILL"), graceMs);
      await exited;
      clearTimeout(force);
    },
    async detach() {
      detached = true;
      await Promise.all(tails.map((t) => t.stop(false)));
    },
    trace: () => ({ kind: "process", ...where, offsets: { STDOUT: tails[0]!.offset, STDERR: tails[1]!.offset } }),
  };
}

export function containerName(environmentId: string): string {
  return `rgpu-${environmentId}`;
}

/** Makes sure `image` is present, pulling it if not; `progress` gets the engine's pull output, line by line. */
export async function ensureImage(engine: ContainerEngine, image: string, progress: (line: string) => void): Promise<void> {
  const present = engine === "podman" ? ["image", "exists", image] : ["image", "inspect", image];
  if (spawnSync(engine, present, { stdio: "ignore", timeout: 30_000 }).status === 0) return;
  const pull = spawn(engine, ["pull", image], { stdio: ["ignore", "pipe", "pipe"] });
  const said: string[] = [];
  for (const pipe of [pull.stdout, pull.stderr]) {
    const lines = new LineSplitter((text) => {
      const line = text.trim();
      if (!line) return;
      said.push(line);
      if (said.length > 20) said.shift();
      progress(line);
    });
    pipe.on("data", (chunk: Buffer) => lines.write(chunk)).once("close", () => lines.end());
  }
  const code = await new Promise<number | null>((resolve) => {
    pull.once("error", () => resolve(null));
    pull.once("close", (c) => resolve(c));
  });
  if (code !== 0) {
    const reason = said.filter((l) => /error/i.test(l)).at(-1) ?? said.at(-1) ?? `${engine} pull could not run`;
    throw new Error(`cannot pull image ${image}: ${reason.replace(/^Error:\s*/, "")}`);
  }
}

/** `<engine> run -d` with `args`, then follows the container. */
export async function startContainer(engine: ContainerEngine, name: string, args: string[], output: Output): Promise<Handle> {
  await execFileP(engine, ["rm", "-f", name]).catch(() => undefined); // a leftover of an earlier run
  await execFileP(engine, args);
  return followContainer(engine, name, {}, output);
}

/**
 * Follows a container's output and waits for its end; `wait` answers at once for one that has
 * already exited, with its exit code. Resuming at `from` (an earlier trace), it starts right after
 * the lines already handed on: the engine stamps each line with the time it was written, and the
 * trace keeps the last one's time and how many lines of that very time were handed on (the lines of
 * one read share it). The time of reading would not do: lines written while the engine had not yet
 * passed them on would be skipped by the next agent.
 */
export function followContainer(
  engine: ContainerEngine,
  name: string,
  from: Pick<Extract<Trace, { kind: "container" }>, "logsSince" | "logsSkip">,
  output: Output,
): Handle {
  const resumeAt = from.logsSince === undefined ? undefined : nanosOf(from.logsSince);
  let skip = resumeAt === undefined ? 0 : (from.logsSkip ?? 0);
  let last = resumeAt;
  let lastSeen = skip;
  // `--since` leaves out lines of exactly that time with podman and keeps them with docker: from 1 ns
  // before, both give every line of the resume time on.
  const since = resumeAt === undefined ? [] : ["--since", rfc3339(resumeAt - 1n)];
  const follower = spawn(engine, ["logs", "-f", "--timestamps", ...since, name], { stdio: ["ignore", "pipe", "pipe"] });
  follower.on("error", () => undefined);
  const drained = Promise.all(
    (["STDOUT", "STDERR"] as const).map((stream) => {
      const sink = output(stream);
      const lines = new LineSplitter((stamped) => {
        const space = stamped.indexOf(" ");
        const time = space > 0 ? nanosOf(stamped.slice(0, space)) : undefined;
        if (time === undefined) return sink(stamped);
        if (time === resumeAt && skip > 0) {
          skip--;
          return;
        }
        if (last === undefined || time > last) [last, lastSeen] = [time, 0];
        if (time === last) lastSeen++;
        sink(stamped.slice(space + 1), new Date(Number(time / 1_000_000n)));
      });
      const pipe = stream === "STDOUT" ? follower.stdout! : follower.stderr!;
      pipe.on("data", (chunk: Buffer) => lines.write(chunk));
      return new Promise<void>((resolve) => pipe.once("close", () => resolve(lines.end())));
    }),
  );
  const waited = execFileP(engine, ["wait", name]).then(
    async ({ stdout }): Promise<Exit> => {
      const code = Number.parseInt(stdout.trim(), 10);
      // 137 is any SIGKILL; the engine tells whether it was the memory limit's.
      const oom =
        code === 137 &&
        (await execFileP(engine, ["container", "inspect", "--format", "{{.State.OOMKilled}}", name]).catch(() => ({ stdout: "" })));
      return { code, signal: null, outOfMemory: oom ? oom.stdout.trim() === "true" : undefined };
    },
    () => ({ code: null, signal: null }),
  );
  // The follower ends with the container; its output is complete then (within a bound).
  const exited = waited.then(async (exit) => {
    await Promise.race([drained, new Promise((r) => setTimeout(r, 2000))]);
    follower.kill();
    return exit;
  });
  return {
    exited,
    async stop(graceMs) {
      await execFileP(engine, ["stop", "-t", String(Math.ceil(graceMs / 1000)), name]).catch(() => undefined);
      await exited;
    },
    async detach() {
      follower.kill();
      await drained;
    },
    trace: () => ({ kind: "container", name, ...(last !== undefined && { logsSince: rfc3339(last), logsSkip: lastSeen }) }),
  };
}

/** An RFC 3339 time, as the engines stamp log lines (fractions of up to 9 digits, any offset), in ns since the epoch. */
function nanosOf(text: string): bigint | undefined {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(text);
  const ms = m ? Date.parse(m[1]! + m[3]!) : Number.NaN;
  if (Number.isNaN(ms)) return undefined;
  return BigInt(ms) * 1_000_000n + BigInt((m![2] ?? "").padEnd(9, "0"));
}

/** `ns` since the epoch as an RFC 3339 time in UTC with all 9 digits. */
function rfc3339(ns: bigint): string {
  const fraction = (ns % 1_000_000_000n).toString().padStart(9, "0");
  return new Date(Number(ns / 1_000_000n)).toISOString().replace(/\.\d{3}Z$/, `.${fraction}Z`);
}

/** Whether a container of that name exists, and if so whether it runs or how it ended. */
export async function inspectContainer(engine: ContainerEngine, name: string): Promise<{ running: boolean; exitCode: number } | undefined> {
  const format = "{{.State.Running}} {{.State.ExitCode}}";
  const { stdout } = await execFileP(engine, ["container", "inspect", "--format", format, name]).catch(() => ({ stdout: "" }));
  const [running, code] = stdout.trim().split(" ");
  return running ? { running: running === "true", exitCode: Number(code) } : undefined;
}
