import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/**
 * Unprivileged uids for process-mode workloads, one per environment, taken from a range the
 * operator gives (`--workload-uids`) and kept in `<dataDir>/workload-uids.json` so that an
 * environment keeps its uid (and so its volume's owner) across runs and agent restarts. The uid is
 * also the workload's gid and its only group.
 */
export class ProcessUsers {
  private assigned?: Record<string, number>;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly file: string;

  constructor(
    dataDir: string,
    readonly first: number,
    readonly last: number,
  ) {
    if (!(Number.isInteger(first) && Number.isInteger(last) && first > 0 && first <= last && last < 2 ** 31))
      throw new Error(`workload uids: ${first}-${last} is not a range of positive uids`);
    this.file = path.join(dataDir, "workload-uids.json");
  }

  /** The environment's uid, assigning the lowest free one of the range the first time. */
  uidOf(environmentId: string): Promise<number> {
    return this.serial(async (assigned) => {
      const known = assigned[environmentId];
      if (known !== undefined) return known;
      const taken = new Set(Object.values(assigned));
      for (let uid = this.first; uid <= this.last; uid++) {
        if (taken.has(uid)) continue;
        assigned[environmentId] = uid;
        await this.write(assigned);
        return uid;
      }
      throw new Error(`no free workload uid left in ${this.first}-${this.last}`);
    });
  }

  /** Gives an environment's uid back (it was removed, volume and all). */
  release(environmentId: string): Promise<void> {
    return this.serial(async (assigned) => {
      if (!(environmentId in assigned)) return;
      delete assigned[environmentId];
      await this.write(assigned);
    });
  }

  private serial<T>(fn: (assigned: Record<string, number>) => Promise<T>): Promise<T> {
    const result = this.queue.then(async () => fn(await this.load()));
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async load(): Promise<Record<string, number>> {
    if (this.assigned) return this.assigned;
    const text = await readFile(this.file, "utf8").catch(() => "{}");
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error(`${this.file} is not JSON: fix or remove it (environments' uids are kept there)`);
    }
    const assigned: Record<string, number> = {};
    for (const [id, uid] of Object.entries(parsed as Record<string, unknown>))
      if (typeof uid === "number" && uid >= this.first && uid <= this.last) assigned[id] = uid;
    this.assigned = assigned;
    return assigned;
  }

  private async write(assigned: Record<string, number>): Promise<void> {
    await writeFile(`${this.file}.tmp`, JSON.stringify(assigned), { mode: 0o600 });
    await rename(`${this.file}.tmp`, this.file);
  }
}

/** SIGKILLs every process whose real uid is `uid` (a workload's, all of it: what left its group too). */
export async function killUid(uid: number): Promise<void> {
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    if (Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]) !== uid) continue;
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}

/**
 * Gives a workload uid a name (user and group `rgpu-<uid>`) unless it has one: programs that look
 * their user up (OpenSSH's sftp-server and scp, `whoami`) fail for a uid without one. It is no login:
 * no shell (nologin), no home, no password, and expired, so that sshd, su, cron and at refuse it.
 * A uid of the range that belongs to another user is refused. useradd takes a lock on /etc/passwd: a
 * busy lock is tried again.
 */
export async function ensureAccount(uid: number): Promise<void> {
  const name = `rgpu-${uid}`;
  const existing = await execFileP("getent", ["passwd", String(uid)]).catch(() => undefined);
  if (existing !== undefined) {
    if (existing.stdout.startsWith(`${name}:`)) return;
    throw new Error(`uid ${uid} is the system's user "${existing.stdout.split(":")[0]}": give --workload-uids a range no user has`);
  }
  for (let attempt = 0; ; attempt++) {
    try {
      if ((await execFileP("getent", ["group", String(uid)]).catch(() => undefined)) === undefined) {
        await execFileP("groupadd", ["--gid", String(uid), name]);
      }
      const shell = ["/usr/sbin/nologin", "/sbin/nologin"].find((s) => existsSync(s)) ?? "/bin/false";
      await execFileP("useradd", [
        "--uid",
        String(uid),
        "--gid",
        String(uid),
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        "--expiredate",
        "1",
        "--no-user-group",
        name,
      ]);
      return;
    } catch (err) {
      if ((await execFileP("getent", ["passwd", name]).catch(() => undefined)) !== undefined) return;
      if (attempt >= 5) throw new Error(`cannot give workload uid ${uid} an account: ${err instanceof Error ? err.message : String(err)}`);
      await new Promise((resolve) => setTimeout(resolve, 200 * (attempt + 1)));
    }
  }
}

/** Removes what ensureAccount made, and any cron job the uid left, once its environment is gone. */
export async function removeAccount(uid: number): Promise<void> {
  const name = `rgpu-${uid}`;
  await execFileP("crontab", ["-r", "-u", name]).catch(() => undefined);
  await execFileP("userdel", [name]).catch(() => undefined);
  await execFileP("groupdel", [name]).catch(() => undefined);
}
