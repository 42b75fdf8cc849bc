import { pino, type Logger as PinoLogger } from "pino";

export type Logger = PinoLogger;

/**
 * JSON lines on stdout, one object per event (journald keeps them as they are). Written synchronously:
 * the agent logs little, and its last words before `process.exit` (why it stopped) must not be lost
 * with an asynchronous write still in flight.
 */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: "remotegpu-agent" } }, pino.destination({ dest: 1, sync: true }));
}
