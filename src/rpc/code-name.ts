import { Code } from "@connectrpc/connect";

/**
 * A code as the Connect protocol and the README spell it: `invalid_argument`, `not_found`, … The one
 * spelling of logs, audit events and /metrics labels (`ok` stands for success there).
 */
export function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  return name ? name.replace(/(?<=[a-z])(?=[A-Z])/g, "_").toLowerCase() : String(code);
}
