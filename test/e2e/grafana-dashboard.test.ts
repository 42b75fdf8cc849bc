import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { ManualClock } from "../../src/platform/clock.js";
import { FakeAgent } from "../support/fake-agent.js";
import { startTestServer, type TestServer } from "../support/server.js";

// deploy/grafana/remotegpu-fleet.json asks Prometheus for metric names; a renamed or dropped series
// would leave its panels empty without anyone noticing. This checks every name the dashboard's
// queries use against what a real server exports on GET /metrics and GET /metrics/gpus.

const DASHBOARD = new URL("../../deploy/grafana/remotegpu-fleet.json", import.meta.url);
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a template string
const DS_PROMETHEUS = "${DS_PROMETHEUS}";

interface Target {
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  datasource?: { type?: string; uid?: string };
}
interface Dashboard {
  panels: Panel[];
  templating: { list: Variable[] };
}

/** Every panel, rows' collapsed children included. */
function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** The PromQL of every panel target and every query variable. */
function queriesOf(d: Dashboard): string[] {
  const exprs = allPanels(d).flatMap((p) => (p.targets ?? []).flatMap((t) => (t.expr ? [t.expr] : [])));
  for (const v of d.templating.list) {
    if (v.type !== "query") continue;
    const q = typeof v.query === "string" ? v.query : v.query?.query;
    if (q) exprs.push(q);
  }
  return exprs;
}

// PromQL's functions and aggregations, and Grafana's variable-query functions.
// biome-ignore format: a list
const FUNCTIONS = new Set([
  // aggregations
  "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
  // functions
  "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month", "day_of_week",
  "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
  "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "double_exponential_smoothing",
  "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute", "month",
  "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc",
  "sqrt", "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
  "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
  "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
  "start", "end",
  // Grafana's Prometheus variable queries
  "label_values", "label_names", "metrics", "query_result",
]);
const KEYWORDS = new Set([
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "inf",
  "nan",
]);

/**
 * The metric names a PromQL expression (or a Grafana variable query) reads. A small tokenizer, not a
 * parser: it drops string literals, label matchers ({...}), label lists (by/without/on/ignoring/
 * group_left/group_right (...)), ranges and subqueries ([...]), numbers and durations, and Grafana
 * variables; what is left that is not a function or a keyword is a metric name.
 */
function metricNamesOf(expr: string): string[] {
  let s = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, " ")
    .replace(/\$\{[^}]*\}|\$[a-zA-Z_]\w*|\[\[[^\]]*\]\]/g, " ")
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  // label_values(metric, label) reads metric (label_values(label) reads none): drop the label argument.
  s = s.replace(/\blabel_values\s*\(([^()]*)\)/g, (_, args: string) => {
    const parts = args.split(",");
    return parts.length > 1 ? ` ( ${parts.slice(0, -1).join(",")} ) ` : " ";
  });
  const names = new Set<string>();
  const token = /[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*/g;
  for (let m = token.exec(s); m; m = token.exec(s)) {
    const word = m[0];
    if (/^[0-9]/.test(word)) continue; // a number or a duration
    const lower = word.toLowerCase();
    if (KEYWORDS.has(lower)) continue;
    const call = /^\s*\(/.test(s.slice(token.lastIndex));
    if (call) {
      if (!FUNCTIONS.has(word)) throw new Error(`unknown PromQL function ${word} in ${expr}`);
      continue;
    }
    names.add(word);
  }
  return [...names];
}

/**
 * Every metric name in a scrape: sample lines' names, and the family names of the TYPE lines with
 * the series a histogram or summary family has (name_bucket, name_sum, name_count), since a labelled
 * family with no observations yet prints only its HELP and TYPE.
 */
function exportedNamesOf(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)/.exec(line);
    if (type) {
      const [, name, kind] = type as unknown as [string, string, string];
      names.add(name);
      if (kind === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) names.add(name + suffix);
      if (kind === "summary") for (const suffix of ["_sum", "_count"]) names.add(name + suffix);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (sample) names.add(sample[1]!);
  }
  return names;
}

describe("deploy/grafana/remotegpu-fleet.json", () => {
  let dashboard: Dashboard;
  let panels: Panel[];

  it("parses as a dashboard Grafana 10 imports", () => {
    dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as Dashboard;
    panels = allPanels(dashboard);
    const d = dashboard as unknown as { schemaVersion: number; uid: string; title: string };
    assert.ok(d.schemaVersion >= 36 && d.schemaVersion <= 39, `schemaVersion ${d.schemaVersion}`);
    assert.equal(d.uid, "remotegpu-fleet");
    assert.ok(d.title);
    assert.ok(panels.length > 30, `${panels.length} panels`);
  });

  it("has panels with unique ids, laid out on the 24-column grid without overlaps", () => {
    const ids = panels.map((p) => p.id);
    assert.deepEqual(
      ids.filter((id, i) => ids.indexOf(id) !== i),
      [],
      "duplicate panel ids",
    );
    for (const p of panels) {
      const { x, y, w, h } = p.gridPos;
      assert.ok(x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24, `panel ${p.id} (${p.title}) off the grid: ${JSON.stringify(p.gridPos)}`);
    }
    for (const [i, a] of panels.entries())
      for (const b of panels.slice(i + 1)) {
        const overlap =
          a.gridPos.x < b.gridPos.x + b.gridPos.w &&
          b.gridPos.x < a.gridPos.x + a.gridPos.w &&
          a.gridPos.y < b.gridPos.y + b.gridPos.h &&
          b.gridPos.y < a.gridPos.y + a.gridPos.h;
        assert.ok(!overlap, `panels ${a.id} (${a.title}) and ${b.id} (${b.title}) overlap`);
      }
  });

  it("reads every panel and query variable from the DS_PROMETHEUS data source variable", () => {
    const ds = dashboard.templating.list.find((v) => v.name === "DS_PROMETHEUS");
    assert.equal(ds?.type, "datasource");
    assert.equal(ds?.query, "prometheus");
    const prometheus = { type: "prometheus", uid: DS_PROMETHEUS };
    for (const p of panels) {
      if (p.type === "row") continue;
      assert.deepEqual(p.datasource, prometheus, `panel ${p.id} (${p.title})`);
      assert.ok(p.targets?.length, `panel ${p.id} (${p.title}) has no queries`);
      for (const t of p.targets) {
        assert.ok(t.expr, `panel ${p.id} (${p.title}) has a target without an expr`);
        assert.deepEqual(t.datasource, prometheus, `a target of panel ${p.id} (${p.title})`);
      }
    }
    for (const v of dashboard.templating.list.filter((v) => v.type === "query"))
      assert.deepEqual(v.datasource, prometheus, `variable ${v.name}`);
    assert.deepEqual(
      dashboard.templating.list.map((v) => v.name),
      ["DS_PROMETHEUS", "host", "workspace"],
    );
  });

  it("extracts metric names from PromQL, not functions, labels, strings or variables", () => {
    assert.deepEqual(metricNamesOf('histogram_quantile(0.99, sum by (le, service) (rate(a_seconds_bucket{code!="ok", x=~"$host"}[5m])))'), [
      "a_seconds_bucket",
    ]);
    assert.deepEqual(metricNamesOf("sum(a) / count(b) > bool 0.5 and on(host) c offset 1h"), ["a", "b", "c"]);
    assert.deepEqual(metricNamesOf('label_values(remotegpu_x{y="z"}, host)'), ["remotegpu_x"]);
    assert.deepEqual(metricNamesOf("label_values(host)"), []);
    assert.deepEqual(metricNamesOf("rate(x[$__rate_interval]) * 1e3 + y{host=~`$host`}"), ["x", "y"]);
    assert.deepEqual(metricNamesOf(`max(z{host=~"${DS_PROMETHEUS}"})`), ["z"]);
    assert.throws(() => metricNamesOf("sumx(a)"), /unknown PromQL function sumx/);
  });

  describe("against a running server", function () {
    this.timeout(60_000);
    let server: TestServer;
    let agent: FakeAgent | undefined;

    before(async () => {
      server = await startTestServer({ clock: new ManualClock(new Date()) });
      // A host whose agent said hello and sent a sample, so that the per-GPU series have samples; a
      // workspace with a quota and an environment holding a GPU, for the allocation and workspace series.
      const { host, agentToken } = await server.client(HostService).createHost({ name: "dash-host", address: "10.7.0.1" });
      agent = new FakeAgent(server, agentToken);
      await agent.hello(host!.id, [{ index: 0, uuid: "GPU-dash-0" }]);
      await agent.beat([{ uuid: "GPU-dash-0", index: 0, util: 40, temp: 55, memUsed: 1n << 30n }]);
      const workspaces = server.client(WorkspaceService);
      const ws = (await workspaces.createWorkspace({ name: "dash-team" })).workspace!.id;
      await workspaces.setResourceQuota({ quota: { workspaceId: ws, maxGpus: 4, maxEnvironments: 10 } });
      await server
        .client(EnvironmentService)
        .createEnvironment({ workspaceId: ws, name: "dash-env", image: "img", command: ["x"], gpuCount: 1 });
      // Reads the fleet metrics' snapshot again (it refreshes in the background otherwise).
      await server.app.maintain();
    });
    after(async () => {
      agent?.close();
      await server?.close();
    });

    it("exports every metric name the dashboard's queries use", async () => {
      const scrape = async (path: string) => {
        const res = await fetch(`${server.baseUrl}${path}`);
        // GET /metrics/gpus may not be served (METRICS_GPU_SERIES=off, or a server without it).
        if (res.status === 404 && path !== "/metrics") return "";
        assert.equal(res.status, 200, `GET ${path}`);
        return res.text();
      };
      const exported = new Set([...exportedNamesOf(await scrape("/metrics")), ...exportedNamesOf(await scrape("/metrics/gpus"))]);
      const used = [...new Set(queriesOf(dashboard).flatMap(metricNamesOf))].sort();
      if (process.env.DASHBOARD_NAMES) console.log(used.join("\n"));
      assert.ok(used.length >= 30, `only ${used.length} metric names found in the dashboard: ${used.join(", ")}`);
      const missing = used.filter((n) => !exported.has(n));
      assert.deepEqual(missing, [], `the dashboard uses metric names the server does not export: ${missing.join(", ")}`);
    });
  });
});
