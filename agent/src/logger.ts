import { pino, type Logger as PinoLogger } from "pino";

export type Logger = PinoLogger;

/** JSON lines on stdout, one object per event (journald keeps them as they are). */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: "remotegpu-agent" } });
}
