import { execFile } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { LogBatch, type LogStreamName, type WorkloadLogLine } from "./log-lines.js";
import { Cgroups, NVIDIA_MAJOR } from "./cgroups.js";
import type { Logger } from "./logger.js";
import { accepts, closeAll, PortProxy } from "./port-proxy.js";
import { ensureAccount, killUid, ProcessUsers, removeAccount } from "./process-users.js";
import {
  adoptProcess,
  bootId,
  type ContainerEngine,
  inspectContainer,
  killStrays,
  type ProcessConfinement,
  containerName,
  detectEngine,
  ensureImage,
  type Exit,
  followContainer,
  type Handle,
  type Output,
  spawnProcess,
  startContainer,
  type Trace,
} from "./workload-handles.js";

export type { ContainerEngine, LogStreamName, WorkloadLogLine };
export { containerName, detectEngine };

export type WorkloadState = "STARTING" | "RUNNING" | "STOPPED" | "FAILED" | "REMOVED";

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
  /** CPU limit in millicores (containers, and confined processes where cgroups are usable). @default no limit */
  cpuMillicores?: number;
  /** Memory limit in bytes (containers; confined processes: RLIMIT_DATA, and cgroups where usable). @default no limit */
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

/** The outcome of `Workloads.run`, for the command result: ok false when the workload could not start. */
export interface RunResult {
  ok: boolean;
  message: string;
}

export interface VolumeUsage {
  environmentId: string;
  usedBytes: number;
  time: Date;
}

/** Where the runtime tells what happens to the workloads. */
export interface WorkloadEvents {
  status(report: StatusReport): void;
  /** Output lines of one environment, oldest first, batched. */
  logs(environmentId: string, lines: WorkloadLogLine[]): void;
}

export interface WorkloadsOptions {
  /**
   * Each environment lives in `<dataDir>/environments/<environmentId>/`: its volume in `volume/`, its
   * state in `workload.json` and, in process mode, its output in `stdout.log` and `stderr.log`.
   */
  dataDir: string;
  logger: Logger;
  events: WorkloadEvents;
  /** Time between the polite stop (SIGTERM, `<engine> stop`) and SIGKILL. @default 10000 */
  stopGraceMs?: number;
  /**
   * "process" runs host processes even where a container engine exists (only when asked for:
   * `--process-mode`); "none" runs nothing. @default detectEngine(): docker, podman or "none"
   */
  engine?: ContainerEngine | "process" | "none";
  /**
   * Process mode: the uids environments run as, one each (the agent must be root). Unset, workloads
   * run as the agent's own user, unconfined. @default unset
   */
  processUsers?: { first: number; last: number };
  /** Process mode, with processUsers: most processes of one environment. @default 4096 */
  processPidsLimit?: number;
  /**
   * The device minor of each of the host's GPUs by UUID (/dev/nvidia<minor>), for fencing them; a
   * MIG device's UUID maps to its parent's minor. @default none known
   */
  gpuDeviceMinors?: Map<string, number>;
  /** How containers are confined. @default DEFAULT_CONTAINER_POLICY, with userns where podman can */
  containerPolicy?: Partial<ContainerPolicy>;
}

/** The state file's layout; a file of another version is not trusted. */
const STATE_VERSION = 2;
const READY_POLL_MS = 200;
// Ids become directory and container names (and `rm -rf` targets): nothing that could leave the data dir.
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const execFileP = promisify(execFile);

/**
 * The capabilities a container keeps: what a development box needs to install packages, change file
 * owners and modes, switch users (sudo, sshd) and bind low ports. Engine defaults dropped with them:
 * MKNOD, NET_RAW, SETFCAP, SETPCAP.
 */
export const CONTAINER_CAPABILITIES = [
  "AUDIT_WRITE",
  "CHOWN",
  "DAC_OVERRIDE",
  "FOWNER",
  "FSETID",
  "KILL",
  "NET_BIND_SERVICE",
  "SETGID",
  "SETUID",
  "SYS_CHROOT",
];

/** How containers are confined beyond the engine's defaults. */
export interface ContainerPolicy {
  /** Most processes (threads count) in one container. @default 4096 */
  pidsLimit: number;
  /** Capabilities added to CONTAINER_CAPABILITIES by the operator. */
  capAdd: string[];
  /**
   * podman only: a user namespace of its own per container (`--userns=auto`, root inside is an
   * unprivileged uid outside), with the volume chowned into it (`:U`). Needs subordinate ids for
   * the user "containers" in /etc/subuid and /etc/subgid. @default whether those exist
   */
  userns: boolean;
}

export const DEFAULT_CONTAINER_POLICY: ContainerPolicy = { pidsLimit: 4096, capAdd: [], userns: false };

/** Whether podman can give each container a user namespace of its own (`--userns=auto`). */
export function subordinateIdsForContainers(): boolean {
  try {
    return ["/etc/subuid", "/etc/subgid"].every((f) => /^containers:\d+:\d+$/m.test(readFileSync(f, "utf8")));
  } catch {
    return false;
  }
}

/**
 * The argv (after the engine's name) that starts an environment's container, detached. Never
 * `--privileged`, the host's network or PID namespace, or a host path other than the volume.
 */
export function containerRunArgs(
  engine: ContainerEngine,
  spec: WorkloadSpec,
  volumeDir: string,
  policy: ContainerPolicy = DEFAULT_CONTAINER_POLICY,
): string[] {
  const args = ["run", "-d", "--name", containerName(spec.environmentId)];
  for (const [k, v] of Object.entries(containerLabels(spec))) args.push("--label", `${k}=${v}`);
  // A small init as PID 1 passes the stop signal on (a program as PID 1 ignores SIGTERM by default).
  args.push("--init");
  args.push("--security-opt", "no-new-privileges", "--pids-limit", String(policy.pidsLimit), "--cap-drop", "ALL");
  args.push("--cap-add", [...new Set([...CONTAINER_CAPABILITIES, ...policy.capAdd])].join(","));
  const userns = engine === "podman" && policy.userns;
  if (userns) args.push("--userns=auto");
  if (spec.gpuUuids.length > 0) {
    // docker parses --gpus as CSV: the quotes keep a list of several GPUs in one field.
    if (engine === "docker") args.push("--gpus", `"device=${spec.gpuUuids.join(",")}"`);
    else for (const uuid of spec.gpuUuids) args.push("--device", `nvidia.com/gpu=${uuid}`); // CDI names
  }
  for (const p of spec.ports) if (p.hostPort > 0) args.push("-p", `${p.hostPort}:${p.containerPort}`);
  args.push("-v", `${volumeDir}:/workspace${userns ? ":U" : ""}`, "-w", "/workspace");
  // The engine shows the container only its GPUs; naming them by UUID holds whatever order it numbers them in.
  const gpus =
    spec.gpuUuids.length > 0 ? { CUDA_VISIBLE_DEVICES: spec.gpuUuids.join(","), NVIDIA_VISIBLE_DEVICES: spec.gpuUuids.join(",") } : {};
  for (const [k, v] of Object.entries({ ...workloadEnv(spec), ...gpus })) args.push("-e", `${k}=${v}`);
  if (spec.cpuMillicores) args.push("--cpus", String(spec.cpuMillicores / 1000));
  if (spec.memoryBytes) args.push("--memory", String(spec.memoryBytes));
  const [entrypoint, ...rest] = spec.command;
  if (entrypoint !== undefined) args.push("--entrypoint", entrypoint);
  args.push(spec.image, ...rest, ...spec.args);
  return args;
}

/** Labels that name a container's environment, so that it can be told apart from the host's others. */
function containerLabels(spec: WorkloadSpec): Record<string, string> {
  return {
    "remotegpu.environment": spec.environmentId,
    "remotegpu.workspace": spec.workspaceId,
    "remotegpu.generation": String(spec.generation),
  };
}

/**
 * The spec's env plus what a workload needs to know of itself: PORT (the env's own PORT if the
 * control plane sent one, else the first port), PORT_<NAME> per port, and its environment id.
 */
function workloadEnv(spec: WorkloadSpec): Record<string, string> {
  const env: Record<string, string> = { ...spec.env, REMOTEGPU_ENVIRONMENT_ID: spec.environmentId };
  if (spec.env.PORT === undefined && spec.ports[0]) env.PORT = String(spec.ports[0].containerPort);
  for (const p of spec.ports) env[`PORT_${p.name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`] = String(p.containerPort);
  return env;
}

function processEnv(spec: WorkloadSpec, volume: string): Record<string, string> {
  const gpus = spec.gpuUuids.join(",");
  return {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: volume,
    ...workloadEnv(spec),
    // Last: a workload does not get to widen its own GPU set.
    CUDA_VISIBLE_DEVICES: gpus,
    NVIDIA_VISIBLE_DEVICES: gpus,
  };
}

/** Where an SSH session runs (see Workloads.sessionTarget). */
export type SessionTarget =
  | { kind: "process"; generation: number; cwd: string; env: Record<string, string>; confinement?: ProcessConfinement; ports: number[] }
  | { kind: "container"; generation: number; engine: ContainerEngine; name: string };

/** What `workload.json` holds. */
interface SavedWorkload {
  version: number;
  engine: ContainerEngine | "process" | "none";
  spec: WorkloadSpec;
  state: WorkloadState;
  message: string;
  exitCode?: number;
  since: string;
  /** Where the running workload is; absent once it has ended. */
  trace?: Trace;
}

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
  /** The state file as last written, and the write in progress. */
  saved: string;
  saving: Promise<void>;
}

/**
 * The first directory above `dir` that other users may not pass (no search bit for others), if any:
 * a confined workload's uid needs every one of them to reach its volume by its full path.
 */
function closedAncestor(dir: string): string | undefined {
  for (let d = path.dirname(path.resolve(dir)); ; d = path.dirname(d)) {
    const mode = statSync(d, { throwIfNoEntry: false })?.mode; // one still to be made is made passable
    if (mode !== undefined && (mode & 0o001) === 0) return d;
    if (d === path.dirname(d)) return undefined;
  }
}

/**
 * Runs environments on this host, as containers (docker or podman) or as plain processes, and
 * reports their state and output through `events`. Commands for one environment run one at a time,
 * in order; different environments proceed independently.
 *
 * Workloads outlive the agent: each one's state file says where it runs and how far its output was
 * read, and `recover` (before the agent connects) takes over what is still running.
 */
export class Workloads {
  readonly engine: ContainerEngine | "process" | "none";
  readonly containerPolicy: ContainerPolicy;
  private readonly users?: ProcessUsers;
  /** Set when workloads are confined: the cgroups to use, or why there are none. */
  private readonly cgroups?: Promise<Cgroups | string>;
  private readonly workloads = new Map<string, Workload>();
  /** When SSH sessions into each environment last carried bytes. */
  private readonly sshTraffic = new Map<string, number>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly stopGraceMs: number;
  /** Why this agent runs no environments, for its hello; "" when it does. */
  readonly runtimeUnavailableReason: string;
  /** Set once the agent exits: no more runs; after a shutdown, no more reports either. */
  private closing?: "detach" | "shutdown";

  constructor(private readonly o: WorkloadsOptions) {
    this.engine = o.engine ?? detectEngine();
    this.stopGraceMs = o.stopGraceMs ?? 10_000;
    this.containerPolicy = { ...DEFAULT_CONTAINER_POLICY, userns: subordinateIdsForContainers(), ...o.containerPolicy };
    if (this.engine === "process" && o.processUsers) {
      this.users = new ProcessUsers(o.dataDir, o.processUsers.first, o.processUsers.last);
      // A cgroup per environment (CPU, memory, pids; on v1 the GPUs it was not given kept out).
      this.cgroups = Cgroups.detect();
      void this.cgroups.then((c) =>
        this.o.logger[typeof c === "string" || !c.devices ? "warn" : "info"](isolationSummary(c, o.gpuDeviceMinors)),
      );
    }
    const closed = this.users && closedAncestor(o.dataDir);
    this.runtimeUnavailableReason =
      this.engine === "none"
        ? "no container engine (docker or podman) answers on this host, and the agent was not started with --process-mode"
        : closed
          ? `workloads run as uids of their own and cannot reach their volumes under ${o.dataDir}: other users may not pass ${closed} (chmod o+x it, or choose another --data-dir)`
          : "";
  }

  get containersSupported(): boolean {
    return this.engine === "docker" || this.engine === "podman";
  }

  /** Ids of the environments starting or running (for the agent's hello). */
  running(): string[] {
    return [...this.workloads.values()].filter((w) => w.state === "STARTING" || w.state === "RUNNING").map((w) => w.spec.environmentId);
  }

  /**
   * How an SSH session enters a running environment: its container, or in process mode its
   * directory, environment variables, uid and ports. Undefined when it is not running here.
   */
  async sessionTarget(environmentId: string): Promise<SessionTarget | undefined> {
    const w = this.workloads.get(environmentId);
    if (w?.state !== "RUNNING") return undefined;
    const generation = w.spec.generation;
    if (this.engine === "process") {
      const volume = path.join(this.dirOf(environmentId), "volume");
      // The workload's own confinement: its uid, limits and cgroups (made when it started).
      let confinement: ProcessConfinement | undefined;
      if (this.users) {
        const uid = await this.users.uidOf(environmentId);
        confinement = { uid, pidsLimit: this.o.processPidsLimit ?? 4096, memoryBytes: w.spec.memoryBytes || undefined };
        const cgroups = await this.cgroups;
        if (cgroups instanceof Cgroups) confinement.enter = (pid) => cgroups.enter(environmentId, pid);
      }
      return {
        kind: "process",
        generation,
        cwd: volume,
        env: processEnv(w.spec, volume),
        confinement,
        ports: w.spec.ports.map((p) => p.containerPort),
      };
    }
    if (this.engine === "none") return undefined;
    return { kind: "container", generation, engine: this.engine, name: containerName(environmentId) };
  }

  /** Counts SSH traffic as activity (idle auto-stop), as port traffic is. */
  touch(environmentId: string): void {
    this.sshTraffic.set(environmentId, Date.now());
  }

  /** When each running workload's ports (or SSH sessions) last carried traffic (only those that had any). */
  activity(): { environmentId: string; lastTraffic: Date }[] {
    const out: { environmentId: string; lastTraffic: Date }[] = [];
    for (const w of this.workloads.values()) {
      const last = Math.max(this.sshTraffic.get(w.spec.environmentId) ?? 0, ...w.proxies.map((p) => p.lastTraffic));
      if (w.state === "RUNNING" && last > 0) out.push({ environmentId: w.spec.environmentId, lastTraffic: new Date(last) });
    }
    return out;
  }

  /** Bytes used by each environment's volume on this host (`du`; environments it cannot measure are left out). */
  async volumeUsage(): Promise<VolumeUsage[]> {
    const out: VolumeUsage[] = [];
    for (const id of this.workloads.keys()) {
      const { stdout } = await execFileP("du", ["-s", "-B1", path.join(this.dirOf(id), "volume")]).catch(() => ({ stdout: "" }));
      const usedBytes = Number.parseInt(stdout, 10);
      if (Number.isSafeInteger(usedBytes)) out.push({ environmentId: id, usedBytes, time: new Date() });
    }
    return out;
  }

  /**
   * Takes over the workloads an earlier agent on this host left: what still runs (the same process,
   * checked by its start time, or the same container) is followed again, its output from where the
   * earlier agent stopped reading; what ended meanwhile is reported FAILED. Call once, before connecting.
   */
  async recover(): Promise<void> {
    const root = path.join(this.o.dataDir, "environments");
    const ids = await readdir(root).catch(() => [] as string[]);
    for (const id of ids.filter((i) => SAFE_ID.test(i))) {
      await this.serial(id, () => this.recoverOne(id)).catch((err: unknown) =>
        this.o.logger.error({ err, environmentId: id }, "could not recover a workload"),
      );
    }
  }

  private async recoverOne(id: string): Promise<void> {
    const dir = this.dirOf(id);
    const text = await readFile(path.join(dir, "workload.json"), "utf8").catch(() => undefined);
    if (text === undefined) return; // a volume whose workload never started
    const saved = parseSaved(text, id);
    if (typeof saved === "string") {
      // Not trusted: whatever it names is left alone; a new run of the environment replaces it.
      this.o.logger.warn({ environmentId: id, problem: saved }, "workload state not adopted");
      const logs = this.logBatch(id);
      logs.add("SYSTEM", `the agent restarted and could not read this workload's state (${saved}); not adopted`);
      logs.flush();
      return;
    }
    const w = this.newWorkload(saved.spec);
    Object.assign(w, { state: saved.state, message: saved.message, exitCode: saved.exitCode, since: new Date(saved.since), saved: text });
    this.workloads.set(id, w);
    if (saved.state !== "STARTING" && saved.state !== "RUNNING") return; // stopped or failed: nothing runs
    const gone = (why: string, exitCode?: number) => {
      // What it started may still run in its cgroups (and under its uid): it goes with it.
      void this.clearConfinement(id);
      this.fail(w, why, exitCode);
    };
    if (saved.engine !== this.engine) return gone(`started by an agent running ${saved.engine}; this one runs ${this.engine}`);
    const trace = saved.trace;
    if (trace?.kind === "process") {
      w.handle = adoptProcess(trace, dir, this.output(w));
      if (!w.handle) {
        return gone(
          trace.bootId === bootId()
            ? "ended while the agent was not running (exit status unknown)"
            : "the host restarted: its process is gone",
        );
      }
      try {
        await this.openProxies(w, saved.spec.ports);
      } catch (err) {
        w.logs.add("SYSTEM", errorMessage(err));
      }
    } else if (trace?.kind === "container" && (this.engine === "docker" || this.engine === "podman")) {
      const container = await inspectContainer(this.engine, trace.name);
      if (!container) return gone("its container is gone");
      if (!container.running)
        return gone(`ended while the agent was not running: exited with code ${container.exitCode}`, container.exitCode);
      w.handle = followContainer(this.engine, trace.name, trace, this.output(w));
    } else {
      return gone("its state names no process or container");
    }
    w.logs.add("SYSTEM", "adopted by a restarted agent");
    this.o.logger.info({ environmentId: id, generation: w.spec.generation }, "workload adopted");
    this.watch(w);
    this.report(w);
  }

  /**
   * Starts a workload; resolves once it is started (RUNNING follows when its first port answers) or
   * has failed to start. The same generation again only re-reports the current state, after
   * applying a changed port list where that needs no restart (process mode); a higher one replaces
   * the workload; a lower one is ignored.
   */
  async run(spec: WorkloadSpec): Promise<RunResult> {
    checkId(spec.environmentId);
    return this.serial(spec.environmentId, async () => {
      if (this.closing) throw new Error("the agent is shutting down");
      if (this.runtimeUnavailableReason) return { ok: false, message: this.runtimeUnavailableReason };
      const current = this.workloads.get(spec.environmentId);
      if (current && spec.generation < current.spec.generation)
        return { ok: true, message: `ignored: generation ${spec.generation} is older than ${current.spec.generation}` };
      if (current && spec.generation === current.spec.generation) {
        const live = current.state === "STARTING" || current.state === "RUNNING";
        const changed = live && this.engine === "process" && JSON.stringify(spec.ports) !== JSON.stringify(current.spec.ports);
        const problem = changed ? await this.changePorts(current, spec.ports) : undefined;
        this.report(current);
        if (problem) return { ok: false, message: problem };
        return { ok: true, message: `generation ${spec.generation} is already ${current.state.toLowerCase()}` };
      }
      if (current) await this.stopWorkload(current, `replaced by generation ${spec.generation}`);
      const w = this.newWorkload(spec);
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
        this.emit({ environmentId, generation, state: "STOPPED", message: "not running", time: new Date() });
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
      if (this.containersSupported) await execFileP(this.engine, ["rm", "-f", containerName(environmentId)]).catch(() => undefined);
      this.workloads.delete(environmentId); // no state file is written for it from now on
      await w?.saving;
      await rm(this.dirOf(environmentId), { recursive: true, force: true });
      if (this.users) {
        // The next environment may get this uid: nothing of this one's may be left to it.
        await removeAccount(await this.users.uidOf(environmentId));
        await this.users.release(environmentId);
      }
      w?.logs.add("SYSTEM", "removed");
      w?.logs.flush();
      const generation = Math.max(atLeastGeneration, w?.spec.generation ?? 0);
      this.emit({ environmentId, generation, state: "REMOVED", message: "removed with its volume", time: new Date() });
      this.o.logger.info({ environmentId }, "environment removed");
    });
  }

  /**
   * Leaves every workload running and stops following them, having saved how far their output was
   * read: the agent is exiting (an upgrade, a restart) and the next one adopts them.
   */
  async detach(): Promise<void> {
    this.closing = "detach";
    await this.eachWorkload(async (w) => {
      await w.handle?.detach();
      await closeAll(w.proxies);
      w.proxies = [];
      w.logs.flush();
      await this.save(w);
    });
  }

  /** Stops every workload, reporting nothing (the agent is exiting for good); later runs are refused. */
  async shutdown(): Promise<void> {
    this.closing = "shutdown";
    await this.eachWorkload(async (w) => {
      await this.halt(w);
      if (w.state === "STARTING" || w.state === "RUNNING") Object.assign(w, { state: "STOPPED", message: "the agent stopped it" });
      await this.save(w);
    });
  }

  private eachWorkload(fn: (w: Workload) => Promise<void>): Promise<unknown> {
    return Promise.all(
      [...this.workloads.keys()].map((id) =>
        this.serial(id, async () => {
          const w = this.workloads.get(id);
          if (w) await fn(w);
        }),
      ),
    );
  }

  private newWorkload(spec: WorkloadSpec): Workload {
    const w: Workload = {
      spec,
      state: "STARTING",
      message: "",
      since: new Date(),
      stopping: false,
      proxies: [],
      logs: this.logBatch(spec.environmentId, () => {
        // Where the next agent resumes the output: right after the lines just handed on (taken
        // now, before the tail reads more), so that a crash repeats or loses as little as can be.
        if (w.handle) void this.save(w, w.handle.trace());
      }),
      saved: "",
      saving: Promise.resolve(),
    };
    return w;
  }

  private output(w: Workload): Output {
    return (stream) => (text, time) => w.logs.add(stream, text, time);
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
      if (this.engine === "process") {
        const confinement = await this.confine(spec, volume);
        const strays = await killStrays(spec.environmentId);
        if (strays > 0) w.logs.add("SYSTEM", `killed ${strays} leftover process(es) of an earlier run`);
        await this.openProxies(w, spec.ports);
        w.logs.add("SYSTEM", `starting: ${program.join(" ")}`);
        w.handle = await spawnProcess(program, volume, processEnv(spec, volume), dir, this.output(w), confinement);
      } else if (this.engine !== "none") {
        const engine = this.engine;
        let said = 0;
        await ensureImage(engine, spec.image, (line) => {
          w.logs.add("SYSTEM", line);
          // The status shows the pull's progress, at most once a second.
          if (Date.now() - said < 1000) return;
          said = Date.now();
          this.transition(w, "STARTING", `pulling ${spec.image}: ${line}`.slice(0, 512));
        });
        w.logs.add("SYSTEM", `starting: ${spec.image}`);
        const name = containerName(spec.environmentId);
        w.handle = await startContainer(engine, name, containerRunArgs(engine, spec, volume, this.containerPolicy), this.output(w));
      }
    } catch (err) {
      await closeAll(w.proxies);
      w.proxies = [];
      await this.clearConfinement(spec.environmentId); // cgroups made for it
      return this.fail(w, errorMessage(err));
    }
    this.o.logger.info({ environmentId: spec.environmentId, generation: spec.generation, engine: this.engine }, "environment started");
    this.watch(w);
    await this.save(w);
  }

  /** Reports the workload's end, and RUNNING once its first port answers (right away without ports). */
  private watch(w: Workload): void {
    const handle = w.handle!;
    void handle.exited.then(async (exit) => {
      // A confined process over its memory: the cgroup counted the kill (read before it is removed).
      const cgroups = await this.cgroups;
      const oom = exit.outOfMemory || (cgroups instanceof Cgroups && (await cgroups.outOfMemory(w.spec.environmentId)));
      this.exited(w, handle, { ...exit, outOfMemory: oom });
    });
    void this.awaitReady(w);
  }

  private async awaitReady(w: Workload): Promise<void> {
    // The port it listens on is PORT. In process mode that is on 127.0.0.1; a container is reached
    // through the host port PORT is published on (none left published: nothing to wait for).
    const main = Number(workloadEnv(w.spec).PORT) || undefined;
    const port = this.engine === "process" ? main : w.spec.ports.find((p) => p.containerPort === main && p.hostPort > 0)?.hostPort;
    while (w.state === "STARTING" && !w.stopping) {
      if (!port || (await accepts(port))) {
        if (w.state === "STARTING" && !w.stopping) this.transition(w, "RUNNING", "");
        return;
      }
      await new Promise((r) => setTimeout(r, READY_POLL_MS));
    }
  }

  /** Opens the forwarders of `ports` that have none yet and closes those of ports no longer listed. */
  private async openProxies(w: Workload, ports: WorkloadPort[]): Promise<void> {
    const wanted = ports.filter((p) => p.hostPort > 0 && p.hostPort !== p.containerPort);
    const keep = (x: PortProxy) => wanted.some((p) => p.hostPort === x.hostPort && p.containerPort === x.containerPort);
    await closeAll(w.proxies.filter((x) => !keep(x)));
    w.proxies = w.proxies.filter(keep);
    for (const p of wanted) {
      if (w.proxies.some((x) => x.hostPort === p.hostPort && x.containerPort === p.containerPort)) continue;
      const proxy = await PortProxy.listen(p.hostPort, p.containerPort).catch((err: unknown) => {
        throw new Error(`port ${p.name}: cannot listen on ${p.hostPort}: ${errorMessage(err)}`);
      });
      w.proxies.push(proxy);
    }
  }

  /**
   * A changed port list on a running process: only the forwarders change, the workload runs on.
   * A forwarder that cannot listen is said in the log (and returned); the workload still runs.
   */
  private async changePorts(w: Workload, ports: WorkloadPort[]): Promise<string | undefined> {
    const problem = await this.openProxies(w, ports).then(
      () => undefined,
      (err: unknown) => errorMessage(err),
    );
    w.spec = { ...w.spec, ports };
    w.logs.add("SYSTEM", `ports now ${ports.map((p) => `${p.name} ${p.hostPort}->${p.containerPort}`).join(", ") || "none"}`);
    if (problem) w.logs.add("SYSTEM", problem);
    await this.save(w);
    return problem;
  }

  private exited(w: Workload, handle: Handle, exit: Exit): void {
    if (w.handle !== handle || this.closing) return; // replaced, or the agent is exiting
    const limit = w.spec.memoryBytes ? `${Math.round(w.spec.memoryBytes / 2 ** 20)} MiB` : "";
    // 137 is SIGKILL's; where the engine cannot tell (cgroup v1 hosts), the memory limit is the usual cause.
    const how = exit.unknown
      ? "ended (exit status unknown: an earlier agent started it)"
      : exit.outOfMemory
        ? `killed for going over its memory limit of ${limit} (${exit.code !== null ? `exit code ${exit.code}` : (exit.signal ?? "a signal")})`
        : exit.code === 137 && limit && this.containersSupported
          ? `exited with code 137 (killed: SIGKILL, most often for going over the memory limit of ${limit})`
          : exit.code !== null
            ? `exited with code ${exit.code}`
            : `killed by ${exit.signal ?? "a signal"}`;
    w.logs.add("SYSTEM", how);
    if (w.stopping) return; // stopWorkload reports
    w.handle = undefined;
    void this.clearConfinement(w.spec.environmentId); // what it left behind
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

  /**
   * Process mode with its own uid: the environment's uid, its volume owned by that uid alone, and the
   * directories above it passable (not readable) by others, so that it reaches its volume and nothing
   * else of the agent's. Whatever still runs as that uid (an earlier run's leftovers) is killed.
   */
  private async confine(spec: WorkloadSpec, volume: string): Promise<ProcessConfinement | undefined> {
    if (!this.users) return undefined;
    const id = spec.environmentId;
    const uid = await this.users.uidOf(id);
    await killUid(uid);
    await ensureAccount(uid);
    for (const d of [this.o.dataDir, path.dirname(path.dirname(volume)), path.dirname(volume)]) await chmod(d, 0o711);
    const owner = (await stat(volume)).uid;
    if (owner !== uid) await execFileP("chown", ["-R", `${uid}:${uid}`, volume]);
    await chmod(volume, 0o700);
    const pidsLimit = this.o.processPidsLimit ?? 4096;
    const confinement: ProcessConfinement = { uid, pidsLimit, memoryBytes: spec.memoryBytes || undefined };
    const cgroups = await this.cgroups;
    if (cgroups instanceof Cgroups) {
      const denyDevices = deniedGpuDevices(this.o.gpuDeviceMinors, spec.gpuUuids);
      await cgroups.create(id, { cpuMillicores: spec.cpuMillicores, memoryBytes: spec.memoryBytes, pids: pidsLimit, denyDevices });
      confinement.enter = (pid) => cgroups.enter(id, pid);
    }
    return confinement;
  }

  /** Kills what is left of a confined workload (its uid's processes, its cgroups) and removes its cgroups. */
  private async clearConfinement(environmentId: string): Promise<void> {
    if (!this.users) return;
    await killUid(await this.users.uidOf(environmentId));
    const cgroups = await this.cgroups;
    if (cgroups instanceof Cgroups)
      await cgroups
        .remove(environmentId)
        .catch((err: unknown) => this.o.logger.warn({ environmentId, err: errorMessage(err) }, "cgroup left behind"));
  }

  /** Ends the workload and its port forwarding, without reporting. */
  private async halt(w: Workload): Promise<void> {
    w.stopping = true;
    await w.handle?.stop(this.stopGraceMs);
    // A confined workload's uid is its own: nothing of it survives, not even what left its group.
    if (w.handle) await this.clearConfinement(w.spec.environmentId);
    w.handle = undefined;
    await closeAll(w.proxies);
    w.proxies = [];
  }

  private fail(w: Workload, message: string, exitCode?: number): void {
    w.logs.add("SYSTEM", `failed: ${message}`);
    w.logs.flush();
    this.transition(w, "FAILED", message, exitCode);
    this.o.logger.warn({ environmentId: w.spec.environmentId, generation: w.spec.generation, message }, "environment failed");
  }

  private transition(w: Workload, state: WorkloadState, message: string, exitCode?: number): void {
    Object.assign(w, { state, message, exitCode, since: new Date() });
    this.report(w);
    void this.save(w);
  }

  private report(w: Workload): void {
    const { environmentId, generation } = w.spec;
    this.emit({ environmentId, generation, state: w.state, message: w.message, exitCode: w.exitCode, time: w.since });
  }

  private emit(report: StatusReport): void {
    if (this.closing !== "shutdown") this.o.events.status(report);
  }

  /** Writes the workload's state file if it changed (whole, through a rename: never half a file). */
  private save(w: Workload, trace = w.handle?.trace()): Promise<void> {
    w.saving = w.saving.then(async () => {
      const id = w.spec.environmentId;
      if (this.workloads.get(id) !== w) return; // removed or replaced
      const saved: SavedWorkload = {
        version: STATE_VERSION,
        engine: this.engine,
        spec: w.spec,
        state: w.state,
        message: w.message,
        exitCode: w.exitCode,
        since: w.since.toISOString(),
        trace: w.handle && trace,
      };
      const text = JSON.stringify(saved);
      if (text === w.saved) return;
      const file = path.join(this.dirOf(id), "workload.json");
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(`${file}.tmp`, text, { mode: 0o600 });
      await rename(`${file}.tmp`, file);
      w.saved = text;
    });
    w.saving = w.saving.catch((err: unknown) => this.o.logger.warn({ err }, "could not save a workload's state"));
    return w.saving;
  }

  private logBatch(environmentId: string, delivered = () => {}): LogBatch {
    return new LogBatch((lines) => {
      if (this.closing !== "shutdown") this.o.events.logs(environmentId, lines);
      delivered();
    });
  }

  private dirOf(environmentId: string): string {
    return path.join(this.o.dataDir, "environments", environmentId);
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

/** A state file's content, or what is wrong with it. */
function parseSaved(text: string, environmentId: string): SavedWorkload | string {
  let saved: Partial<SavedWorkload>;
  try {
    saved = JSON.parse(text) as Partial<SavedWorkload>;
  } catch {
    return "its state file is not JSON";
  }
  if (saved?.version !== STATE_VERSION) return `its state file is of version ${String(saved?.version ?? 1)}, not ${STATE_VERSION}`;
  const spec = saved.spec;
  if (
    spec?.environmentId !== environmentId ||
    typeof spec.generation !== "number" ||
    !Array.isArray(spec.ports) ||
    !["STARTING", "RUNNING", "STOPPED", "FAILED"].includes(saved.state ?? "") ||
    typeof saved.since !== "string"
  )
    return "its state file is incomplete";
  const t = saved.trace;
  if (t && !(t.kind === "process" ? Number.isInteger(t.pid) && t.pid > 1 && typeof t.startTicks === "string" : t.kind === "container"))
    return "its state file names no valid process";
  return saved as SavedWorkload;
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

/**
 * The cgroup device rules ("major:minor") that keep a workload given `gpuUuids` out of the host's
 * other GPUs. A MIG device maps to its parent's minor, so giving one leaves its parent's
 * /dev/nvidia<minor> open; /dev/nvidia-caps, which MIG devices need too, is never denied. MIG
 * devices of one GPU are therefore not fenced from each other: that would take rules on the
 * nvidia-caps minors of each GPU and compute instance.
 */
export function deniedGpuDevices(minors: ReadonlyMap<string, number> | undefined, gpuUuids: readonly string[]): string[] {
  const given = new Set(gpuUuids.map((uuid) => minors?.get(uuid)));
  return [...new Set(minors?.values() ?? [])].filter((minor) => !given.has(minor)).map((minor) => `${NVIDIA_MAJOR}:${minor}`);
}

/** One line for the agent's log: what confines process-mode workloads on this host. */
function isolationSummary(cgroups: Cgroups | string, minors: Map<string, number> | undefined): string {
  if (typeof cgroups === "string") return `process mode: no cgroups (${cgroups}): CPU not limited, GPUs not fenced`;
  const known = new Set(minors?.values() ?? []).size;
  const gpus = !cgroups.devices
    ? "GPUs not fenced (cgroup v2 has no device files to write)"
    : known
      ? `GPUs fenced by device rules (${known} known)`
      : "GPUs not fenced (no GPU device minors known)";
  return `process mode: cgroup v${cgroups.version} per environment (CPU, memory, pids); ${gpus}`;
}
