import { open } from "node:fs/promises";
import { StringDecoder } from "node:string_decoder";

export type LogStreamName = "STDOUT" | "STDERR" | "SYSTEM";

export interface WorkloadLogLine {
  time: Date;
  stream: LogStreamName;
  text: string;
}

export const MAX_LINE_BYTES = 8 * 1024;
const LOG_BATCH_LINES = 200;
const LOG_BATCH_MS = 200;
const TAIL_POLL_MS = 200;
const TAIL_CHUNK_BYTES = 64 * 1024;

/** Splits a byte stream into UTF-8 lines; a line over MAX_LINE_BYTES is cut there and its rest dropped. */
export class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private partial = "";
  /** Inside the dropped rest of an overlong line. */
  private skipping = false;

  constructor(private readonly emit: (text: string) => void) {}

  write(chunk: Buffer): void {
    this.take(this.decoder.write(chunk));
  }

  end(): void {
    this.take(this.decoder.end());
    if (this.partial && !this.skipping) this.emit(this.partial);
    this.partial = "";
    this.skipping = false;
  }

  private take(text: string): void {
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop()!;
    for (const part of parts) {
      if (this.skipping) this.skipping = false;
      else this.emit(capLine(part.endsWith("\r") ? part.slice(0, -1) : part));
    }
    if (Buffer.byteLength(this.partial) > MAX_LINE_BYTES) {
      if (!this.skipping) this.emit(capLine(this.partial));
      this.skipping = true;
      this.partial = "";
    }
  }
}

function capLine(text: string): string {
  if (Buffer.byteLength(text) <= MAX_LINE_BYTES) return text;
  return Buffer.from(text)
    .subarray(0, MAX_LINE_BYTES)
    .toString("utf8")
    .replace(/\uFFFD$/, ""); // no half character
}

/** Collects lines and hands them on every LOG_BATCH_MS or LOG_BATCH_LINES, whichever comes first. */
export class LogBatch {
  private lines: WorkloadLogLine[] = [];
  private timer?: NodeJS.Timeout;

  constructor(private readonly deliver: (lines: WorkloadLogLine[]) => void) {}

  add(stream: LogStreamName, text: string, time = new Date()): void {
    this.lines.push({ time, stream, text });
    if (this.lines.length >= LOG_BATCH_LINES) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), LOG_BATCH_MS).unref();
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.lines.length === 0) return;
    const lines = this.lines;
    this.lines = [];
    this.deliver(lines);
  }
}

/**
 * Follows a file a workload writes its output to, from byte `offset` on. It only ever consumes whole
 * lines (or an overlong piece that the splitter cuts anyway), so `offset` always sits where a later
 * reader, in this agent or the next one, can take over without splitting a line or a character.
 */
export class FileTail {
  private timer?: NodeJS.Timeout;
  private reading: Promise<void> = Promise.resolve();

  constructor(
    private readonly file: string,
    public offset: number,
    private readonly lines: LineSplitter,
    /** Called after `offset` moved. */
    private readonly advanced: () => void,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => void this.read(false), TAIL_POLL_MS).unref();
  }

  /**
   * Stops polling. `final` (the writer has ended) first reads the rest, an unfinished last line
   * included; otherwise what was not read yet stays for whoever follows the file next.
   */
  async stop(final: boolean): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    if (!final) return this.reading;
    await this.read(true);
    this.lines.end();
  }

  private read(final: boolean): Promise<void> {
    this.reading = this.reading.then(() => this.readNow(final)).catch(() => undefined); // a missing file: nothing yet
    return this.reading;
  }

  private async readNow(final: boolean): Promise<void> {
    const handle = await open(this.file, "r");
    const before = this.offset;
    try {
      const buffer = Buffer.alloc(TAIL_CHUNK_BYTES);
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.offset);
        if (bytesRead === 0) break;
        const chunk = buffer.subarray(0, bytesRead);
        let take = chunk.lastIndexOf(0x0a) + 1;
        // No newline yet: wait for the rest, unless the line is too long to keep whole anyway.
        if (take === 0 && (final || bytesRead >= MAX_LINE_BYTES)) take = bytesRead;
        if (take === 0) break;
        this.lines.write(chunk.subarray(0, take));
        this.offset += take;
      }
    } finally {
      await handle.close();
    }
    if (this.offset !== before) this.advanced();
  }
}
