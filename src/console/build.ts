// Builds the web console into dist/console, or the directory given as the first argument (app.js,
// app.css, index.html), and checks its size budget. Run by `npm run build:console`, part of
// `npm run build`; the server serves the result under /ui/ (CONSOLE_DIR says where it is).
import { copyFile, mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

/** The most the browser downloads, gzipped: JavaScript and CSS together. */
const BUDGET_BYTES = 150 * 1024;

const root = fileURLToPath(new URL("../../", import.meta.url));
const app = path.join(root, "src/console/app");
const out = path.resolve(process.argv[2] ?? path.join(root, "dist/console"));

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: { app: path.join(app, "main.tsx") },
  outdir: out,
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome111", "firefox113", "safari16.4"],
  jsx: "automatic",
  jsxImportSource: "preact",
  // The SDK's TypeScript sources, as the repository's tests use them.
  conditions: ["@remotegpu/source"],
  legalComments: "linked",
  logLevel: "warning",
});
await copyFile(path.join(app, "index.html"), path.join(out, "index.html"));

let total = 0;
for (const name of ["app.js", "app.css"]) {
  const size = gzipSync(await readFile(path.join(out, name))).length;
  total += size;
  console.log(`${name.padEnd(8)} ${(size / 1024).toFixed(1)} KiB gzipped`);
}
console.log(`total    ${(total / 1024).toFixed(1)} KiB gzipped (budget ${BUDGET_BYTES / 1024} KiB)`);
if (total > BUDGET_BYTES) {
  console.error(`the console is over its size budget by ${((total - BUDGET_BYTES) / 1024).toFixed(1)} KiB`);
  process.exit(1);
}
