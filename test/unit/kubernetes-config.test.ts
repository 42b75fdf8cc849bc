import { strict as assert } from "node:assert";
import { rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadConfig } from "../../src/config.js";
import { problemsOf } from "../support/expect.js";

describe("loadConfig: the Kubernetes runtime's K8S_* settings", () => {
  const kubeconfig = path.join(os.tmpdir(), `remotegpu-kubeconfig-${process.pid}`);
  before(() => writeFileSync(kubeconfig, "apiVersion: v1\nkind: Config\n"));
  after(() => rmSync(kubeconfig, { force: true }));
  const k8s = (vars: Record<string, string> = {}) => ({ RUNTIME: "kubernetes", ...vars });

  it("has documented defaults: visible-devices GPUs, a 300 s image pull timeout, no node selector, no TLS", () => {
    const c = loadConfig(k8s()).kubernetes!;
    assert.equal(c.gpuMode, "visible-devices");
    assert.equal(c.runtimeClass, "nvidia");
    assert.equal(c.accessMode, "ReadWriteOnce");
    assert.equal(c.mountPath, "/workspace");
    assert.equal(c.imagePullTimeoutSeconds, 300);
    assert.equal(c.nodeSelector, undefined);
    assert.equal(c.ingressTlsSecret, undefined);
    assert.equal(c.ingressCertIssuer, undefined);
    assert.equal(loadConfig({}).kubernetes, undefined, "off without RUNTIME or KUBECONFIG");
    assert.equal(loadConfig({ KUBECONFIG: kubeconfig }).kubernetes?.kubeconfig, kubeconfig);
  });

  it("accepts a full valid set", () => {
    const c = loadConfig(
      k8s({
        K8S_NAMESPACE_PREFIX: "gpu-",
        K8S_STORAGE_CLASS: "fast-ssd",
        K8S_VOLUME_ACCESS_MODE: "ReadWriteOncePod",
        K8S_VOLUME_MOUNT_PATH: "/home/jovyan/work",
        K8S_GPU_MODE: "device-plugin",
        K8S_RUNTIME_CLASS: "nvidia-cdi",
        K8S_INGRESS_BASE_DOMAIN: "gpu.example.com",
        K8S_INGRESS_CLASS: "nginx",
        K8S_INGRESS_CERT_ISSUER: "letsencrypt-prod",
        K8S_IMAGE_PULL_TIMEOUT_SECONDS: "900",
        K8S_NODE_SELECTOR: "nvidia.com/gpu.present=true, remotegpu.io/pool = a",
        K8S_NODE_PORT_RANGE: "31000-31999",
      }),
    ).kubernetes!;
    assert.equal(c.storageClass, "fast-ssd");
    assert.equal(c.accessMode, "ReadWriteOncePod");
    assert.equal(c.mountPath, "/home/jovyan/work");
    assert.equal(c.gpuMode, "device-plugin");
    assert.equal(c.runtimeClass, "nvidia-cdi");
    assert.equal(c.ingressCertIssuer, "letsencrypt-prod");
    assert.equal(c.imagePullTimeoutSeconds, 900);
    assert.equal(c.nodeSelector, "nvidia.com/gpu.present=true,remotegpu.io/pool=a");
    assert.deepEqual(c.nodePortRange, { first: 31000, last: 31999 });
    assert.equal(
      loadConfig(k8s({ K8S_INGRESS_BASE_DOMAIN: "d.io", K8S_INGRESS_TLS_SECRET: "wildcard" })).kubernetes!.ingressTlsSecret,
      "wildcard",
    );
  });

  it("names every bad K8S_* value, one problem each", () => {
    const problems = problemsOf(
      k8s({
        K8S_VOLUME_ACCESS_MODE: "ReadWriteOne",
        K8S_VOLUME_MOUNT_PATH: "workspace",
        K8S_STORAGE_CLASS: "Fast_SSD",
        K8S_RUNTIME_CLASS: "nvidia runtime",
        K8S_INGRESS_CLASS: "-nginx",
        K8S_INGRESS_BASE_DOMAIN: "GPU.example.com",
        K8S_INGRESS_CERT_ISSUER: "lets_encrypt",
        K8S_IMAGE_PULL_TIMEOUT_SECONDS: "0",
        K8S_NODE_SELECTOR: "gpu",
        K8S_GPU_MODE: "mig",
      }),
    );
    const expected: [string, RegExp][] = [
      [
        "K8S_VOLUME_ACCESS_MODE",
        /^K8S_VOLUME_ACCESS_MODE="ReadWriteOne": must be one of ReadWriteOnce, ReadOnlyMany, ReadWriteMany, ReadWriteOncePod$/,
      ],
      ["K8S_VOLUME_MOUNT_PATH", /^K8S_VOLUME_MOUNT_PATH="workspace": must be an absolute path/],
      ["K8S_STORAGE_CLASS", /^K8S_STORAGE_CLASS="Fast_SSD": must be the name of a StorageClass/],
      ["K8S_RUNTIME_CLASS", /^K8S_RUNTIME_CLASS="nvidia runtime": must be the name of a RuntimeClass/],
      ["K8S_INGRESS_CLASS", /^K8S_INGRESS_CLASS="-nginx": must be the name of an IngressClass/],
      ["K8S_INGRESS_BASE_DOMAIN", /^K8S_INGRESS_BASE_DOMAIN="GPU.example.com": must be a lowercase domain name/],
      ["K8S_INGRESS_CERT_ISSUER", /^K8S_INGRESS_CERT_ISSUER="lets_encrypt": must be the name of a cert-manager ClusterIssuer/],
      ["K8S_IMAGE_PULL_TIMEOUT_SECONDS", /^K8S_IMAGE_PULL_TIMEOUT_SECONDS="0": must be a whole number from 1 to 86400$/],
      ["K8S_NODE_SELECTOR", /^K8S_NODE_SELECTOR="gpu": must be key=value labels joined by ','/],
      ["K8S_GPU_MODE", /^K8S_GPU_MODE="mig": must be visible-devices or device-plugin$/],
    ];
    for (const [name, pattern] of expected) {
      const mine = problems.filter((p) => p.startsWith(name));
      assert.equal(mine.length, 1, `${name}: ${JSON.stringify(problems)}`);
      assert.match(mine[0]!, pattern);
    }
    assert.equal(problems.length, expected.length, problems.join("\n"));
  });

  it("takes each access mode Kubernetes knows, and no other", () => {
    for (const mode of ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"])
      assert.equal(loadConfig(k8s({ K8S_VOLUME_ACCESS_MODE: mode })).kubernetes!.accessMode, mode);
    for (const mode of ["readwriteonce", "RWO", "ReadWriteOnce,ReadOnlyMany"])
      assert.equal(problemsOf(k8s({ K8S_VOLUME_ACCESS_MODE: mode })).length, 1, mode);
  });

  it("refuses domains that cannot carry an ingress host, and label selectors that are not key=value", () => {
    for (const domain of [
      "gpu..example.com",
      "-gpu.example.com",
      "gpu.example.com.",
      "*.example.com",
      "10.0.0.1",
      `${"a".repeat(64)}.com`,
      `${"abcd.".repeat(40)}io`,
    ])
      assert.equal(problemsOf(k8s({ K8S_INGRESS_BASE_DOMAIN: domain })).length, 1, domain);
    for (const domain of ["localhost", "gpu.example.com", "a-b.c0.io"])
      assert.deepEqual(problemsOf(k8s({ K8S_INGRESS_BASE_DOMAIN: domain })), [], domain);
    for (const selector of ["a!=b", "gpu in (a,b)", "a=b,", "bad key=x", "a=b c"])
      assert.equal(problemsOf(k8s({ K8S_NODE_SELECTOR: selector })).length, 1, selector);
    assert.equal(problemsOf(k8s({ K8S_IMAGE_PULL_TIMEOUT_SECONDS: "1.5" })).length, 1);
  });

  it("refuses a TLS secret together with an issuer, and TLS or a class without a base domain", () => {
    const both = problemsOf(k8s({ K8S_INGRESS_BASE_DOMAIN: "d.io", K8S_INGRESS_TLS_SECRET: "wild", K8S_INGRESS_CERT_ISSUER: "le" }));
    assert.equal(both.length, 1, both.join("\n"));
    assert.match(both[0]!, /K8S_INGRESS_TLS_SECRET and K8S_INGRESS_CERT_ISSUER: set one/);
    const lonely = problemsOf(k8s({ K8S_INGRESS_TLS_SECRET: "wild" }));
    assert.deepEqual(lonely, ["K8S_INGRESS_TLS_SECRET: set K8S_INGRESS_BASE_DOMAIN too, or leave it out"]);
  });

  it("refuses K8S_* settings on the agent runtime, where they would be ignored", () => {
    const problems = problemsOf({ K8S_VOLUME_ACCESS_MODE: "ReadWriteOnce", K8S_NODE_SELECTOR: "a=b" });
    assert.deepEqual(problems, [
      "K8S_VOLUME_ACCESS_MODE: set RUNTIME=kubernetes (or KUBECONFIG) too, or leave it out",
      "K8S_NODE_SELECTOR: set RUNTIME=kubernetes (or KUBECONFIG) too, or leave it out",
    ]);
    assert.equal(problemsOf({ RUNTIME: "agent", K8S_GPU_MODE: "visible-devices" }).length, 1);
    assert.deepEqual(problemsOf({ K8S_GPU_MODE: "  " }), [], "blank is unset");
  });
});
