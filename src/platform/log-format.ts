import type { DestinationStream } from "pino";
import { pino } from "pino";

/** `LOG_FORMAT`: JSON lines for machines (the default), or `pretty` lines for a person at a terminal. */
export const LOG_FORMATS = ["json", "pretty"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

const LEVELS: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };
/** The fields every record has, shown in front rather than as key=value. */
const HEADER_FIELDS = new Set(["time", "level", "msg"]);

const ESC = "\u001b[";
const paint = (code: string, text: string) => `${ESC}${code}m${text}${ESC}0m`;
const LEVEL_COLOURS: Record<string, string> = {
  TRACE: "90",
  DEBUG: "34",
  INFO: "32",
  WARN: "33",
  ERROR: "31",
  FATAL: "1;31",
};

export interface PrettyOptions {
  /** ANSI colours (level, time, keys); only for a terminal. */
  colour?: boolean;
}

/**
 * One JSON log line as one human-readable line: `HH:MM:SS.mmm LEVEL msg key=value ...`, local time,
 * the level upper case and padded to five, the message as written; a field's string as it is unless it
 * is empty or holds a space, a quote, a '=' or a control character (then JSON, as every other value is). A field holding a serialised error
 * shows its stack on the following lines, indented. A line that is not a JSON object comes back as it was.
 */
export function formatPretty(line: string, options: PrettyOptions = {}): string {
  const text = line.replace(/\r?\n$/, "");
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch {
    return `${text}\n`;
  }
  if (record === null || typeof record !== "object" || Array.isArray(record)) return `${text}\n`;
  const fields = record as Record<string, unknown>;
  const colour = options.colour === true;

  const head: string[] = [];
  const time = clockTime(fields.time);
  if (time !== undefined) head.push(colour ? paint("2", time) : time);
  const level = levelLabel(fields.level);
  if (level !== undefined) {
    const padded = level.padEnd(5);
    const code = LEVEL_COLOURS[level];
    head.push(colour && code ? paint(code, padded) : padded);
  }
  if (fields.msg !== undefined && fields.msg !== "")
    // The message as written, unless a line break or other control character would split the record.
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this looks for
    head.push(typeof fields.msg === "string" && !/[\u0000-\u001f\u007f]/.test(fields.msg) ? fields.msg : JSON.stringify(fields.msg));

  const stacks: string[] = [];
  for (const [key, value] of Object.entries(fields)) {
    if (HEADER_FIELDS.has(key) || value === undefined) continue;
    let shown = value;
    if (isSerialisedError(value)) {
      const { stack, ...rest } = value;
      stacks.push(...stack.split("\n").map((l) => `    ${l.trimEnd()}`));
      if (Object.keys(rest).length === 0) continue;
      shown = rest;
    }
    const rendered = typeof shown === "string" ? plainOrJson(shown) : JSON.stringify(shown);
    head.push(`${colour ? paint("36", key) : key}=${rendered}`);
  }
  const tail = stacks.map((l) => (colour ? paint("2", l) : l));
  return `${[head.join(" "), ...tail].join("\n")}\n`;
}

/** A destination for pino that writes each record through formatPretty to `out` (stdout by default). */
export function prettyDestination(
  out: { write(text: string): unknown } = pino.destination({ dest: 1, sync: true }),
  options: PrettyOptions = {},
): DestinationStream {
  return {
    write(chunk: string) {
      // pino hands over one record per call; split anyway, so nothing is lost if that ever changes.
      let text = "";
      for (const line of chunk.split("\n")) if (line.trim() !== "") text += formatPretty(line, options);
      if (text !== "") out.write(text);
    },
  };
}

/**
 * Colour only for a person: stdout is a terminal and NO_COLOR (https://no-color.org) is not set to
 * anything non-empty.
 */
export function useColour(stream: { isTTY?: boolean } = process.stdout, env: Record<string, string | undefined> = process.env): boolean {
  return stream.isTTY === true && (env.NO_COLOR === undefined || env.NO_COLOR === "");
}

function clockTime(time: unknown): string | undefined {
  const date = typeof time === "number" || typeof time === "string" ? new Date(time) : undefined;
  if (!date || Number.isNaN(date.getTime())) return undefined;
  const two = (n: number) => String(n).padStart(2, "0");
  return `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}.${String(date.getMilliseconds()).padStart(3, "0")}`;
}

function levelLabel(level: unknown): string | undefined {
  if (typeof level === "number") return LEVELS[level] ?? String(level);
  if (typeof level === "string") return level.toUpperCase();
  return undefined;
}

function plainOrJson(value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this looks for
  return value === "" || /[\s"'=\u0000-\u001f\u007f]/.test(value) ? JSON.stringify(value) : value;
}

function isSerialisedError(value: unknown): value is { stack: string } & Record<string, unknown> {
  return value !== null && typeof value === "object" && typeof (value as { stack?: unknown }).stack === "string";
}
