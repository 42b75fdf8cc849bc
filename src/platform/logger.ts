import { pino, type Logger as PinoLogger, type DestinationStream } from "pino";

export type Logger = PinoLogger;

/** JSON lines on stdout (or the given stream), one object per event. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino({ level, base: { service: "remotegpu" } }, destination);
}
