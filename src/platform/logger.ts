import { format, stripVTControlCharacters } from "node:util";
import { pino, type Logger as PinoLogger, type DestinationStream } from "pino";
import { type LogFormat, prettyDestination, useColour } from "./log-format.js";
import { traceFields } from "./tracing.js";

export type Logger = PinoLogger;

/**
 * JSON lines on stdout (or the given stream), one object per event; with the format "pretty", one
 * human-readable line per event on stdout instead (coloured on a terminal unless NO_COLOR is set).
 */
export function createLogger(level: string, destination?: DestinationStream | LogFormat): Logger {
  const stream =
    destination === "pretty" ? prettyDestination(undefined, { colour: useColour() }) : destination === "json" ? undefined : destination;
  // The active span's trace and span ids on every line written inside one (tracing on only).
  return pino({ level, base: { service: "remotegpu" }, mixin: traceFields }, stream);
}

const CONSOLE_LEVELS = [
  ["log", "info"],
  ["info", "info"],
  ["debug", "debug"],
  ["trace", "info"],
  ["warn", "warn"],
  ["error", "error"],
] as const;

/**
 * For the server process only (never in tests, whose reporter writes to the console): what a library
 * would print itself goes through `logger` instead, so that every line on stdout is a log record.
 *  - console.log/info/debug/trace/warn/error (MikroORM's "module not found" hints, the pg protocol's
 *    query-name warning, client libraries' notices), with component "console";
 *  - process warnings (deprecations, MaxListenersExceededWarning), which Node would print on stderr
 *    as "(node:PID) Warning: ...", with component "node";
 *  - an uncaught exception is recorded as fatal before Node prints it and exits as usual.
 */
export function routeStrayOutput(logger: Logger): void {
  for (const [method, level] of CONSOLE_LEVELS) {
    console[method] = (...args: unknown[]) => {
      const fields: Record<string, unknown> = { component: "console" };
      // Shown like an error's stack: the frames from the caller on.
      if (method === "trace") fields.trace = { stack: new Error().stack?.split("\n").slice(2).join("\n") };
      logger[level](fields, stripVTControlCharacters(format(...args)));
    };
  }
  // Node's own printer of warnings is the listener it installed at start; there is none with
  // --no-warnings or NODE_NO_WARNINGS=1, and then warnings stay unshown.
  const printers = process.listeners("warning").filter((listener) => listener.name === "onWarning");
  if (printers.length > 0) {
    for (const printer of printers) process.off("warning", printer);
    process.on("warning", (warning: Error & { code?: string }) => {
      if (warning.name === "DeprecationWarning" && process.noDeprecation) return;
      logger.warn({ component: "node", warning: warning.name, code: warning.code }, warning.message);
    });
  }
  process.on("uncaughtExceptionMonitor", (err, origin) => logger.fatal({ err, origin }, "uncaught exception"));
}
