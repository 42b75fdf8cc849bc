import { strict as assert } from "node:assert";
import { hashSecret, issueToken, parseToken, sameHash } from "../../src/auth/token-secret.js";

describe("token secrets", () => {
  it("issues distinct tokens whose secret only the hash can confirm", () => {
    const a = issueToken();
    const b = issueToken();
    assert.notEqual(a.token, b.token);
    const parsed = parseToken(a.token)!;
    assert.equal(parsed.id, a.id);
    assert.ok(sameHash(hashSecret(parsed.secret), a.secretHash));
    assert.ok(!sameHash(hashSecret(parseToken(b.token)!.secret), a.secretHash));
    assert.ok(!a.secretHash.includes(parsed.secret));
  });

  it("refuses strings that are not tokens", () => {
    assert.equal(parseToken(""), undefined);
    assert.equal(parseToken("rgpu_short_x"), undefined);
    assert.equal(parseToken(`rgpu_0123456789abcdef_${"a".repeat(42)}`), undefined);
    assert.ok(parseToken(`rgpu_0123456789abcdef_${"a".repeat(43)}`));
  });
});
