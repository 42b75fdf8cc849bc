import { readdirSync, readFileSync } from "node:fs";
import { access, mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import path from "node:path";

// Control groups for process-mode workloads: each environment gets one of its own, with its CPU and
// memory reservation and a pids limit, and on cgroup v1 a device list that leaves out the host's
// GPUs it was not given. The agent must be root. v1 hierarchies (one mount per controller) and the
// unified v2 hierarchy are both handled; GPUs can only be fenced on v1, where the devices
// controller takes rules by file (v2 wants an eBPF program, which Node cannot load).

/** What one environment may use. */
export interface CgroupLimits {
  /** CPU time per wall-clock second, in thousandths of a CPU; unset for no limit. */
  cpuMillicores?: number;
  /** Memory (and, on v1, memory plus swap) in bytes; unset for no limit. */
  memoryBytes?: number;
  pids: number;
  /** Character devices it may not open, as "major:minor" (the GPUs it was not given). */
  denyDevices: string[];
}

const V1_CONTROLLERS = ["cpu", "memory", "pids", "devices"] as const;
const V2_CONTROLLERS = ["cpu", "memory", "pids"] as const;
/** The leaf a v2 agent runs in (systemd's DelegateSubgroup=), beside the environments' cgroups. */
const V2_AGENT_LEAF = "remotegpu-agent";
const GROUP = "remotegpu";
const CPU_PERIOD_US = 100_000;

export class Cgroups {
  private constructor(
    readonly version: 1 | 2,
    /** Per controller (v1), or the one entry "" (v2): the directory under which environments' cgroups go. */
    private readonly bases: Map<string, string>,
  ) {}

  /** Whether GPUs can be fenced (the v1 devices controller is there). */
  get devices(): boolean {
    return this.bases.has("devices");
  }

  /**
   * The hierarchy this host offers, under the cgroup the agent runs in (a systemd unit's, with
   * `Delegate=yes` on v2), or why there is none the agent can use.
   */
  static async detect(root = "/sys/fs/cgroup", self = readSelf()): Promise<Cgroups | string> {
    try {
      if (await exists(path.join(root, "cgroup.controllers"))) return new Cgroups(2, await setUpV2(root, self));
      return new Cgroups(1, await setUpV1(root, self));
    } catch (err) {
      return `cgroups: ${err instanceof Error ? err.message : String(err)}`;
    }
  }

  private dirs(environmentId: string): string[] {
    return [...this.bases.values()].map((base) => path.join(base, environmentId));
  }

  /** Makes the environment's cgroups afresh (what an earlier run left is killed) and sets the limits. */
  async create(environmentId: string, limits: CgroupLimits): Promise<void> {
    await this.remove(environmentId);
    for (const [controller, base] of this.bases) {
      const dir = path.join(base, environmentId);
      await mkdir(dir);
      const set = (file: string, value: string) => writeFile(path.join(dir, file), value);
      const cpu = limits.cpuMillicores ? Math.max(1000, Math.round((limits.cpuMillicores * CPU_PERIOD_US) / 1000)) : undefined;
      if (this.version === 2) {
        await set("cpu.max", `${cpu ?? "max"} ${CPU_PERIOD_US}`);
        if (limits.memoryBytes) await set("memory.max", String(limits.memoryBytes));
        if (limits.memoryBytes && (await exists(path.join(dir, "memory.swap.max")))) await set("memory.swap.max", "0");
        await set("pids.max", String(limits.pids));
      } else if (controller === "cpu") {
        await set("cpu.cfs_period_us", String(CPU_PERIOD_US));
        await set("cpu.cfs_quota_us", String(cpu ?? -1));
      } else if (controller === "memory" && limits.memoryBytes) {
        await set("memory.limit_in_bytes", String(limits.memoryBytes));
        // Without swap accounting the file is absent: the limit then holds for RAM only.
        if (await exists(path.join(dir, "memory.memsw.limit_in_bytes")))
          await set("memory.memsw.limit_in_bytes", String(limits.memoryBytes));
      } else if (controller === "pids") {
        await set("pids.max", String(limits.pids));
      } else if (controller === "devices") {
        for (const device of limits.denyDevices) await set("devices.deny", `c ${device} rwm`);
      }
    }
  }

  /** Moves a process (and so everything it starts from then on) into the environment's cgroups. */
  async enter(environmentId: string, pid: number): Promise<void> {
    for (const dir of this.dirs(environmentId)) await writeFile(path.join(dir, "cgroup.procs"), String(pid));
  }

  /** Pids in the environment's cgroups (none when they do not exist). */
  async pids(environmentId: string): Promise<number[]> {
    const found = new Set<number>();
    for (const dir of this.dirs(environmentId)) {
      const text = await readFile(path.join(dir, "cgroup.procs"), "utf8").catch(() => "");
      for (const line of text.split("\n")) if (line.trim()) found.add(Number(line));
    }
    return [...found];
  }

  /** Whether the kernel killed a process of the environment for going over its memory limit. */
  async outOfMemory(environmentId: string): Promise<boolean> {
    const [file, base] = this.version === 2 ? ["memory.events", this.bases.get("")] : ["memory.oom_control", this.bases.get("memory")];
    const text = base ? await readFile(path.join(base, environmentId, file), "utf8").catch(() => "") : "";
    return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0) > 0;
  }

  /** Kills whatever is still in the environment's cgroups and removes them. */
  async remove(environmentId: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      for (const pid of await this.pids(environmentId)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone already
        }
      }
      const left: string[] = [];
      for (const dir of this.dirs(environmentId)) {
        await rmdir(dir).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== "ENOENT") left.push(`${dir}: ${err.code}`);
        });
      }
      if (left.length === 0) return;
      // A killed process leaves its cgroup a moment after the signal.
      if (attempt >= 20) throw new Error(`cannot remove ${left.join(", ")}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function readSelf(): string {
  return readFileSync("/proc/self/cgroup", "utf8");
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** v1: the agent's own cgroup in each controller's hierarchy, from /proc/self/cgroup ("4:memory:/path"). */
async function setUpV1(root: string, self: string): Promise<Map<string, string>> {
  const own = new Map<string, string>();
  for (const line of self.split("\n")) {
    const [, controllers, where] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    for (const c of controllers?.split(",") ?? []) own.set(c, where!);
  }
  const mounts = readdirSync(root);
  const bases = new Map<string, string>();
  for (const c of V1_CONTROLLERS) {
    // A controller may share a mount ("cpu,cpuacct"); distributions add a link by each name.
    const mount = mounts.find((m) => m.split(",").includes(c));
    if (!mount || !own.has(c)) {
      if (c === "devices") continue; // CPU, memory and pids still hold without it
      throw new Error(`no ${c} controller mounted under ${root}`);
    }
    const base = path.join(root, mount, own.get(c)!, GROUP);
    await mkdir(base, { recursive: true });
    bases.set(c, base);
  }
  return bases;
}

/**
 * v2: a cgroup may not both hold processes and give controllers to its children, and systemd puts a
 * restarted agent back into its unit's cgroup. So the agent must run in a leaf of a delegated
 * subtree (systemd 254+: `Delegate=` with `DelegateSubgroup=remotegpu-agent`), whose parent gets the
 * environments' cgroups beside it; or in the root cgroup. Anywhere else (a login session's scope,
 * an older systemd) it uses no cgroups and says why, rather than rearrange cgroups it does not own.
 */
async function setUpV2(root: string, self: string): Promise<Map<string, string>> {
  const own = /^0::(.*)$/m.exec(self)?.[1];
  if (own === undefined) throw new Error("no v2 entry in /proc/self/cgroup");
  if (own !== "/" && path.basename(own) !== V2_AGENT_LEAF)
    throw new Error(
      `the agent runs in ${own}, not in a delegated subgroup "${V2_AGENT_LEAF}" (systemd 254+: Delegate=cpu memory pids and DelegateSubgroup=${V2_AGENT_LEAF})`,
    );
  const dir = path.join(root, own === "/" ? "/" : path.dirname(own));
  const available = (await readFile(path.join(dir, "cgroup.controllers"), "utf8")).split(/\s+/);
  const missing = V2_CONTROLLERS.filter((c) => !available.includes(c));
  if (missing.length > 0) throw new Error(`controllers ${missing.join(", ")} not delegated to ${dir} (systemd: Delegate=cpu memory pids)`);
  const enable = V2_CONTROLLERS.map((c) => `+${c}`).join(" ");
  await writeFile(path.join(dir, "cgroup.subtree_control"), enable);
  const base = path.join(dir, GROUP);
  await mkdir(base, { recursive: true });
  await writeFile(path.join(base, "cgroup.subtree_control"), enable);
  return new Map([["", base]]);
}

/**
 * The device minor of each NVIDIA GPU on this host by UUID (`/dev/nvidia<minor>`, major 195), from
 * the driver's /proc/driver/nvidia/gpus/<bus id>/information ("Device Minor:", "GPU UUID:").
 */
export function nvidiaDeviceMinors(procDir = "/proc/driver/nvidia/gpus"): Map<string, number> {
  const minors = new Map<string, number>();
  let entries: string[] = [];
  try {
    entries = readdirSync(procDir);
  } catch {
    return minors; // no driver loaded
  }
  for (const bus of entries) {
    try {
      const info = readFileSync(path.join(procDir, bus, "information"), "utf8");
      const uuid = /^GPU UUID:\s*(\S+)/m.exec(info)?.[1];
      const minor = /^Device Minor:\s*(\d+)/m.exec(info)?.[1];
      if (uuid && minor) minors.set(uuid, Number(minor));
    } catch {
      // a GPU that fell off the bus
    }
  }
  return minors;
}

/** NVIDIA's character-device major for /dev/nvidia<minor>. */
export const NVIDIA_MAJOR = 195;
