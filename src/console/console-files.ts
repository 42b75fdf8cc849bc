import { existsSync } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import type http from "node:http";
import type http2 from "node:http2";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;
type Handler = (req: Request, res: Response) => void;

/** Where the web console is served, and where a browser that opens the server's root is sent. */
export const CONSOLE_PATH = "/ui/";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
};

/**
 * The page talks to this same origin only; nothing inline runs, and no other site may frame it.
 * Styles may be set from script (uPlot and the page position elements that way).
 */
const HEADERS = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache",
};

interface File {
  type: string;
  body: Buffer;
  gzipped: Buffer;
}

/**
 * The directory `npm run build:console` writes: `dist/console` from the sources (tsx), or the
 * `console` beside the compiled server (`dist/src/console/` → `dist/console`).
 */
export function defaultConsoleDir(): string {
  const twoUp = fileURLToPath(new URL("../../", import.meta.url));
  const built = path.join(twoUp, "console");
  return existsSync(path.join(built, "index.html")) ? built : path.join(twoUp, "dist", "console");
}

/**
 * Serves the web console's static files under /ui/ (read into memory once; they are a few hundred
 * KB), sends a browser that opens / there, and hands every other request to `next`.
 */
export async function consoleFiles(dir: string, next: Handler): Promise<Handler> {
  const files = new Map<string, File>();
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const type = TYPES[path.extname(name)];
    if (!type) continue;
    const body = await readFile(path.join(dir, name));
    files.set(name, { type, body, gzipped: gzipSync(body) });
  }
  const missing = `The web console is not built: run "npm run build" (or "npm run build:console"), then restart the server.\n`;

  return (req, res) => {
    const url = req.url ?? "/";
    const pathname = url.split("?")[0]!;
    const read = req.method === "GET" || req.method === "HEAD";
    if (read && pathname === "/" && (req.headers.accept ?? "").includes("text/html")) {
      res.writeHead(302, { location: CONSOLE_PATH });
      res.end();
      return;
    }
    if (!read || !(pathname === "/ui" || pathname.startsWith(CONSOLE_PATH))) {
      next(req, res);
      return;
    }
    if (pathname === "/ui") {
      res.writeHead(301, { location: CONSOLE_PATH });
      res.end();
      return;
    }
    // Every page of the console is index.html (it routes by the URL's hash); other names are files.
    const name = pathname.slice(CONSOLE_PATH.length) || "index.html";
    const file = files.get(name);
    if (!file) {
      const status = files.size === 0 ? 503 : 404;
      res.writeHead(status, { "content-type": "text/plain; charset=utf-8", ...HEADERS });
      res.end(status === 503 ? missing : "not found\n");
      return;
    }
    // "gzip", "gzip;q=0.5", but not "gzip;q=0".
    const gzip = /(^|,)\s*gzip\s*(;\s*q=(?!0(\.0*)?\s*(,|$))[\d.]+)?\s*(,|$)/.test(String(req.headers["accept-encoding"] ?? ""));
    const body = gzip ? file.gzipped : file.body;
    res.writeHead(200, {
      "content-type": file.type,
      "content-length": body.length,
      vary: "accept-encoding",
      ...(gzip ? { "content-encoding": "gzip" } : {}),
      ...HEADERS,
    });
    if (req.method === "HEAD") res.end();
    else res.end(body);
  };
}
