import { strict as assert } from "node:assert";
import { hostName } from "../../src/environment/environment.js";

describe("hostName: a host's address without its port", () => {
  it("drops the port of a name or IPv4 address, and keeps a bare one", () => {
    assert.equal(hostName("10.0.0.5:7000"), "10.0.0.5");
    assert.equal(hostName("gpu-1.example.com"), "gpu-1.example.com");
  });

  it("reads IPv6 in brackets (with or without a port) and bare IPv6, whose last group is no port", () => {
    assert.equal(hostName("[fd00::5]:7000"), "fd00::5");
    assert.equal(hostName("[fd00::5]"), "fd00::5");
    assert.equal(hostName("fd00::5"), "fd00::5");
    assert.equal(hostName("fd00::1:8080"), "fd00::1:8080");
  });
});
