import { strict as assert } from "node:assert";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import ts from "typescript";

// The architecture's boundaries, checked on every run: which folder may import what, and no import
// cycles. Each rule is also run against a small fixture that breaks it, so none can pass vacuously.

const ROOT = path.resolve(import.meta.dirname, "../..");

/** The source trees whose imports are checked (tests, benchmarks, builds and generated code are not). */
const SOURCE_ROOTS = ["src", "agent/src", "cli/src", "sdk/src"];

/** Domain folders: entities, domain services and their rules. */
const DOMAIN = ["host", "gpu", "workspace", "environment", "telemetry", "auth", "audit", "storage"].map((d) => `src/${d}/`);

/** How the workspace packages resolve inside the repository (their "@remotegpu/source" export condition). */
const WORKSPACE_PACKAGES: Record<string, string> = {
  "@remotegpu/sdk": "sdk/src/index.ts",
  "@remotegpu/sdk/web": "sdk/src/web.ts",
};

interface Import {
  /** The importing file, relative to the repository root. */
  file: string;
  line: number;
  /** As written. */
  specifier: string;
  /** A repository path for relative and workspace-package specifiers; the package name otherwise. */
  target: string;
  /** Erased at compile time (`import type`, `export type`, every named binding `type`, `import("x").T` types). */
  typeOnly: boolean;
  /** An `import()` call: loaded when it runs, not with the importing file. */
  dynamic: boolean;
}

interface Rule {
  name: string;
  /** Whether `i` breaks the rule. */
  breaks(i: Import): boolean;
}

const under = (p: string, ...folders: string[]) => folders.some((f) => p.startsWith(f));
const isPackage = (target: string, ...names: string[]) => names.some((n) => target === n || target.startsWith(`${n}/`));
const inDomain = (p: string) => under(p, ...DOMAIN);

const RULES: Rule[] = [
  {
    // Domain code knows nothing of the wire: no generated messages, no handlers, no Connect, no protobuf.
    name: "domain folders do not import gen/, src/rpc/, @connectrpc/* or @bufbuild/*",
    breaks: (i) => inDomain(i.file) && (under(i.target, "gen/", "src/rpc/") || isPackage(i.target, "@connectrpc", "@bufbuild")),
  },
  {
    // Runtimes (Kubernetes, the agent) sit beside the domain, below the transport.
    name: "src/runtime/ does not import gen/, src/rpc/ or @connectrpc/*",
    breaks: (i) => under(i.file, "src/runtime/") && (under(i.target, "gen/", "src/rpc/") || isPackage(i.target, "@connectrpc")),
  },
  {
    // Persistence code: the domain folders (entities, and the registries and managers that query them)
    // and src/platform/ (database config, migrations, bulk SQL). Everything else goes through them.
    // The one exception is src/rpc/error-mapping.ts, the one place that maps errors to codes: it
    // recognises the ORM's error classes (unique violation, optimistic lock, connection) and nothing else.
    name: "only persistence code imports the ORM (@mikro-orm/*)",
    breaks: (i) =>
      isPackage(i.target, "@mikro-orm") &&
      !inDomain(i.file) &&
      !under(i.file, "src/platform/") &&
      !(i.file === "src/rpc/error-mapping.ts" && i.target === "@mikro-orm/core"),
  },
  {
    // Handlers convert and call the domain, which runs workloads through the Runtime interface: the
    // Kubernetes client belongs to the Kubernetes runtime (and its configuration, in platform/ and app.ts).
    name: "handlers, domain folders and the packages do not import @kubernetes/client-node",
    breaks: (i) =>
      isPackage(i.target, "@kubernetes/client-node") && (under(i.file, "src/rpc/", "agent/", "cli/", "sdk/") || inDomain(i.file)),
  },
  {
    // Layers point down: the platform knows no domain; entity lists and wiring live in app.ts.
    name: "src/platform/ does not import a domain folder, src/runtime/, src/rpc/ or the composition root",
    breaks: (i) =>
      under(i.file, "src/platform/") &&
      (inDomain(i.target) || under(i.target, "src/runtime/", "src/rpc/") || ["src/app.ts", "src/main.ts"].includes(i.target)),
  },
  {
    // app.ts is the composition root: only main.ts builds it, and nothing imports main.ts.
    name: "only src/main.ts imports src/app.ts, and nothing imports src/main.ts",
    breaks: (i) => (i.target === "src/app.ts" && i.file !== "src/main.ts") || i.target === "src/main.ts",
  },
  {
    // The agent and the CLI are packages of their own: the server's code, the generated code and the
    // SDK reach them through "@remotegpu/sdk" only, never by a path out of their folder.
    name: "agent/ and cli/ import no file outside their own package (src/, gen/, sdk/...)",
    breaks: (i) => {
      const own = ["agent/", "cli/"].find((p) => i.file.startsWith(p));
      return own !== undefined && isRelative(i.specifier) && !i.target.startsWith(own);
    },
  },
  {
    // The SDK is what clients get: it carries the generated code, never the server.
    name: "sdk/ does not import src/, agent/ or cli/",
    breaks: (i) => under(i.file, "sdk/") && under(i.target, "src/", "agent/", "cli/"),
  },
];

function isRelative(specifier: string): boolean {
  return specifier.startsWith("./") || specifier.startsWith("../");
}

/** Where a specifier points: a repository path (a TypeScript file for `.js`), or a bare package name. */
function resolve(file: string, specifier: string): string {
  if (isRelative(specifier)) {
    const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), specifier));
    return target.endsWith(".js") ? `${target.slice(0, -3)}.ts` : target;
  }
  return WORKSPACE_PACKAGES[specifier] ?? specifier;
}

/** Every import, export-from, require and dynamic import of one file. */
function importsOf(file: string, text: string): Import[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const found: Import[] = [];
  const add = (node: ts.Node, literal: ts.Expression | undefined, typeOnly: boolean, dynamic = false) => {
    if (!literal || !ts.isStringLiteralLike(literal)) return;
    const line = source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
    found.push({ file, line, specifier: literal.text, target: resolve(file, literal.text), typeOnly, dynamic });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node)) {
      const clause = node.importClause;
      const named = clause?.namedBindings && ts.isNamedImports(clause.namedBindings) ? clause.namedBindings.elements : undefined;
      // `import { type A, type B } from` is erased too; `import "x"` and `import { }` are not (side effects).
      const allTypes = !!clause && !clause.name && !!named && named.length > 0 && named.every((e) => e.isTypeOnly);
      add(node, node.moduleSpecifier, !!clause?.isTypeOnly || allTypes);
    } else if (ts.isExportDeclaration(node)) {
      const named = node.exportClause && ts.isNamedExports(node.exportClause) ? node.exportClause.elements : undefined;
      add(node, node.moduleSpecifier, node.isTypeOnly || (!!named && named.length > 0 && named.every((e) => e.isTypeOnly)));
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node, node.moduleReference.expression, node.isTypeOnly);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      add(node, node.arguments[0], false, true);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      add(node, node.argument.literal, true);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

function importsOfAll(files: Map<string, string>): Import[] {
  return [...files].flatMap(([file, text]) => importsOf(file, text));
}

/**
 * The packages a process loads before its first line runs when it starts at `entry`: every package
 * reached through imports that are neither type-only nor `import()` calls, each with the import
 * that first reaches it.
 */
function loadedWith(entry: string, imports: Import[]): Map<string, Import> {
  const byFile = new Map<string, Import[]>();
  for (const i of imports) if (!i.typeOnly && !i.dynamic) byFile.set(i.file, [...(byFile.get(i.file) ?? []), i]);
  const packages = new Map<string, Import>();
  const files = [entry];
  for (const file of files) {
    for (const i of byFile.get(file) ?? []) {
      if (isRelative(i.specifier) || Object.values(WORKSPACE_PACKAGES).includes(i.target)) {
        if (!files.includes(i.target)) files.push(i.target);
      } else if (!packages.has(i.target)) packages.set(i.target, i);
    }
  }
  return packages;
}

/**
 * The imports through which the server, started at src/main.ts, loads a client that only its
 * configuration should load (Kubernetes, S3, span export, Redis): together they were more than half
 * of every start's module loading (0.65 of 1.0 s here).
 */
function loadedTooEarly(imports: Import[]): string[] {
  const onDemand = (target: string) =>
    isPackage(target, "@kubernetes/client-node", "@aws-sdk", "ioredis") ||
    (isPackage(target, "@opentelemetry") && target !== "@opentelemetry/api");
  return [...loadedWith("src/main.ts", imports)]
    .filter(([target]) => onDemand(target))
    .map(([, i]) => `${i.file}:${i.line} imports "${i.specifier}"`);
}

/** One line per broken rule: the file, the line, the import as written. */
function violations(imports: Import[], rules: Rule[] = RULES): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const rule of rules) {
    const lines = imports.filter((i) => rule.breaks(i)).map((i) => `${i.file}:${i.line} imports "${i.specifier}"`);
    if (lines.length > 0) found.set(rule.name, lines);
  }
  return found;
}

/**
 * Import cycles among `files`. Type-only imports count: erased at run time, they cannot make a
 * module see another half-initialised, but two files that need each other's types are still one
 * tangle to understand and to change (gpu-inventory <-> host-registry was one, through a type).
 * Each cycle is one strongly connected component, shown as one loop through it, every step with the
 * import that makes it.
 */
function cycles(imports: Import[], files: Set<string>): string[] {
  const edges = new Map<string, Import[]>();
  for (const i of imports) {
    if (!files.has(i.target) || i.target === i.file) continue;
    edges.set(i.file, [...(edges.get(i.file) ?? []), i]);
  }
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const connect = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const { target: w } of edges.get(v) ?? []) {
      if (!index.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) components.push(component);
    }
  };
  for (const f of [...files].sort()) if (!index.has(f)) connect(f);
  return components.map((component) => loopThrough(component, edges));
}

/** A shortest loop from the component's first file back to it, within the component. */
function loopThrough(component: string[], edges: Map<string, Import[]>): string {
  const members = new Set(component);
  const start = [...component].sort()[0]!;
  const via = new Map<string, Import>();
  const queue = [start];
  for (let k = 0; k < queue.length; k++) {
    for (const i of edges.get(queue[k]!) ?? []) {
      if (!members.has(i.target) || via.has(i.target)) continue;
      via.set(i.target, i);
      if (i.target === start) break;
      queue.push(i.target);
    }
    if (via.has(start)) break;
  }
  const steps: Import[] = [];
  for (let at = start; steps.length === 0 || at !== start; ) {
    const step = via.get(at)!;
    steps.unshift(step);
    at = step.file;
  }
  return steps.map((s) => `${s.file}:${s.line} imports "${s.specifier}"`).join(" -> ");
}

function readSources(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(rel);
      else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts")) files.set(rel, readFileSync(path.join(ROOT, rel), "utf8"));
    }
  };
  for (const root of SOURCE_ROOTS) walk(root);
  return files;
}

describe("boundaries", () => {
  const sources = readSources();
  const imports = importsOfAll(sources);

  it("reads the sources it is meant to check", () => {
    // A broken walk or parser would make every rule below pass on nothing.
    for (const file of ["src/app.ts", "src/rpc/host-handler.ts", "src/host/host-registry.ts", "agent/src/main.ts", "sdk/src/index.ts"]) {
      assert.ok(sources.has(file), `${file} was not read`);
    }
    assert.ok(imports.length > 300, `only ${imports.length} imports found`);
    assert.ok(imports.some((i) => i.file === "src/main.ts" && i.target === "src/app.ts" && !i.typeOnly));
  });

  for (const rule of RULES) {
    it(rule.name, () => {
      const broken = violations(imports, [rule]).get(rule.name) ?? [];
      assert.deepEqual(broken, [], `${rule.name}:\n  ${broken.join("\n  ")}`);
    });
  }

  it("the server starts without the Kubernetes, S3, span-export and Redis clients: only a server configured for one loads it", () => {
    assert.deepEqual(loadedTooEarly(imports), []);
    // The walk itself reaches what every start does load.
    assert.ok(loadedWith("src/main.ts", imports).has("@mikro-orm/postgresql"));
  });

  it("no import cycle among src/, agent/src/, cli/src/ and sdk/src/, type-only imports included", () => {
    const found = cycles(imports, new Set(sources.keys()));
    assert.deepEqual(found, [], `import cycles:\n  ${found.join("\n  ")}`);
  });

  describe("catches what it is meant to catch", () => {
    /** The rules a fixture breaks, with their lines. */
    const check = (files: Record<string, string>) => violations(importsOfAll(new Map(Object.entries(files))));

    const cases: { rule: string; bad: Record<string, string>; expected: string; good: Record<string, string> }[] = [
      {
        rule: RULES[0]!.name,
        bad: {
          "src/host/x.ts": 'import { HostSchema } from "../../gen/remotegpu/v1/host_pb.js";\nimport { Code } from "@connectrpc/connect";',
        },
        expected: 'src/host/x.ts:1 imports "../../gen/remotegpu/v1/host_pb.js"',
        good: { "src/host/x.ts": 'import { Gpu } from "../gpu/gpu.js";\nimport { Entity } from "@mikro-orm/core";' },
      },
      {
        rule: RULES[0]!.name,
        bad: { "src/storage/x.ts": '\n\nexport { toConnectError } from "../rpc/error-mapping.js";' },
        expected: 'src/storage/x.ts:3 imports "../rpc/error-mapping.js"',
        good: { "src/rpc/x.ts": 'import { toConnectError } from "./error-mapping.js";' },
      },
      {
        rule: RULES[1]!.name,
        bad: { "src/runtime/x.ts": 'import type { AgentCommand } from "../../gen/remotegpu/v1/agent_pb.js";' },
        expected: 'src/runtime/x.ts:1 imports "../../gen/remotegpu/v1/agent_pb.js"',
        good: { "src/runtime/x.ts": 'import type { AgentSessions } from "../host/agent-sessions.js";' },
      },
      {
        rule: RULES[2]!.name,
        bad: { "src/rpc/gpu-handler.ts": 'import type { EntityManager } from "@mikro-orm/postgresql";' },
        expected: 'src/rpc/gpu-handler.ts:1 imports "@mikro-orm/postgresql"',
        good: {
          "src/rpc/error-mapping.ts": 'import { OptimisticLockError } from "@mikro-orm/core";',
          "src/gpu/x.ts": 'import type { MikroORM } from "@mikro-orm/postgresql";',
          "src/platform/database.ts": 'import { Migrator } from "@mikro-orm/migrations";',
        },
      },
      {
        rule: RULES[2]!.name,
        bad: {
          "src/rpc/error-mapping.ts": 'import { MikroORM } from "@mikro-orm/postgresql";',
          "cli/src/x.ts": 'import "@mikro-orm/core";',
        },
        expected: 'src/rpc/error-mapping.ts:1 imports "@mikro-orm/postgresql"',
        good: { "src/audit/x.ts": 'import { Entity } from "@mikro-orm/core";' },
      },
      {
        rule: RULES[3]!.name,
        bad: {
          "src/rpc/host-handler.ts": 'const k8s = await import("@kubernetes/client-node");',
          "src/environment/x.ts": 'import "@kubernetes/client-node";',
        },
        expected: 'src/rpc/host-handler.ts:1 imports "@kubernetes/client-node"',
        good: {
          "src/runtime/x.ts": 'import { CoreV1Api } from "@kubernetes/client-node";',
          "src/platform/kube-config.ts": 'import { KubeConfig } from "@kubernetes/client-node";',
        },
      },
      {
        rule: RULES[4]!.name,
        bad: { "src/platform/database.ts": 'import { Workspace } from "../workspace/workspace.js";' },
        expected: 'src/platform/database.ts:1 imports "../workspace/workspace.js"',
        good: {
          "src/platform/database.ts": 'import { migrations } from "./migrations/index.js";',
          "src/platform/unique-violation.ts": 'import { ConflictError } from "../errors.js";',
        },
      },
      {
        rule: RULES[5]!.name,
        bad: { "src/rpc/x.ts": 'import type { App } from "../app.js";' },
        expected: 'src/rpc/x.ts:1 imports "../app.js"',
        good: { "src/main.ts": 'import { createApp } from "./app.js";' },
      },
      {
        rule: RULES[6]!.name,
        bad: { "agent/src/x.ts": 'import { Channel } from "../../src/platform/channel.js";' },
        expected: 'agent/src/x.ts:1 imports "../../src/platform/channel.js"',
        good: { "agent/src/x.ts": 'import { Channel } from "@remotegpu/sdk";\nimport { log } from "./logger.js";' },
      },
      {
        rule: RULES[6]!.name,
        bad: {
          "cli/src/x.ts": 'import { HostService } from "../../gen/remotegpu/v1/host_pb.js";',
          "agent/src/y.ts": 'import "../../cli/src/table.js";',
        },
        expected: 'cli/src/x.ts:1 imports "../../gen/remotegpu/v1/host_pb.js"',
        good: { "cli/src/x.ts": 'import { HostService } from "@remotegpu/sdk";' },
      },
      {
        rule: RULES[6]!.name,
        bad: { "cli/src/x.ts": 'export * from "../../sdk/src/index.js";' },
        expected: 'cli/src/x.ts:1 imports "../../sdk/src/index.js"',
        good: { "cli/src/x.ts": 'export * from "./table.js";' },
      },
      {
        rule: RULES[7]!.name,
        bad: { "sdk/src/x.ts": 'import { checkId } from "../../src/ids.js";' },
        expected: 'sdk/src/x.ts:1 imports "../../src/ids.js"',
        good: { "sdk/src/x.ts": 'export * from "../../gen/remotegpu/v1/host_pb.js";' },
      },
    ];

    for (const c of cases) {
      it(`${c.rule}: broken by ${Object.keys(c.bad).join(", ")}`, () => {
        const broken = check(c.bad);
        assert.ok(broken.get(c.rule)?.includes(c.expected), `expected ${c.expected}; got ${JSON.stringify(Object.fromEntries(broken))}`);
        assert.deepEqual(Object.fromEntries(check(c.good)), {}, "the allowed counterpart breaks nothing");
      });
    }

    it("every rule has a fixture that breaks it", () => {
      const covered = new Set(cases.map((c) => c.rule));
      assert.deepEqual(
        RULES.map((r) => r.name).filter((n) => !covered.has(n)),
        [],
      );
    });

    it("an import cycle, named file by file with its imports, type-only steps included", () => {
      const files = new Map(
        Object.entries({
          "src/gpu/gpu-inventory.ts": 'import { hasLabels } from "../host/host-registry.js";',
          "src/host/host-registry.ts":
            'import { Channel } from "../platform/channel.js";\nimport type { GpuView } from "../gpu/gpu-inventory.js";',
          "src/platform/channel.ts": "export class Channel {}",
          "agent/src/a.ts": 'import { b } from "./b.js";',
          "agent/src/b.ts": "export const b = 1;",
        }),
      );
      assert.deepEqual(cycles(importsOfAll(files), new Set(files.keys())), [
        'src/gpu/gpu-inventory.ts:1 imports "../host/host-registry.js" -> src/host/host-registry.ts:2 imports "../gpu/gpu-inventory.js"',
      ]);
    });

    it("a client loaded at start through a chain of static imports, and not through import() or a type", () => {
      const files = new Map(
        Object.entries({
          "src/main.ts": 'import { createApp } from "./app.js";\nimport type { S3Client } from "@aws-sdk/client-s3";',
          "src/app.ts": 'import { run } from "./runtime/x.js";\nconst tracing = await import("./platform/tracing.js");',
          "src/runtime/x.ts": 'import { CoreV1Api } from "@kubernetes/client-node";\nimport { trace } from "@opentelemetry/api";',
          "src/platform/tracing.ts": 'import { BasicTracerProvider } from "@opentelemetry/sdk-trace-base";',
        }),
      );
      assert.deepEqual(loadedTooEarly(importsOfAll(files)), ['src/runtime/x.ts:1 imports "@kubernetes/client-node"']);
    });

    it("tells type-only imports from the others", () => {
      const text = [
        'import type { A } from "./a.js";',
        'import { type B, type C } from "./b.js";',
        'import { type D, e } from "./d.js";',
        'import "./side-effect.js";',
        'export type { F } from "./f.js";',
        'export * from "./g.js";',
        'type H = import("./h.js").H;',
        'const i = await import("./i.js");',
      ].join("\n");
      const typeOnly = Object.fromEntries(importsOf("src/x.ts", text).map((i) => [i.target, i.typeOnly]));
      assert.deepEqual(typeOnly, {
        "src/a.ts": true,
        "src/b.ts": true,
        "src/d.ts": false,
        "src/side-effect.ts": false,
        "src/f.ts": true,
        "src/g.ts": false,
        "src/h.ts": true,
        "src/i.ts": false,
      });
    });

    it("a cycle of three files, through a workspace package", () => {
      const files = new Map(
        Object.entries({
          "sdk/src/index.ts": 'export * from "./client.js";',
          "sdk/src/client.ts": 'import { run } from "../../agent/src/main.ts";',
          "agent/src/main.ts": 'import { createRemoteGpuClient } from "@remotegpu/sdk";',
        }),
      );
      const [loop, ...more] = cycles(importsOfAll(files), new Set(files.keys()));
      assert.deepEqual(more, []);
      assert.match(loop!, /agent\/src\/main\.ts:1 imports "@remotegpu\/sdk" -> sdk\/src\/index\.ts:1 .* -> sdk\/src\/client\.ts:1/);
    });
  });
});
