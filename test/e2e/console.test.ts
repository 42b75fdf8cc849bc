import { strict as assert } from "node:assert";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { EnvironmentService } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService } from "../../gen/remotegpu/v1/host_pb.js";
import { ApiTokenRole, WorkspaceService } from "../../gen/remotegpu/v1/workspace_pb.js";
import { systemClock } from "../../src/platform/clock.js";
import { agentArgv, agentTempDir, freePort, publishablePorts, ROOT, simulatedAgentFlags } from "../support/child.js";
import { eventually } from "../support/eventually.js";
import { ADMIN_TOKEN, startTestServer, type TestServer } from "../support/server.js";

// The web console in Debian's headless chromium (see .ci/run), driven by playwright-core, against a
// real server and a simulated agent that runs environments as processes. Screenshots of each page,
// at a laptop's and a phone's width, go to dist/screenshots (or $CONSOLE_SCREENSHOTS).
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.CONSOLE_SCREENSHOTS ?? path.join(ROOT, "dist/screenshots");
const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };
const STALL_MS = 30_000;

/** The little of a canvas element the test reads in the page (this process has no DOM types). */
interface CanvasLike {
  width: number;
  height: number;
  getContext(kind: "2d"): { getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray } };
}

describe("e2e: the web console in a real browser", function () {
  this.timeout(180_000);
  let server: TestServer;
  let agent: ChildProcess | undefined;
  let agentErr = "";
  let dataDir: string;
  let consoleDir: string;
  let browser: Browser;
  let hostName: string;
  let tokens: { member: string; viewer: string };
  let workspaceId: string;

  before(async () => {
    consoleDir = await mkdtemp(path.join(tmpdir(), "remotegpu-console-"));
    await promisify(execFile)(process.execPath, ["--import", "tsx", "src/console/build.ts", consoleDir], { cwd: ROOT });
    await mkdir(SHOTS, { recursive: true });
    dataDir = await agentTempDir("remotegpu-console-agent-");
    const first = await publishablePorts(10);
    server = await startTestServer({
      clock: systemClock,
      env: { HEARTBEAT_INTERVAL_SECONDS: "1", HOST_GRACE_SECONDS: "5", HOST_PORT_RANGE: `${first}-${first + 9}`, CONSOLE_DIR: consoleDir },
    });
    hostName = "gpu-box-1";
    const { host, agentToken } = await server.client(HostService).createHost({ name: hostName, address: "127.0.0.1" });
    agent = spawn(
      process.execPath,
      agentArgv(simulatedAgentFlags({ server: server.baseUrl, hostId: host!.id, token: agentToken, gpus: 4, dataDir })),
      {
        cwd: ROOT,
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    agent.stderr!.setEncoding("utf8").on("data", (c: string) => (agentErr += c));
    await eventually(
      "the agent's 4 GPUs",
      async () => (await server.client(GpuService).listGpus({ hostId: host!.id, freeOnly: true })).gpus.length === 4,
    );

    const workspaces = server.client(WorkspaceService);
    workspaceId = (await workspaces.createWorkspace({ name: "research", displayName: "Research" })).workspace!.id;
    await workspaces.setResourceQuota({ quota: { workspaceId, maxGpus: 4, maxEnvironments: 5 } });
    const token = async (role: ApiTokenRole, name: string) => (await workspaces.createApiToken({ workspaceId, name, role })).secret;
    tokens = { member: await token(ApiTokenRole.MEMBER, "alice"), viewer: await token(ApiTokenRole.VIEWER, "bob") };

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] }).catch((err: Error) => {
      throw new Error(`cannot start ${CHROMIUM} (apt-get install chromium): ${err.message}`);
    });
  });

  after(async () => {
    await browser?.close();
    agent?.kill("SIGKILL");
    await server?.close();
    await rm(dataDir, { recursive: true, force: true });
    await rm(consoleDir, { recursive: true, force: true });
  });

  /** A fresh browser session (its own sessionStorage), signed in with `token` unless undefined. */
  async function open(
    token: string | undefined,
    colorScheme: "light" | "dark" = "light",
  ): Promise<{ context: BrowserContext; page: Page }> {
    const context = await browser.newContext({ viewport: DESKTOP, colorScheme });
    context.setDefaultTimeout(STALL_MS);
    const page = await context.newPage();
    // The server's root sends a browser to the console.
    await page.goto(server.baseUrl);
    assert.equal(new URL(page.url()).pathname, "/ui/");
    if (token !== undefined) {
      await page.getByLabel(/API token/).fill(token);
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.getByRole("button", { name: "Sign out" }).waitFor();
    }
    return { context, page };
  }

  /** Screenshots of the page as it is, at a laptop's width and at a phone's. */
  async function shot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: path.join(SHOTS, `${name}-desktop.png`), fullPage: true });
    await page.setViewportSize(PHONE);
    await page.waitForTimeout(300); // the plots follow their box's width on the next frames
    await page.screenshot({ path: path.join(SHOTS, `${name}-phone.png`), fullPage: true });
    await page.setViewportSize(DESKTOP);
  }

  it("refuses a wrong token with the server's message, and keeps the sign-in form", async () => {
    const { context, page } = await open(undefined);
    // By keyboard alone: the token field has the focus, Enter submits.
    await page.keyboard.type("rgpu_notatoken");
    await page.keyboard.press("Enter");
    const alert = await page.getByRole("alert").textContent();
    assert.match(alert ?? "", /invalid token \(unauthenticated\)/);
    assert.equal(await page.getByRole("button", { name: "Sign out" }).count(), 0);
    await shot(page, "sign-in-refused");
    await context.close();
  });

  it("follows the system's dark theme, and the theme chosen", async () => {
    // The body's background as the page computes it (a string, so the test needs no DOM types).
    const background = (page: Page) => page.evaluate("getComputedStyle(document.body).backgroundColor");
    const light = await open(ADMIN_TOKEN, "light");
    const dark = await open(ADMIN_TOKEN, "dark");
    await dark.page.locator("a.gpu").first().waitFor();
    assert.notEqual(await background(dark.page), await background(light.page));
    await shot(dark.page, "fleet-dark");
    await light.page.getByLabel("Theme").selectOption("dark");
    // The choice applies in an effect, after the next paint.
    const darkBackground = await background(dark.page);
    await eventually("the chosen dark theme", async () => (await background(light.page)) === darkBackground);
    await light.context.close();
    await dark.context.close();
  });

  it("shows an admin the fleet: the host, its GPUs, utilisation changing live; a GPU's plots draw", async () => {
    const { context, page } = await open(ADMIN_TOKEN);
    await page
      .getByRole("row", { name: new RegExp(hostName) })
      .getByText("ONLINE")
      .waitFor();
    const tiles = page.locator("a.gpu");
    await eventually(
      "4 GPU tiles with a utilisation",
      async () => (await tiles.count()) === 4 && (await tiles.first().getAttribute("data-util")) !== "",
    );
    const utilisation = async () => Promise.all((await tiles.all()).map((t) => t.getAttribute("data-util")));
    const before = await utilisation();
    await eventually("a utilisation that changes without a reload", async () => (await utilisation()).join() !== before.join());
    await shot(page, "fleet");

    await tiles.first().click();
    await page.getByRole("heading", { name: `GPU 0 of ${hostName}` }).waitFor();
    // Live samples extend the history: a plot has points, and its canvas has ink on it.
    await eventually(
      "a utilisation plot with points",
      async () => Number(await page.locator("figure.chart").first().getAttribute("data-points")) >= 2,
    );
    // The line itself: pixels in the first series' colour (#4e79a7), which axes and grid never use.
    const linePixels = () =>
      page
        .locator("figure.chart canvas")
        .first()
        .evaluate((canvas) => {
          const c = canvas as unknown as CanvasLike;
          const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
          let drawn = 0;
          for (let i = 0; i < data.length; i += 4) {
            const near = Math.abs(data[i]! - 0x4e) + Math.abs(data[i + 1]! - 0x79) + Math.abs(data[i + 2]! - 0xa7);
            if (data[i + 3]! > 128 && near < 60) drawn++;
          }
          return drawn;
        });
    await eventually("the utilisation line drawn on the canvas", async () => (await linePixels()) >= 3);
    await shot(page, "gpu");

    await page.getByRole("link", { name: hostName }).first().click();
    await page.getByRole("heading", { name: `Host ${hostName}` }).waitFor();
    await eventually("the host's plots", async () => Number(await page.locator("figure.chart").first().getAttribute("data-points")) >= 2);
    await shot(page, "host");
    await context.close();
  });

  it("cordons and uncordons a host after a confirmation", async () => {
    const { context, page } = await open(ADMIN_TOKEN);
    const row = page.getByRole("row", { name: new RegExp(hostName) });
    await row.getByRole("button", { name: "Cordon" }).click();
    const dialog = page.getByRole("dialog", { name: "Cordon" });
    await dialog.getByRole("button", { name: "Cancel" }).click();
    assert.equal((await server.client(HostService).listHosts({})).hosts[0]!.schedulable, true, "Cancel changes nothing");
    await row.getByRole("button", { name: "Cordon" }).click();
    await dialog.getByRole("button", { name: "Cordon" }).click();
    await row.getByRole("cell", { name: "cordoned", exact: true }).waitFor();
    assert.equal((await server.client(HostService).listHosts({})).hosts[0]!.schedulable, false);
    await row.getByRole("button", { name: "Uncordon" }).click();
    await page.getByRole("dialog", { name: "Uncordon" }).getByRole("button", { name: "Uncordon" }).click();
    await row.getByRole("cell", { name: "open", exact: true }).waitFor();
    await context.close();
  });

  it("lets a member create an environment from the form: RUNNING, its port link answers, its log shows; stop and delete", async () => {
    const { context, page } = await open(tokens.member);
    assert.equal(await page.getByRole("link", { name: "Fleet" }).count(), 0, "no fleet page for a workspace token");
    await page.getByRole("meter", { name: /^GPUs: 0 of 4/ }).waitFor();
    const port = await freePort();
    await page.getByLabel("Name", { exact: true }).fill("notebook");
    await page.getByLabel("Image", { exact: true }).fill("python:3.12");
    await page.getByLabel(/^Command/).fill(`echo hello-from-the-console; exec python3 -m http.server ${port} --bind 127.0.0.1`);
    // The count typed first stays when the model is picked after it.
    await page.getByLabel("GPUs", { exact: true }).fill("2");
    await page.getByLabel("GPU model").selectOption({ index: 1 });
    assert.equal(await page.getByLabel("GPUs", { exact: true }).inputValue(), "2");
    await page.getByLabel(/^Ports/).fill(`web:${port}/http`);
    await page.getByRole("button", { name: "Create" }).click();

    await page.getByRole("heading", { name: "Environment notebook" }).waitFor();
    await page.locator('[data-status="RUNNING"]').first().waitFor();
    const link = page.getByRole("link", { name: /^http:\/\/127\.0\.0\.1:\d+\/$/ });
    const url = await link.getAttribute("href");
    const answer = await eventually("the port link answers", async () => {
      const res = await fetch(url!).catch(() => undefined);
      return res?.status === 200 && res;
    });
    assert.match(await answer.text(), /Directory listing/);
    await page
      .locator("pre.log")
      .getByText(/hello-from-the-console/)
      .waitFor();
    await eventually("the request in the log", async () => /GET \/ HTTP/.test((await page.locator("pre.log").textContent()) ?? ""));
    await shot(page, "environment");

    await page.getByRole("link", { name: "Environments" }).click();
    await page.getByRole("meter", { name: /^GPUs: 2 of 4/ }).waitFor();
    await shot(page, "environments");

    const row = page.getByRole("row", { name: /notebook/ });
    await row.getByRole("button", { name: "Stop" }).click();
    await row.locator('[data-status="STOPPED"]').waitFor();
    await page.getByRole("meter", { name: /^GPUs: 0 of 4/ }).waitFor();
    await row.getByRole("button", { name: "Delete" }).click();
    await page.getByRole("dialog", { name: "Delete" }).getByRole("button", { name: "Delete" }).click();
    await row.waitFor({ state: "detached" });
    await eventually(
      "the environment deleted",
      async () => (await server.client(EnvironmentService).listEnvironments({})).environments.length === 0,
    );
    await context.close();
  });

  it("shows a server refusal from the form as the server's message", async () => {
    const { context, page } = await open(tokens.member);
    await page.getByLabel("Name", { exact: true }).fill("too-big");
    await page.getByLabel("Image", { exact: true }).fill("python:3.12");
    await page.getByLabel("GPUs", { exact: true }).evaluate((input) => input.removeAttribute("max"));
    await page.getByLabel("GPUs", { exact: true }).fill("8");
    await page.getByRole("button", { name: "Create" }).click();
    const alert = await page.getByRole("alert").first().textContent();
    assert.match(alert ?? "", /no host with 8 free healthy GPU\(s\).*\(resource_exhausted\)/);
    await context.close();
  });

  it("gives a viewer no buttons it cannot use", async () => {
    const envs = server.client(EnvironmentService, { token: tokens.member });
    const { environment } = await envs.createEnvironment({ workspaceId, name: "watched", image: "python:3.12", command: ["sleep", "600"] });
    const { context, page } = await open(tokens.viewer);
    await page.getByRole("link", { name: "watched" }).waitFor();
    await page.getByRole("meter", { name: /^GPUs:/ }).waitFor();
    const buttons = async () => (await page.getByRole("button").allTextContents()).filter((b) => b !== "Sign out");
    assert.deepEqual(await buttons(), []);
    assert.equal(await page.getByRole("heading", { name: "New environment" }).count(), 0);
    assert.equal(await page.getByRole("link", { name: "Audit" }).count(), 0);
    await page.getByRole("link", { name: "watched" }).click();
    await page.getByRole("heading", { name: "Environment watched" }).waitFor();
    assert.deepEqual(await buttons(), ["Pause"], "only the log's own pause");
    await context.close();
    await envs.deleteEnvironment({ id: environment!.id });
  });

  it("lists the audit trail for an admin, filtered by target", async () => {
    const { context, page } = await open(ADMIN_TOKEN);
    await page.getByRole("link", { name: "Audit" }).click();
    await page
      .getByRole("cell", { name: /EnvironmentService\/DeleteEnvironment/ })
      .first()
      .waitFor();
    await shot(page, "audit");
    const target = await page
      .getByRole("row", { name: /DeleteEnvironment/ })
      .first()
      .locator("td")
      .nth(3)
      .textContent();
    await page.getByLabel("Target id").fill(target!);
    await page.getByRole("button", { name: "Filter" }).click();
    await eventually("only that environment's events", async () => {
      const calls = await page.locator("tbody tr td:nth-child(3)").allTextContents();
      return calls.length > 0 && calls.every((c) => c.startsWith("EnvironmentService/")) && !calls.some((c) => c.includes("CordonHost"));
    });
    await context.close();
  });
});
