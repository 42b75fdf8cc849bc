import { strict as assert } from "node:assert";
import { InvalidArgumentError } from "../../src/errors.js";
import { decodePageToken, encodePageToken, pageSize } from "../../src/pagination.js";

describe("pagination", () => {
  it("defaults the page size to 50 and caps it at 1000", () => {
    assert.equal(pageSize(0), 50);
    assert.equal(pageSize(7), 7);
    assert.equal(pageSize(5000), 1000);
    assert.throws(() => pageSize(-1), InvalidArgumentError);
  });

  it("round-trips a keyset position for the same filters only", () => {
    const filters = { status: "ONLINE", labels: { a: "b" } };
    const token = encodePageToken(["gpu-node-07", 3], filters);
    assert.deepEqual(decodePageToken(token, filters, ["string", "int"]), ["gpu-node-07", 3]);
    assert.equal(decodePageToken("", filters, ["string"]), undefined);
    assert.throws(() => decodePageToken(token, { ...filters, status: "OFFLINE" }, ["string", "int"]), /different filters/);
    assert.throws(() => decodePageToken(token, filters, ["int", "int"]), /page_token/);
    assert.throws(() => decodePageToken("%%%", filters, ["string"]), /page_token/);
  });

  it("refuses forged tokens whose values could not have come from a list", () => {
    const filters = {};
    assert.throws(() => decodePageToken(encodePageToken(["zzz", 1], filters), filters, ["uuid", "int"]), /page_token/);
    assert.throws(() => decodePageToken(encodePageToken(["a\u0000"], filters), filters, ["string"]), /page_token/);
    assert.throws(
      () => decodePageToken(encodePageToken(["00000000-0000-4000-8000-000000000000", 1.5], filters), filters, ["uuid", "int"]),
      /page_token/,
    );
  });
});
