import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { loadYaml } from "@kubernetes/client-node";

// deploy/prometheus/: the alerting rules are checked and unit-tested by promtool itself (rule syntax,
// the example configuration that loads them, and alerts.test.yml), and every alert must carry a
// severity, a summary, a description, and tests that see it both fire and stay quiet.

const ROOT = path.resolve(import.meta.dirname, "../..");
const DIR = "deploy/prometheus";

function promtool(...args: string[]): string {
  const run = spawnSync("promtool", args, { cwd: ROOT, encoding: "utf8", timeout: 60_000 });
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") {
    assert.fail("promtool is not installed: install it with 'apt-get install -y prometheus' (Debian's package carries promtool)");
  }
  if (run.error) throw run.error;
  const output = `${run.stdout}${run.stderr}`;
  assert.equal(run.status, 0, `promtool ${args.join(" ")} exited with ${run.status ?? run.signal}:\n${output}`);
  return output;
}

interface Rule {
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleTest {
  name?: string;
  alert_rule_test?: { alertname: string; exp_alerts?: unknown[] | null }[];
}

function yamlFile<T>(name: string): T {
  return loadYaml<T>(readFileSync(path.join(ROOT, DIR, name), "utf8"));
}

describe("unit: Prometheus alerting rules (deploy/prometheus)", function () {
  this.timeout(120_000);

  it("promtool check rules accepts alerts.yml", () => {
    const output = promtool("check", "rules", `${DIR}/alerts.yml`);
    assert.match(output, /SUCCESS: \d+ rules found/);
  });

  it("promtool check config accepts prometheus.example.yml and the rule file it loads", () => {
    const output = promtool("check", "config", `${DIR}/prometheus.example.yml`);
    assert.match(output, /SUCCESS: 1 rule files found/);
  });

  it("promtool test rules passes alerts.test.yml", () => {
    const output = promtool("test", "rules", `${DIR}/alerts.test.yml`);
    assert.match(output, /SUCCESS/);
  });

  it("every alert has a severity, a summary and a description, and is tested firing and not firing", () => {
    const rules = yamlFile<{ groups: { name: string; rules: Rule[] }[] }>("alerts.yml");
    assert.deepEqual(
      rules.groups.map((g) => g.name),
      ["remotegpu"],
    );
    const alerts = rules.groups.flatMap((g) => g.rules).filter((r): r is Rule & { alert: string } => r.alert !== undefined);
    assert.ok(alerts.length >= 9, `${alerts.length} alerts`);

    const cases = yamlFile<{ rule_files: string[]; tests: RuleTest[] }>("alerts.test.yml");
    assert.deepEqual(cases.rule_files, ["alerts.yml"]);
    const checks = cases.tests.flatMap((t) => t.alert_rule_test ?? []);

    for (const rule of alerts) {
      assert.ok(["page", "warning"].includes(rule.labels?.severity ?? ""), `${rule.alert}: severity ${rule.labels?.severity}`);
      assert.ok(rule.annotations?.summary, `${rule.alert}: no summary`);
      assert.ok(rule.annotations?.description, `${rule.alert}: no description`);
      const mine = checks.filter((c) => c.alertname === rule.alert);
      assert.ok(
        mine.some((c) => (c.exp_alerts ?? []).length > 0),
        `${rule.alert}: no case in alerts.test.yml where it fires`,
      );
      assert.ok(
        mine.some((c) => (c.exp_alerts ?? []).length === 0),
        `${rule.alert}: no case in alerts.test.yml where it does not fire`,
      );
    }
  });
});
