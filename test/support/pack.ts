import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { ROOT } from "./child.js";

const run = promisify(execFile);

/** Packages packed and installed into a project of their own, as a user would get them. */
export interface PackedInstall {
  /** The temporary folder holding the tarballs and the project. */
  dir: string;
  /** The project the tarballs were installed into (its node_modules holds them and their dependencies only). */
  project: string;
  /** Each package's name → its tarball's path. */
  tarballs: Map<string, string>;
  /** Each package's name → the paths its tarball holds (relative to the package, e.g. "dist/main.js"). */
  files: Map<string, string[]>;
  /** An installed package's folder, e.g. installed("@remotegpu/sdk"). */
  installed(name: string): string;
  /** An installed bin, e.g. bin("remotegpu-agent") → <project>/node_modules/.bin/remotegpu-agent. */
  bin(name: string): string;
  /** Removes the folder. */
  cleanup(): Promise<void>;
}

/**
 * `npm pack` of each package folder (relative to the repository root, e.g. "sdk", "agent"; each
 * builds itself in its prepack), then `npm install` of all the tarballs together into an empty
 * project in a temporary folder, so a package that depends on another one of the list gets it from
 * its tarball and everything else from the registry (or npm's cache).
 */
export async function packAndInstall(packageDirs: string[]): Promise<PackedInstall> {
  const dir = await mkdtemp(path.join(tmpdir(), "remotegpu-pack-"));
  const cleanup = () => rm(dir, { recursive: true, force: true });
  try {
    const tarballs = new Map<string, string>();
    const files = new Map<string, string[]>();
    // One after the other: each prepack rebuilds dist folders that the next one may read.
    for (const packageDir of packageDirs) {
      const packed = await npm(["pack", "--json", "--pack-destination", dir], path.join(ROOT, packageDir));
      // The prepack's build writes to stdout before the JSON.
      const [info] = JSON.parse(packed.slice(packed.indexOf("\n[") + 1)) as { name: string; filename: string; files: { path: string }[] }[];
      tarballs.set(info!.name, path.join(dir, info!.filename));
      files.set(
        info!.name,
        info!.files.map((f) => f.path),
      );
    }
    const project = path.join(dir, "project");
    await mkdir(project);
    await writeFile(path.join(project, "package.json"), JSON.stringify({ name: "pack-consumer", private: true, type: "module" }));
    await npm(["install", ...tarballs.values(), "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], project);
    return {
      dir,
      project,
      tarballs,
      files,
      installed: (name) => path.join(project, "node_modules", name),
      bin: (name) => path.join(project, "node_modules/.bin", name),
      cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

async function npm(args: string[], cwd: string): Promise<string> {
  try {
    // "\n" first so that the JSON's opening bracket is always found at a line start.
    return `\n${(await run("npm", args, { cwd, maxBuffer: 64 * 1024 * 1024 })).stdout}`;
  } catch (e) {
    const x = e as Error & { stdout?: string; stderr?: string };
    throw new Error(`npm ${args.join(" ")} (in ${cwd}) failed: ${x.message}\n${x.stdout ?? ""}${x.stderr ?? ""}`);
  }
}
