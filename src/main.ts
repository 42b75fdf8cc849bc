import { createApp } from "./app.js";
import { type Config, ConfigError, loadConfig } from "./config.js";

// Reads the configuration, builds the app, serves, and stops cleanly on SIGTERM/SIGINT.
let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  for (const problem of err.problems) process.stderr.write(`config error: ${problem}\n`);
  process.exit(2);
}

const starting = createApp(config).catch((err: unknown) => {
  process.stderr.write(`remotegpu: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

// Handlers go in before start-up finishes: a SIGTERM while the embedded PostgreSQL is starting must
// still stop it rather than leave it running without us.
let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    if (stopping) {
      // A second signal: the operator does not want to wait for the drain.
      process.stderr.write("remotegpu: second signal, exiting now\n");
      process.exit(1);
    }
    stopping = true;
    starting
      .then(async (app) => {
        app.logger.info({ signal }, "shutting down");
        await app.close();
      })
      .then(
        () => process.exit(0),
        (err: unknown) => {
          process.stderr.write(`remotegpu: shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
          process.exit(1);
        },
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
  process.stderr.write(
    `remotegpu: cannot listen on ${config.bindAddress}:${config.port}: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  await app.close();
  process.exit(1);
});
app.logger.info({ port, tls: Boolean(config.tls) }, "remotegpu listening");
