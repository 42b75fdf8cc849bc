import { execFile, spawn, spawnSync } from "node:child_process";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { StringDecoder } from "node:string_decoder";
import { promisify } from "node:util";
import type { Logger } from "./logger.js";

export type WorkloadState = "STARTING" | "RUNNING" | "STOPPED" | "FAILED" | "REMOVED";
export type LogStreamName = "STDOUT" | "STDERR" | "SYSTEM";
export type ContainerEngine = "docker" | "podman";

export interface WorkloadPort {
  name: string;
  /** The port the workload listens on (on 127.0.0.1 in process mode). */
  containerPort: number;
  /** The port users reach on this host; 0 or equal to containerPort for no forwarding. */
  hostPort: number;
  protocol: "TCP" | "HTTP";
}

/** What the control plane asks this host to run for an environment. */
export interface WorkloadSpec {
  environmentId: string;
  workspaceId: string;
  /** Container image; unused in process mode. */
  image: string;
  /** Entrypoint override; in process mode the program (with `args` after it). */
  command: string[];
  args: string[];
  env: Record<string, string>;
  gpuUuids: string[];
  gpuIndices: number[];
  ports: WorkloadPort[];
  /** CPU limit in millicores (containers only). @default no limit */
  cpuMillicores?: number;
  /** Memory limit in bytes (containers only). @default no limit */
  memoryBytes?: number;
  /** Grows with each start of the environment; a higher one replaces the workload. */
  generation: number;
}

export interface StatusReport {
  environmentId: string;
  generation: number;
  state: WorkloadState;
  message: string;
  exitCode?: number;
  /** When the state was entered. */
  time: Date;
}

export interface WorkloadLogLine {
  time: Date;
  stream: LogStreamName;
  text: string;
}

/** The outcome of `Workloads.run`, for the command result: ok false when the workload could not start. */
export interface RunResult {
  ok: boolean;
  message: string;
}

/** Where the runtime tells what happens to the workloads. */
export interface WorkloadEvents {
  status(report: StatusReport): void;
  /** Output lines of one environment, oldest first, batched. */
  logs(environmentId: string, lines: WorkloadLogLine[]): void;
}

export interface WorkloadsOptions {
  /** Each environment lives in `<dataDir>/environments/<environmentId>/` (its volume in `volume/`). */
  dataDir: string;
  logger: Logger;
  events: WorkloadEvents;
  /** Time between the polite stop (SIGTERM, `<engine> stop`) and SIGKILL. @default 10000 */
  stopGraceMs?: number;
  /** "process" runs host processes even where a container engine exists. @default detectEngine() */
  engine?: ContainerEngine | "process";
}

const MAX_LINE_BYTES = 8 * 1024;
const LOG_BATCH_LINES = 200;
const LOG_BATCH_MS = 200;
const READY_POLL_MS = 200;
// Ids become directory and container names (and `rm -rf` targets): nothing that could leave the data dir.
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const execFileP = promisify(execFile);

/** The first container engine that answers (`version` needs the daemon too), else "process". */
export function detectEngine(): ContainerEngine | "process" {
  for (const engine of ["docker", "podman"] as const) {
    if (spawnSync(engine, ["version"], { stdio: "ignore", timeout: 10_000 }).status === 0) return engine;
  }
  return "process";
}

export function containerName(environmentId: string): string {
  return `rgpu-${environmentId}`;
}

/** The argv (after the engine's name) that starts an environment's container, detached. */
export function containerRunArgs(engine: ContainerEngine, spec: WorkloadSpec, volumeDir: string): string[] {
  const args = ["run", "-d", "--name", containerName(spec.environmentId), "--label", `remotegpu.environment=${spec.environmentId}`];
  if (spec.gpuUuids.length > 0) {
    // docker parses --gpus as CSV: the quotes keep a list of several GPUs in one field.
    if (engine === "docker") args.push("--gpus", `"device=${spec.gpuUuids.join(",")}"`);
    else for (const uuid of spec.gpuUuids) args.push("--device", `nvidia.com/gpu=${uuid}`); // CDI names
  }
  for (const p of spec.ports) if (p.hostPort > 0) args.push("-p", `${p.hostPort}:${p.containerPort}`);
  args.push("-v", `${volumeDir}:/workspace`, "-w", "/workspace");
  // No CUDA_VISIBLE_DEVICES here: the engine shows the container only its GPUs.
  for (const [k, v] of Object.entries({ ...spec.env, ...portEnv(spec) })) args.push("-e", `${k}=${v}`);
  if (spec.cpuMillicores) args.push("--cpus", String(spec.cpuMillicores / 1000));
  if (spec.memoryBytes) args.push("--memory", String(spec.memoryBytes));
  const [entrypoint, ...rest] = spec.command;
  if (entrypoint !== undefined) args.push("--entrypoint", entrypoint);
  args.push(spec.image, ...rest, ...spec.args);
  return args;
}

/** PORT, PORT_<NAME> and the environment id: what a workload needs to know of itself. */
function portEnv(spec: WorkloadSpec): Record<string, string> {
  const env: Record<string, string> = { REMOTEGPU_ENVIRONMENT_ID: spec.environmentId };
  if (spec.ports[0]) env.PORT = String(spec.ports[0].containerPort);
  for (const p of spec.ports) env[`PORT_${p.name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`] = String(p.containerPort);
  return env;
}

function processEnv(spec: WorkloadSpec, volume: string): Record<string, string> {
  const gpus = spec.gpuUuids.join(",");
  return {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: volume,
    ...spec.env,
    // After spec.env: a workload does not get to widen its own GPU set.
    CUDA_VISIBLE_DEVICES: gpus,
    NVIDIA_VISIBLE_DEVICES: gpus,
    ...portEnv(spec),
  };
}

interface Exit {
  code: number | null;
  signal: string | null;
}

/** A started workload, whatever runs it. */
interface Handle {
  /** Settles once the workload has ended and its output has been read. */
  readonly exited: Promise<Exit>;
  /** Asks it to end and waits; forces it after the grace period. */
  stop(graceMs: number): Promise<void>;
}

type Output = (stream: "STDOUT" | "STDERR") => LineSplitter;

interface Workload {
  spec: WorkloadSpec;
  state: WorkloadState;
  message: string;
  exitCode?: number;
  since: Date;
  handle?: Handle;
  /** Set once we asked it to end: its exit is then not a failure. */
  stopping: boolean;
  proxies: PortProxy[];
  logs: LogBatch;
}

/**
 * Runs environments on this host, as containers (docker or podman) or as plain processes, and
 * reports their state and output through `events`. Commands for one environment run one at a time,
 * in order; different environments proceed independently.
 */
export class Workloads {
  readonly engine: ContainerEngine | "process";
  private readonly workloads = new Map<string, Workload>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly stopGraceMs: number;
  private closed = false;

  constructor(private readonly o: WorkloadsOptions) {
    this.engine = o.engine ?? detectEngine();
    this.stopGraceMs = o.stopGraceMs ?? 10_000;
  }

  get containersSupported(): boolean {
    return this.engine !== "process";
  }

  /** Ids of the environments starting or running (for the agent's hello). */
  running(): string[] {
    return [...this.workloads.values()].filter((w) => w.state === "STARTING" || w.state === "RUNNING").map((w) => w.spec.environmentId);
  }

  /** When each running workload's ports last carried traffic (only those that had any, through a proxy). */
  activity(): { environmentId: string; lastTraffic: Date }[] {
    const out: { environmentId: string; lastTraffic: Date }[] = [];
    for (const w of this.workloads.values()) {
      const last = Math.max(0, ...w.proxies.map((p) => p.lastTraffic));
      if (w.state === "RUNNING" && last > 0) out.push({ environmentId: w.spec.environmentId, lastTraffic: new Date(last) });
    }
    return out;
  }

  /**
   * Starts a workload; resolves once it is started (RUNNING follows when its ports answer) or has
   * failed to start. The same generation again only re-reports the current state; a
   * higher one replaces the workload; a lower one is ignored.
   */
  async run(spec: WorkloadSpec): Promise<RunResult> {
    checkId(spec.environmentId);
    return this.serial(spec.environmentId, async () => {
      if (this.closed) throw new Error("the agent is shutting down");
      const current = this.workloads.get(spec.environmentId);
      if (current && spec.generation < current.spec.generation)
        return { ok: true, message: `ignored: generation ${spec.generation} is older than ${current.spec.generation}` };
      if (current && spec.generation === current.spec.generation) {
        this.report(current);
        return { ok: true, message: `generation ${spec.generation} is already ${current.state.toLowerCase()}` };
      }
      if (current) await this.stopWorkload(current, `replaced by generation ${spec.generation}`);
      const w: Workload = {
        spec,
        state: "STARTING",
        message: "",
        since: new Date(),
        stopping: false,
        proxies: [],
        logs: this.logBatch(spec.environmentId),
      };
      this.workloads.set(spec.environmentId, w);
      await this.start(w);
      return w.state === "FAILED" ? { ok: false, message: w.message } : { ok: true, message: "started" };
    });
  }

  /**
   * Stops a workload and keeps its volume; reports STOPPED, also when there was nothing to stop. The
   * report carries at least `generation` (the server's current one), so the server can tell it from
   * the STOPPED of an older workload that a newer run replaced.
   */
  async stop(environmentId: string, generation = 0): Promise<void> {
    checkId(environmentId);
    return this.serial(environmentId, async () => {
      const w = this.workloads.get(environmentId);
      if (w) {
        w.spec = { ...w.spec, generation: Math.max(w.spec.generation, generation) };
        await this.stopWorkload(w, "stopped on request");
      } else {
        this.emit({
          environmentId,
          generation: Math.max(generation, await this.savedGeneration(environmentId)),
          state: "STOPPED",
          message: "not running",
          time: new Date(),
        });
      }
    });
  }

  /** Stops a workload and deletes its directory, volume included; reports REMOVED, also for unknown ids. */
  async remove(environmentId: string, atLeastGeneration = 0): Promise<void> {
    checkId(environmentId);
    return this.serial(environmentId, async () => {
      const w = this.workloads.get(environmentId);
      if (w) await this.halt(w);
      // A container may outlive the agent that started it.
      if (this.engine !== "process") await execFileP(this.engine, ["rm", "-f", containerName(environmentId)]).catch(() => undefined);
      const generation = Math.max(atLeastGeneration, w?.spec.generation ?? (await this.savedGeneration(environmentId)));
      await rm(this.dirOf(environmentId), { recursive: true, force: true });
      this.workloads.delete(environmentId);
      w?.logs.add("SYSTEM", "removed");
      w?.logs.flush();
      this.emit({ environmentId, generation, state: "REMOVED", message: "removed with its volume", time: new Date() });
      this.o.logger.info({ environmentId }, "environment removed");
    });
  }

  /** Stops every workload, reporting nothing (the agent is exiting); later runs are refused. */
  async shutdown(): Promise<void> {
    this.closed = true;
    await Promise.all(
      [...this.workloads.keys()].map((id) =>
        this.serial(id, async () => {
          const w = this.workloads.get(id);
          if (w) await this.halt(w);
        }),
      ),
    );
  }

  private async start(w: Workload): Promise<void> {
    const { spec } = w;
    const program = [...spec.command, ...spec.args];
    if (this.engine === "process" && program.length === 0) return this.fail(w, "no command: process mode needs one");
    const dir = this.dirOf(spec.environmentId);
    const volume = path.join(dir, "volume");
    this.transition(w, "STARTING", "");
    try {
      for (const p of spec.ports)
        if (!validPort(p.containerPort) || !(p.hostPort === 0 || validPort(p.hostPort)))
          throw new Error(`port ${p.name}: invalid port numbers`);
      await mkdir(volume, { recursive: true });
      // Lets a stop or remove after an agent restart report the generation it ended.
      await writeFile(path.join(dir, "workload.json"), JSON.stringify(spec));
      const output: Output = (stream) => new LineSplitter((text) => w.logs.add(stream, text));
      if (this.engine === "process") {
        for (const p of spec.ports) {
          if (p.hostPort === 0 || p.hostPort === p.containerPort) continue;
          const proxy = await PortProxy.listen(p.hostPort, p.containerPort).catch((err: unknown) => {
            throw new Error(`port ${p.name}: cannot listen on ${p.hostPort}: ${errorMessage(err)}`);
          });
          w.proxies.push(proxy);
        }
        w.logs.add("SYSTEM", `starting: ${program.join(" ")}`);
        w.handle = await startProcess(program, volume, processEnv(spec, volume), output);
      } else {
        w.logs.add("SYSTEM", `starting: ${spec.image}`);
        w.handle = await startContainer(this.engine, spec, volume, output);
      }
    } catch (err) {
      await closeAll(w.proxies);
      return this.fail(w, errorMessage(err));
    }
    this.o.logger.info({ environmentId: spec.environmentId, generation: spec.generation, engine: this.engine }, "environment started");
    void w.handle.exited.then((exit) => this.exited(w, exit));
    void this.awaitReady(w);
  }

  /** RUNNING once every port accepts connections (right away without ports). */
  private async awaitReady(w: Workload): Promise<void> {
    // In process mode the workload listens on 127.0.0.1; a container is reached through its published ports.
    const ports =
      this.engine === "process"
        ? w.spec.ports.map((p) => p.containerPort)
        : w.spec.ports.filter((p) => p.hostPort > 0).map((p) => p.hostPort);
    while (w.state === "STARTING" && !w.stopping) {
      const open = await Promise.all(ports.map(accepts));
      if (open.every(Boolean)) {
        if (w.state === "STARTING" && !w.stopping) this.transition(w, "RUNNING", "");
        return;
      }
      await new Promise((r) => setTimeout(r, READY_POLL_MS));
    }
  }

  private exited(w: Workload, exit: Exit): void {
    const how = exit.code !== null ? `exited with code ${exit.code}` : `killed by ${exit.signal ?? "a signal"}`;
    w.logs.add("SYSTEM", how);
    if (w.stopping) return; // stopWorkload reports
    void closeAll(w.proxies);
    w.proxies = [];
    w.logs.flush();
    this.transition(w, "FAILED", how, exit.code ?? undefined);
    this.o.logger.warn({ environmentId: w.spec.environmentId, generation: w.spec.generation, how }, "environment ended by itself");
  }

  private async stopWorkload(w: Workload, message: string): Promise<void> {
    if (w.state === "STOPPED") return this.report(w);
    const active = w.state === "STARTING" || w.state === "RUNNING";
    await this.halt(w);
    if (active) w.logs.add("SYSTEM", "stopped");
    w.logs.flush();
    this.transition(w, "STOPPED", message);
    this.o.logger.info({ environmentId: w.spec.environmentId, generation: w.spec.generation }, "environment stopped");
  }

  /** Ends the workload and its port forwarding, without reporting. */
  private async halt(w: Workload): Promise<void> {
    w.stopping = true;
    await w.handle?.stop(this.stopGraceMs);
    await closeAll(w.proxies);
    w.proxies = [];
  }

  private fail(w: Workload, message: string): void {
    w.logs.add("SYSTEM", `failed: ${message}`);
    w.logs.flush();
    this.transition(w, "FAILED", message);
    this.o.logger.warn({ environmentId: w.spec.environmentId, generation: w.spec.generation, message }, "environment failed to start");
  }

  private transition(w: Workload, state: WorkloadState, message: string, exitCode?: number): void {
    Object.assign(w, { state, message, exitCode, since: new Date() });
    this.report(w);
  }

  private report(w: Workload): void {
    const { environmentId, generation } = w.spec;
    this.emit({ environmentId, generation, state: w.state, message: w.message, exitCode: w.exitCode, time: w.since });
  }

  private emit(report: StatusReport): void {
    if (!this.closed) this.o.events.status(report);
  }

  private logBatch(environmentId: string): LogBatch {
    return new LogBatch((lines) => {
      if (!this.closed) this.o.events.logs(environmentId, lines);
    });
  }

  private dirOf(environmentId: string): string {
    return path.join(this.o.dataDir, "environments", environmentId);
  }

  private async savedGeneration(environmentId: string): Promise<number> {
    try {
      const saved = JSON.parse(await readFile(path.join(this.dirOf(environmentId), "workload.json"), "utf8")) as Partial<WorkloadSpec>;
      return typeof saved.generation === "number" ? saved.generation : 0;
    } catch {
      return 0;
    }
  }

  /** Runs `fn` after whatever is queued for the same environment. */
  private serial<T>(environmentId: string, fn: () => Promise<T>): Promise<T> {
    const result = (this.queues.get(environmentId) ?? Promise.resolve()).then(fn);
    const tail = result.catch(() => undefined);
    this.queues.set(environmentId, tail);
    void tail.then(() => this.queues.get(environmentId) === tail && this.queues.delete(environmentId));
    return result;
  }
}

function checkId(environmentId: string): void {
  if (!SAFE_ID.test(environmentId)) throw new Error(`invalid environment id ${JSON.stringify(environmentId)}`);
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}

function errorMessage(err: unknown): string {
  const stderr = (err as { stderr?: unknown }).stderr;
  if (typeof stderr === "string" && stderr.trim()) return stderr.trim(); // what the engine said, not its argv
  return err instanceof Error ? err.message : String(err);
}

/** Spawns the program in its own process group, so that a stop reaches everything it started. */
async function startProcess(program: string[], cwd: string, env: Record<string, string>, output: Output): Promise<Handle> {
  const child = spawn(program[0]!, program.slice(1), { cwd, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", reject);
  });
  child.on("error", () => undefined); // a failed kill of an exited group; nothing to do
  const pid = child.pid!;
  const outputDone = Promise.all(
    (["STDOUT", "STDERR"] as const).map((stream) => {
      const lines = output(stream);
      const pipe = stream === "STDOUT" ? child.stdout! : child.stderr!;
      pipe.on("data", (chunk: Buffer) => lines.write(chunk));
      return new Promise<void>((resolve) => pipe.once("close", () => resolve(lines.end())));
    }),
  );
  let ended = false;
  const exited = new Promise<Exit>((resolve) => {
    child.once("exit", (code, signal) => {
      ended = true;
      // What it left behind in its group goes with it, as in a container.
      signalGroup(pid, "SIGKILL");
      // Its output is complete once the pipes close; a descendant that left the group could hold them open.
      void Promise.race([outputDone, new Promise((r) => setTimeout(r, 1000))]).then(() => resolve({ code, signal }));
    });
  });
  return {
    exited,
    async stop(graceMs) {
      if (!ended) signalGroup(pid, "SIGTERM");
      const force = setTimeout(() => signalGroup(pid, "SIGKILL"), graceMs);
      await exited;
      clearTimeout(force);
    },
  };
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is already gone
  }
}

/** `<engine> run -d`, then follows its logs and waits for its exit. Untested here: no engine on CI. */
async function startContainer(engine: ContainerEngine, spec: WorkloadSpec, volume: string, output: Output): Promise<Handle> {
  const name = containerName(spec.environmentId);
  await execFileP(engine, ["rm", "-f", name]).catch(() => undefined); // a leftover of an earlier run
  await execFileP(engine, containerRunArgs(engine, spec, volume));
  const follower = spawn(engine, ["logs", "-f", name], { stdio: ["ignore", "pipe", "pipe"] });
  follower.on("error", () => undefined);
  for (const stream of ["STDOUT", "STDERR"] as const) {
    const lines = output(stream);
    const pipe = stream === "STDOUT" ? follower.stdout! : follower.stderr!;
    pipe.on("data", (chunk: Buffer) => lines.write(chunk)).once("close", () => lines.end());
  }
  const exited = execFileP(engine, ["wait", name]).then(
    ({ stdout }) => ({ code: Number.parseInt(stdout.trim(), 10), signal: null }),
    () => ({ code: null, signal: null }),
  );
  return {
    exited,
    async stop(graceMs) {
      await execFileP(engine, ["stop", "-t", String(Math.ceil(graceMs / 1000)), name]).catch(() => undefined);
      await exited;
      follower.kill();
    },
  };
}

/** Splits a byte stream into UTF-8 lines; a line over MAX_LINE_BYTES is cut there and its rest dropped. */
class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private partial = "";
  /** Inside the dropped rest of an overlong line. */
  private skipping = false;

  constructor(private readonly emit: (text: string) => void) {}

  write(chunk: Buffer): void {
    this.take(this.decoder.write(chunk));
  }

  end(): void {
    this.take(this.decoder.end());
    if (this.partial && !this.skipping) this.emit(this.partial);
    this.partial = "";
    this.skipping = false;
  }

  private take(text: string): void {
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop()!;
    for (const part of parts) {
      if (this.skipping) this.skipping = false;
      else this.emit(capLine(part.endsWith("\r") ? part.slice(0, -1) : part));
    }
    if (Buffer.byteLength(this.partial) > MAX_LINE_BYTES) {
      if (!this.skipping) this.emit(capLine(this.partial));
      this.skipping = true;
      this.partial = "";
    }
  }
}

function capLine(text: string): string {
  if (Buffer.byteLength(text) <= MAX_LINE_BYTES) return text;
  return Buffer.from(text)
    .subarray(0, MAX_LINE_BYTES)
    .toString("utf8")
    .replace(/\uFFFD$/, ""); // no half character
}

/** Collects lines and hands them on every LOG_BATCH_MS or LOG_BATCH_LINES, whichever comes first. */
class LogBatch {
  private lines: WorkloadLogLine[] = [];
  private timer?: NodeJS.Timeout;

  constructor(private readonly deliver: (lines: WorkloadLogLine[]) => void) {}

  add(stream: LogStreamName, text: string): void {
    this.lines.push({ time: new Date(), stream, text });
    if (this.lines.length >= LOG_BATCH_LINES) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), LOG_BATCH_MS).unref();
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.lines.length === 0) return;
    const lines = this.lines;
    this.lines = [];
    this.deliver(lines);
  }
}

/** Listens on hostPort (all interfaces) and pipes each connection to 127.0.0.1:containerPort. */
class PortProxy {
  private readonly sockets = new Set<net.Socket>();
  /** When a byte last went through, in ms since the epoch (0: never); idle auto-stop reads it. */
  lastTraffic = 0;
  private readonly server: net.Server;

  private constructor(containerPort: number) {
    // Half-open both ways, so that a client that ends its request still gets the whole answer.
    this.server = net.createServer({ allowHalfOpen: true }, (client) => this.link(client, containerPort));
  }

  static listen(hostPort: number, containerPort: number): Promise<PortProxy> {
    const proxy = new PortProxy(containerPort);
    return new Promise((resolve, reject) => {
      proxy.server.on("error", reject); // after listening, a late error has no one to tell
      proxy.server.listen(hostPort, "0.0.0.0", () => resolve(proxy));
    });
  }

  private link(client: net.Socket, containerPort: number): void {
    const upstream = net.connect({ port: containerPort, host: "127.0.0.1", allowHalfOpen: true });
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    }
    const destroy = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", destroy);
    upstream.on("error", destroy);
    // pipe() ends each side when the other ends; with the client gone nobody can read the rest.
    client.once("close", () => upstream.destroy());
    const seen = () => (this.lastTraffic = Date.now());
    client.on("data", seen);
    upstream.on("data", seen);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

async function closeAll(proxies: PortProxy[]): Promise<void> {
  await Promise.all(proxies.map((p) => p.close()));
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    const done = (up: boolean) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
