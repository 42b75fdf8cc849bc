import { execFile, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/**
 * A small image made from this machine's own files (no registry is reachable): sh, sleep, cat,
 * python3, and OpenSSH's sftp-server where the machine has it (the SSH test's scp uses it).
 */
export const TEST_IMAGE = "localhost/remotegpu-test:python3-sftp";
const SFTP_SERVER = "/usr/lib/openssh/sftp-server";

/**
 * Podman set up as these machines need it (runc, cgroupfs, no raised ulimits, events in a file: see
 * README "Containers"), through CONTAINERS_CONF for this process and every agent it spawns; and the
 * test image, imported once. Fails with what to install when podman is missing.
 */
export async function preparePodman(): Promise<void> {
  if (spawnSync("podman", ["--version"], { stdio: "ignore" }).status !== 0)
    throw new Error("podman is not installed: `apt-get install -y podman runc` (the README's test setup)");
  if (!process.env.CONTAINERS_CONF) {
    const dir = await mkdtemp(path.join(os.tmpdir(), "rgpu-podman-"));
    const conf = path.join(dir, "containers.conf");
    await writeFile(
      conf,
      '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n',
    );
    process.env.CONTAINERS_CONF = conf;
  }
  if (spawnSync("podman", ["image", "exists", TEST_IMAGE]).status === 0) return;
  const root = await mkdtemp(path.join(os.tmpdir(), "rgpu-image-"));
  try {
    const python = (await execFileP("readlink", ["-f", "/usr/bin/python3"])).stdout.trim();
    const sftp = existsSync(SFTP_SERVER) ? [SFTP_SERVER] : [];
    for (const program of ["/bin/sh", "/bin/sleep", "/bin/cat", "/usr/bin/env", python, ...sftp]) {
      const libraries = (await execFileP("ldd", [program]).catch(() => ({ stdout: "" }))).stdout.match(/\/\S+/g) ?? [];
      for (const file of [program, ...libraries]) {
        await mkdir(path.join(root, path.dirname(file)), { recursive: true });
        await copyFile(file, path.join(root, file));
      }
    }
    const lib = path.join("/usr/lib", path.basename(python)); // the standard library, e.g. /usr/lib/python3.11
    for (const d of ["usr/bin", "usr/lib"]) await mkdir(path.join(root, d), { recursive: true });
    await execFileP("cp", ["-a", lib, path.join(root, "usr/lib")]);
    await rm(path.join(root, lib, "test"), { recursive: true, force: true }); // CPython's own tests: 30 MB
    await execFileP("ln", ["-sf", python, path.join(root, "usr/bin/python3")]);
    await mkdir(path.join(root, "tmp"));
    // Every real image names its users; sftp-server looks its own up.
    await mkdir(path.join(root, "etc"));
    await writeFile(path.join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    await writeFile(path.join(root, "etc/group"), "root:x:0:\n");
    await execFileP("sh", ["-c", `tar -C '${root}' -c . | podman import - ${TEST_IMAGE}`], { maxBuffer: 1 << 24 });
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/**
 * A CDI spec (what the NVIDIA Container Toolkit generates on a GPU server) naming each simulated GPU
 * `nvidia.com/gpu=<uuid>`; instead of device nodes, each adds `CDI_GPU_<n>=<uuid>` to the container's
 * env, so a test sees which GPUs reached it. Returns its removal.
 */
export async function writeCdiSpec(uuids: string[]): Promise<() => Promise<void>> {
  const file = `/var/run/cdi/remotegpu-test-${process.pid}-${Date.now()}.json`;
  const devices = uuids.map((uuid, i) => ({ name: uuid, containerEdits: { env: [`CDI_GPU_${i}=${uuid}`] } }));
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify({ cdiVersion: "0.5.0", kind: "nvidia.com/gpu", devices, containerEdits: {} }));
  return () => rm(file, { force: true });
}

/** Removes every container the tests' agents left (by their label). */
export async function removeTestContainers(environmentIds: string[]): Promise<void> {
  for (const id of environmentIds) await execFileP("podman", ["rm", "-f", "-t", "0", `rgpu-${id}`]).catch(() => undefined);
}
