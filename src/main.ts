import { createApp } from "./app.js";
import { type Config, ConfigError, loadConfig } from "./config.js";
import { createLogger, routeStrayOutput } from "./platform/logger.js";

// Reads the configuration, builds the app, serves, and stops cleanly on SIGTERM/SIGINT.
let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  for (const problem of err.problems) process.stderr.write(`config error: ${problem}\n`);
  process.exit(2);
}

// Everything the process says from here on is a log record on stdout (LOG_FORMAT), libraries'
// console output and Node's warnings included. The exceptions, on stderr: the generated admin token
// (kept out of collected logs), and the reason of a non-zero exit, which is also logged.
const logger = createLogger(config.logLevel, config.logFormat);
routeStrayOutput(logger);

/** Logs why the process gives up, says it on stderr too (for whoever started it), and exits 1. */
function exitWith(message: string, err?: unknown): never {
  logger.fatal(err === undefined ? {} : { err }, message);
  const reason = err === undefined ? "" : `: ${err instanceof Error ? err.message : String(err)}`;
  process.stderr.write(`remotegpu: ${message}${reason}\n`);
  process.exit(1);
}

const starting = createApp(config, { logger }).catch((err: unknown) => exitWith("cannot start", err));

// Handlers go in before start-up finishes: a SIGTERM while the embedded PostgreSQL is starting must
// still stop it rather than leave it running without us.
let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    if (stopping) {
      // A second signal: the operator does not want to wait for the drain.
      exitWith("second signal, exiting now");
    }
    stopping = true;
    starting
      .then(async (app) => {
        app.logger.info({ signal }, "shutting down");
        await app.close();
      })
      .then(
        () => process.exit(0),
        (err: unknown) => exitWith("shutdown failed", err),
      );
  });
}

const app = await starting;
// A signal during start-up: its handler is closing the app and will exit; serve nothing meanwhile.
if (stopping) await new Promise<never>(() => undefined);

if (app.generatedAdminToken) {
  process.stderr.write(
    `\nNo REMOTEGPU_ADMIN_TOKEN was configured, so an admin token was generated. It is shown only now;\n` +
      `only its hash is stored. Keep it safe:\n\n    ${app.generatedAdminToken}\n\n`,
  );
}

const port = await app.listen().catch(async (err: unknown) => {
  await app.close().catch((closing: unknown) => logger.error({ err: closing }, "closing after a failed listen"));
  return exitWith(`cannot listen on ${config.bindAddress}:${config.port}`, err);
});
app.logger.info({ port, tls: Boolean(config.tls) }, "remotegpu listening");
