import { strict as assert } from "node:assert";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { isBuiltin } from "node:module";
import path from "node:path";
import { promisify } from "node:util";
import { packAndInstall, type PackedInstall } from "../support/pack.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "../..");
const BIN = path.join(ROOT, "node_modules/.bin");

/**
 * The SDK as its users get it: `npm pack` (which builds it), installed from the tarball into a
 * project of its own, typechecked and run against a live server.
 */
describe("@remotegpu/sdk as a package", function () {
  this.timeout(120_000);
  let packed: PackedInstall;
  let installed: string;
  let server: TestServer;

  before(async () => {
    packed = await packAndInstall(["sdk"]);
    const files = packed.files.get("@remotegpu/sdk")!;
    assert.ok(
      files.every((f) => f === "package.json" || f === "README.md" || f.startsWith("dist/")),
      "only dist, README and package.json are packed",
    );
    assert.ok(files.includes("dist/gen/remotegpu/v1/environment_pb.js"), "the generated code is in the package");
    installed = packed.installed("@remotegpu/sdk");
    server = await startTestServer();
  });
  after(async () => {
    await server?.close();
    await packed?.cleanup();
  });

  it("has a browser entry that imports nothing of Node", async () => {
    // Its sources typecheck with the DOM and without Node's types: no Buffer or process anywhere.
    await run(path.join(BIN, "tsc"), ["-p", path.join(ROOT, "sdk/tsconfig.web.json")]).catch((err: { stdout: string }) =>
      assert.fail(`tsc failed:\n${err.stdout}`),
    );
    // Its built graph, resolved as a browser bundler would, reaches no Node module.
    const web = await importGraph(path.join(installed, "dist/sdk/src/web.js"));
    assert.deepEqual(web.node, [], "Node built-ins reached from @remotegpu/sdk/web");
    assert.ok(!web.packages.has("@connectrpc/connect-node"), `packages reached: ${[...web.packages].join(", ")}`);
    assert.ok(web.packages.has("@connectrpc/connect-web"));
    // The scan does see Node imports where there are some: the Node entry's.
    const node = await importGraph(path.join(installed, "dist/sdk/src/index.js"));
    assert.ok(node.packages.has("@connectrpc/connect-node") && node.node.length > 0);
  });

  it("typechecks and runs a typed script of a separate project against a live server", async () => {
    const { project } = packed;
    await writeFile(
      path.join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          noEmit: true,
          skipLibCheck: false,
          typeRoots: [path.join(ROOT, "node_modules/@types")],
          types: ["node"],
        },
        include: ["*.ts"],
      }),
    );
    await writeFile(
      path.join(project, "main.ts"),
      `import { createRemoteGpuClient, listAll, NotFoundError, type Workspace } from "@remotegpu/sdk";
import { createRemoteGpuClient as createWebClient, EnvironmentStatus } from "@remotegpu/sdk/web";

const client = createRemoteGpuClient({ baseUrl: process.env.REMOTEGPU_URL!, token: process.env.REMOTEGPU_TOKEN!, transport: "grpc" });
const { workspace } = await client.workspaces.createWorkspace({ name: "from-the-tarball", labels: { via: "npm-pack" } });
const ws: Workspace = workspace!;
try {
  await client.workspaces.getWorkspace({ id: "00000000-0000-4000-8000-000000000000" });
} catch (err) {
  if (err instanceof NotFoundError) console.log("missing workspace: " + err.name);
}
const web = createWebClient({ baseUrl: process.env.REMOTEGPU_URL!, token: process.env.REMOTEGPU_TOKEN! });
const names: string[] = [];
for await (const w of listAll(web.workspaces.listWorkspaces, { labelSelector: "via=npm-pack" })) names.push(w.name);
console.log(JSON.stringify({ id: ws.id, name: ws.name, labels: ws.labels, listed: names, running: EnvironmentStatus[EnvironmentStatus.RUNNING] }));
client.close();
`,
    );
    // The types are real: a misspelt field and a wrong type are errors.
    await writeFile(
      path.join(project, "wrong.ts"),
      `import { createRemoteGpuClient } from "@remotegpu/sdk";
const client = createRemoteGpuClient({ baseUrl: "http://localhost:8080", token: "t" });
// @ts-expect-error: no such field
await client.workspaces.createWorkspace({ nmae: "x" });
// @ts-expect-error: gpuCount is a number
await client.environments.createEnvironment({ workspaceId: "w", name: "n", image: "i", gpuCount: "2" });
// @ts-expect-error: no such option
createRemoteGpuClient({ baseUrl: "http://localhost:8080", token: "t", transport: "carrier-pigeon" });
`,
    );
    // Every example of the README compiles as it is printed.
    const readme = await readFile(path.join(installed, "README.md"), "utf8");
    const examples = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
    assert.ok(examples.length >= 7, `${examples.length} examples`);
    for (const [i, code] of examples.entries()) await writeFile(path.join(project, `readme-${i}.ts`), code);
    await run(path.join(BIN, "tsc"), ["-p", project], { cwd: project }).catch((err: { stdout: string }) =>
      assert.fail(`tsc failed:\n${err.stdout}`),
    );

    const { stdout } = await run(path.join(BIN, "tsx"), ["main.ts"], {
      cwd: project,
      env: { ...process.env, REMOTEGPU_URL: server.baseUrl, REMOTEGPU_TOKEN: ADMIN_TOKEN },
    });
    const [first, second] = stdout.trim().split("\n");
    assert.equal(first, "missing workspace: NotFoundError");
    const printed = JSON.parse(second!) as { id: string; name: string; labels: Record<string, string>; listed: string[]; running: string };
    assert.match(printed.id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(
      { ...printed, id: undefined },
      { id: undefined, name: "from-the-tarball", labels: { via: "npm-pack" }, listed: ["from-the-tarball"], running: "RUNNING" },
    );
  });
});

/**
 * Every module reachable from `entry` by static or dynamic import, resolved as a browser bundler
 * would (package "exports" with the browser, import and default conditions). Returns the Node
 * built-ins imported anywhere in it and the packages it reaches.
 */
async function importGraph(entry: string): Promise<{ node: string[]; packages: Set<string> }> {
  const node: string[] = [];
  const packages = new Set<string>();
  const seen = new Set<string>();
  const queue = [entry];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    const source = await readFile(file, "utf8");
    for (const [, a, b] of source.matchAll(/\bfrom\s*["']([^"']+)["']|\bimport\s*\(?\s*["']([^"']+)["']/g)) {
      const spec = (a ?? b)!;
      if (spec.startsWith("node:") || isBuiltin(spec)) {
        node.push(`${path.relative(path.dirname(entry), file)} imports ${spec}`);
      } else if (spec.startsWith(".")) {
        queue.push(path.resolve(path.dirname(file), spec));
      } else {
        const name = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]!;
        packages.add(name);
        queue.push(await resolvePackage(file, name, `.${spec.slice(name.length)}`));
      }
    }
  }
  return { node, packages };
}

async function resolvePackage(from: string, name: string, subpath: string): Promise<string> {
  for (let dir = path.dirname(from); ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, "node_modules", name);
    if (existsSync(path.join(candidate, "package.json"))) {
      const pkg = JSON.parse(await readFile(path.join(candidate, "package.json"), "utf8")) as {
        exports?: unknown;
        module?: string;
        main?: string;
      };
      const target =
        pkg.exports === undefined
          ? subpath === "."
            ? (pkg.module ?? pkg.main ?? "index.js")
            : subpath
          : pick(exportsEntry(pkg.exports, subpath));
      if (!target) throw new Error(`${name} exports no ${subpath} for browsers`);
      return path.join(candidate, target);
    }
    if (dir === path.dirname(dir)) throw new Error(`cannot find ${name} from ${from}`);
  }
}

function exportsEntry(exports: unknown, subpath: string): unknown {
  if (typeof exports === "string" || Array.isArray(exports)) return subpath === "." ? exports : undefined;
  const map = exports as Record<string, unknown>;
  if (!Object.keys(map).some((k) => k.startsWith("."))) return subpath === "." ? map : undefined;
  return map[subpath];
}

function pick(entry: unknown): string | undefined {
  if (typeof entry === "string") return entry;
  if (Array.isArray(entry)) return entry.map(pick).find(Boolean);
  if (entry && typeof entry === "object") {
    const conditions = entry as Record<string, unknown>;
    for (const condition of ["browser", "import", "default"]) if (condition in conditions) return pick(conditions[condition]);
  }
  return undefined;
}
