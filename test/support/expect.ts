import { strict as assert } from "node:assert";
import { Code, ConnectError } from "@connectrpc/connect";
import { ConfigError, loadConfig } from "../../src/config.js";

/** Awaits `call` and asserts it failed with `code`, and that the message mentions each of `mentions`. */
export async function expectCode(call: Promise<unknown>, code: Code, ...mentions: string[]): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    const e = ConnectError.from(err);
    assert.equal(Code[e.code], Code[code], `expected ${Code[code]}, got ${Code[e.code]}: ${e.rawMessage}`);
    for (const m of mentions)
      assert.ok(e.rawMessage.includes(m), `message ${JSON.stringify(e.rawMessage)} should mention ${JSON.stringify(m)}`);
    return e;
  }
  assert.fail(`expected ${Code[code]}, but the call succeeded`);
}

/** The problems loadConfig reports for `env`, none if it loads. */
export function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.problems;
  }
}
