import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";

/** Reads and parses the certificate and key, so that a bad pair stops the start before anything runs. */
export function loadTls(certFile: string, keyFile: string): { cert: Buffer; key: Buffer } {
  const pair = { cert: readFileSync(certFile), key: readFileSync(keyFile) };
  try {
    createSecureContext(pair);
  } catch (err) {
    throw new Error(`TLS_CERT/TLS_KEY: not a usable PEM certificate and key (${err instanceof Error ? err.message : String(err)})`);
  }
  return pair;
}
