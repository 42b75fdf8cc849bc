import { existsSync } from "node:fs";
import { defaultConsoleDir } from "./console/console-files.js";
import path from "node:path";
import { LOG_FORMATS, type LogFormat } from "./platform/log-format.js";
import type { KubernetesOptions } from "./runtime/kubernetes-manifests.js";
import type { GpuSeriesMode } from "./telemetry/fleet-metrics.js";
import { InvalidArgumentError } from "./errors.js";
import { isDnsSubdomain, parseLabelSelector } from "./validation.js";

/** Everything the server reads from its environment. Every field has a documented default. */
export interface Config {
  /** `PORT`: one port for gRPC, gRPC-Web and Connect. @default 8080 */
  port: number;
  /** `BIND_ADDRESS`: interface to listen on. @default "0.0.0.0" */
  bindAddress: string;
  /** `DATABASE_URL`: PostgreSQL URL; unset starts an embedded PostgreSQL in DATA_DIR. */
  databaseUrl?: string;
  /** `REDIS_URL`: optional; needed only to run several replicas. */
  redisUrl?: string;
  /** `REDIS_KEY_PREFIX`: prefix of every Redis key and channel, to share one Redis. @default "remotegpu:" */
  redisKeyPrefix: string;
  /** `LOG_LEVEL`: pino level. @default "info" */
  logLevel: string;
  /**
   * `LOG_FORMAT`: "json", one JSON object per line on stdout, for log collectors; or "pretty", one
   * readable line per record (time, level, message, key=value), for a person at a terminal. @default "json"
   */
  logFormat: LogFormat;
  /** `REMOTEGPU_ADMIN_TOKEN`: cluster admin token; unset generates one at first start. */
  adminToken?: string;
  /** `DATA_DIR`: where local state lives (embedded PostgreSQL, files). @default "./.data" */
  dataDir: string;
  /** `TLS_CERT` and `TLS_KEY`: PEM files; both or neither. */
  tls?: { certFile: string; keyFile: string };
  /** `EMBEDDED_POSTGRES_PORT`: port of the embedded PostgreSQL. @default 54329 */
  embeddedPostgresPort: number;
  /** `HEARTBEAT_INTERVAL_SECONDS`: how often agents report. @default 10 */
  heartbeatIntervalSeconds: number;
  /** `HOST_GRACE_SECONDS`: a host without heartbeat for this long is OFFLINE. @default 40 */
  hostGraceSeconds: number;
  /** `GPU_MAX_TEMPERATURE_CELSIUS`: a GPU reporting more is marked UNHEALTHY. @default 90 */
  gpuMaxTemperatureCelsius: number;
  /** `TELEMETRY_RESOLUTION_SECONDS`: width of one stored telemetry bucket. @default 10 */
  telemetryResolutionSeconds: number;
  /** `TELEMETRY_RETENTION_HOURS`: how long telemetry history is kept. @default 168 (7 days) */
  telemetryRetentionHours: number;
  /** `TELEMETRY_ROLLUP_AFTER_HOURS`: history older than this is kept in rollup buckets. @default 24 */
  telemetryRollupAfterHours: number;
  /** `TELEMETRY_ROLLUP_SECONDS`: width of a rollup bucket; 0 keeps all history at the resolution. @default 300 */
  telemetryRollupSeconds: number;
  /** `MAX_MESSAGE_BYTES`: largest request message accepted (RESOURCE_EXHAUSTED beyond). @default 8388608 (8 MiB) */
  maxMessageBytes: number;
  /**
   * `HTTP2_MAX_CONCURRENT_STREAMS` (formerly `MAX_STREAMS_PER_CONNECTION`): streams one HTTP/2
   * connection may have open at once; the client queues the rest. @default 100
   */
  maxStreamsPerConnection: number;
  /**
   * `MAX_ACTIVE_CALLS_PER_CONNECTION`: calls of one caller (its authorization header) on one
   * connection being worked on at once (until each has its answer ready); its other calls wait
   * their turn, and other callers' calls do not wait behind them. @default 2
   */
  maxActiveCallsPerConnection: number;
  /** HTTP/2 flow control and memory; see the README's "HTTP/2 settings". */
  http2: Http2Settings;
  /** `CORS_ALLOWED_ORIGINS`: browser origins (`https://app.example.com`) allowed to call, comma-separated. @default none */
  corsAllowedOrigins: string[];
  /** `KEEPALIVE_SECONDS`: HTTP/2 PING period; a connection that leaves one unanswered that long is closed (0: off). @default 30 */
  keepaliveSeconds: number;
  /**
   * `METRICS_GPU_SERIES`: where the per-GPU series go: "inline" (GET /metrics and /metrics/gpus),
   * "separate" (only /metrics/gpus, for a scrape interval of their own) or "off". @default "inline"
   */
  metricsGpuSeries: GpuSeriesMode;
  /**
   * `OTEL_EXPORTER_OTLP_ENDPOINT`: an OTLP/HTTP collector (spans go to its /v1/traces); unset, nothing
   * is traced. `OTEL_SERVICE_NAME` names the service in its spans. @default unset, "remotegpu"
   */
  tracing?: { endpoint: string; serviceName: string };
  /**
   * `METRICS_TOKEN`: when set, GET /metrics and /metrics/gpus want `Authorization: Bearer <it>`
   * (they name workspaces, environments and hosts). @default unset: open to whoever reaches the port
   */
  metricsToken?: string;
  /** `CONSOLE_DIR`: the web console's built files, served under /ui/. @default dist/console of this installation */
  consoleDir: string;
  /** `SSH_MAX_CONNECTIONS_PER_ENVIRONMENT`: SSH connections open at once to one environment, per replica. @default 32 */
  sshMaxPerEnvironment: number;
  /** `SSH_MAX_CONNECTIONS_PER_TOKEN`: SSH connections open at once with one token, per replica. @default 64 */
  sshMaxPerToken: number;
  /** `METRICS_REFRESH_SECONDS`: how often the fleet series' snapshot of rows (names, holders, quotas) is read. @default 10 */
  metricsRefreshSeconds: number;
  /** `RATE_LIMIT_PER_SECOND`: calls per second one token may start, with bursts of twice that; 0 for none. @default 100 */
  rateLimitPerSecond: number;
  /** `AUDIT_RETENTION_DAYS`: how long audit events are kept. @default 365 */
  auditRetentionDays: number;
  /** `HOST_PORT_RANGE`: host ports given to environment ports, "first-last". @default 30000-32767 */
  hostPortRange: { first: number; last: number };
  /** `ENVIRONMENT_START_TIMEOUT_SECONDS`: how long an environment may take to start before it FAILS. @default 600 */
  environmentStartTimeoutSeconds: number;
  /**
   * `ENVIRONMENT_LOST_HOST_SECONDS`: how long a host may stay OFFLINE before its environments FAIL
   * and their GPUs are released; shorter outages only mark them. @default 900
   */
  environmentLostHostSeconds: number;
  /** `IDLE_GPU_UTILIZATION_PERCENT`: GPU use below this counts as idle for idle auto-stop. @default 5 */
  idleGpuUtilizationPercent: number;
  /**
   * Object storage for workspace files and archived logs: S3 when `S3_BUCKET` is set (`S3_ENDPOINT`,
   * `S3_REGION` default us-east-1, `S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY`, `S3_FORCE_PATH_STYLE`
   * default true with an endpoint), else files under `DATA_DIR/objects`.
   */
  /**
   * The Kubernetes runtime, for hosts registered with runtime KUBERNETES: on with `RUNTIME=kubernetes`
   * (in-cluster credentials) or a `KUBECONFIG` file. Its `K8S_*` settings are in the README.
   */
  kubernetes?: KubernetesSettings;
  s3?: { endpoint?: string; bucket: string; region: string; accessKeyId?: string; secretAccessKey?: string; forcePathStyle: boolean };
  /** `SHUTDOWN_TIMEOUT_SECONDS`: how long SIGTERM waits for open calls and streams. @default 10 */
  shutdownTimeoutSeconds: number;
  /** `DATABASE_POOL_SIZE`: most PostgreSQL connections per replica. @default 20 */
  databasePoolSize: number;
}

export interface Http2Settings {
  /** `HTTP2_STREAM_WINDOW_BYTES`: what a client may send on one stream before the server reads it. @default 1048576 (1 MiB) */
  streamWindowBytes: number;
  /** `HTTP2_CONNECTION_WINDOW_BYTES`: the same for all streams of a connection together. @default 16777216 (16 MiB) */
  connectionWindowBytes: number;
  /** `HTTP2_MAX_SESSION_MEMORY_MB`: memory one connection may hold in the server before it is refused more. @default 64 */
  maxSessionMemoryMb: number;
  /** `HTTP2_MAX_HEADER_LIST_BYTES`: largest header block of a request. @default 65536 */
  maxHeaderListBytes: number;
}

export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
  }
}

const GPU_SERIES_MODES = ["inline", "separate", "off"] as const;
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Reads and validates the configuration; throws ConfigError listing every bad variable, one per line. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const problems: string[] = [];
  const malformed = new Set<string>();
  const value = (name: string) => {
    const v = env[name];
    return v === undefined || v.trim() === "" ? undefined : v.trim();
  };
  const int = (name: string, fallback: number, min: number, max: number) => {
    const raw = value(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!/^\d+$/.test(raw) || n < min || n > max) {
      problems.push(`${name}=${JSON.stringify(raw)}: must be a whole number from ${min} to ${max}`);
      malformed.add(name);
      return fallback;
    }
    return n;
  };
  const url = (name: string, protocols: string[]) => {
    const raw = value(name);
    if (raw === undefined) return undefined;
    try {
      const parsed = new URL(raw);
      if (!protocols.includes(parsed.protocol)) throw new Error();
    } catch {
      problems.push(`${name}: must be a URL starting with ${protocols.map((p) => `${p}//`).join(" or ")}`);
    }
    return raw;
  };

  const oneOf = <T extends string>(name: string, allowed: readonly T[], fallback: T): T => {
    const given = value(name) ?? fallback;
    if ((allowed as readonly string[]).includes(given)) return given as T;
    problems.push(`${name}=${JSON.stringify(given)}: must be one of ${allowed.join(", ")}`);
    return fallback;
  };

  const secret = (name: string) => {
    const given = value(name);
    if (given !== undefined && given.length < 16) problems.push(`${name}: must be at least 16 characters`);
    return given;
  };

  const logLevel = value("LOG_LEVEL") ?? "info";
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.push(`LOG_LEVEL=${JSON.stringify(logLevel)}: must be one of ${LOG_LEVELS.join(", ")}`);
  }

  const adminToken = value("REMOTEGPU_ADMIN_TOKEN");
  if (adminToken !== undefined && adminToken.length < 16) {
    problems.push("REMOTEGPU_ADMIN_TOKEN: must be at least 16 characters (it guards the whole cluster)");
  }

  const certFile = value("TLS_CERT");
  const keyFile = value("TLS_KEY");
  let tls: Config["tls"];
  if ((certFile === undefined) !== (keyFile === undefined)) {
    problems.push(`${certFile ? "TLS_KEY" : "TLS_CERT"}: must be set together with ${certFile ? "TLS_CERT" : "TLS_KEY"}`);
  } else if (certFile && keyFile) {
    for (const [name, file] of [
      ["TLS_CERT", certFile],
      ["TLS_KEY", keyFile],
    ]) {
      if (!existsSync(file)) problems.push(`${name}=${JSON.stringify(file)}: file not found`);
    }
    tls = { certFile, keyFile };
  }

  const config: Config = {
    port: int("PORT", 8080, 0, 65535),
    bindAddress: value("BIND_ADDRESS") ?? "0.0.0.0",
    databaseUrl: url("DATABASE_URL", ["postgres:", "postgresql:"]),
    redisUrl: url("REDIS_URL", ["redis:", "rediss:"]),
    redisKeyPrefix: value("REDIS_KEY_PREFIX") ?? "remotegpu:",
    logLevel,
    logFormat: oneOf("LOG_FORMAT", LOG_FORMATS, "json"),
    adminToken,
    dataDir: path.resolve(value("DATA_DIR") ?? "./.data"),
    tls,
    embeddedPostgresPort: int("EMBEDDED_POSTGRES_PORT", 54329, 1, 65535),
    heartbeatIntervalSeconds: int("HEARTBEAT_INTERVAL_SECONDS", 10, 1, 3600),
    hostGraceSeconds: int("HOST_GRACE_SECONDS", 40, 1, 86400),
    gpuMaxTemperatureCelsius: int("GPU_MAX_TEMPERATURE_CELSIUS", 90, 30, 150),
    telemetryResolutionSeconds: int("TELEMETRY_RESOLUTION_SECONDS", 10, 1, 3600),
    telemetryRetentionHours: int("TELEMETRY_RETENTION_HOURS", 168, 1, 24 * 3650),
    telemetryRollupAfterHours: int("TELEMETRY_ROLLUP_AFTER_HOURS", 24, 1, 24 * 3650),
    telemetryRollupSeconds: 0, // below: its default depends on the resolution
    auditRetentionDays: int("AUDIT_RETENTION_DAYS", 365, 1, 36500),
    maxMessageBytes: int("MAX_MESSAGE_BYTES", 8 * 1024 * 1024, 64 * 1024, 256 * 1024 * 1024),
    maxStreamsPerConnection: maxStreams(value, int, problems),
    maxActiveCallsPerConnection: int("MAX_ACTIVE_CALLS_PER_CONNECTION", 2, 1, 10_000),
    http2: http2Settings(int, problems),
    corsAllowedOrigins: origins(value("CORS_ALLOWED_ORIGINS"), problems),
    keepaliveSeconds: int("KEEPALIVE_SECONDS", 30, 0, 3600),
    rateLimitPerSecond: int("RATE_LIMIT_PER_SECOND", 100, 0, 1_000_000),
    metricsGpuSeries: oneOf("METRICS_GPU_SERIES", GPU_SERIES_MODES, "inline"),
    metricsRefreshSeconds: int("METRICS_REFRESH_SECONDS", 10, 1, 3600),
    metricsToken: secret("METRICS_TOKEN"),
    consoleDir: value("CONSOLE_DIR") ?? defaultConsoleDir(),
    sshMaxPerEnvironment: int("SSH_MAX_CONNECTIONS_PER_ENVIRONMENT", 32, 1, 10_000),
    sshMaxPerToken: int("SSH_MAX_CONNECTIONS_PER_TOKEN", 64, 1, 100_000),
    tracing: tracingConfig(url("OTEL_EXPORTER_OTLP_ENDPOINT", ["http:", "https:"]), value("OTEL_SERVICE_NAME")),
    hostPortRange: portRange(value("HOST_PORT_RANGE") ?? "30000-32767", problems),
    environmentStartTimeoutSeconds: int("ENVIRONMENT_START_TIMEOUT_SECONDS", 600, 10, 86400),
    environmentLostHostSeconds: int("ENVIRONMENT_LOST_HOST_SECONDS", 900, 1, 30 * 86400),
    idleGpuUtilizationPercent: int("IDLE_GPU_UTILIZATION_PERCENT", 5, 0, 100),
    s3: s3Config(value, url("S3_ENDPOINT", ["http:", "https:"]), problems),
    kubernetes: kubernetesConfig(value, int, problems),
    shutdownTimeoutSeconds: int("SHUTDOWN_TIMEOUT_SECONDS", 10, 0, 600),
    databasePoolSize: int("DATABASE_POOL_SIZE", 20, 1, 500),
  };
  // Compared only when both were given well: a fallback value the user never set would mislead.
  const bothValid = !malformed.has("HOST_GRACE_SECONDS") && !malformed.has("HEARTBEAT_INTERVAL_SECONDS");
  if (bothValid && config.hostGraceSeconds <= config.heartbeatIntervalSeconds) {
    problems.push(
      `HOST_GRACE_SECONDS=${config.hostGraceSeconds}: must be longer than HEARTBEAT_INTERVAL_SECONDS=${config.heartbeatIntervalSeconds}`,
    );
  }
  // 5-minute rollup buckets by default, unless the resolution is that coarse already (or does not divide them).
  const resolution = config.telemetryResolutionSeconds;
  const rollup = int("TELEMETRY_ROLLUP_SECONDS", resolution < 300 && 300 % resolution === 0 ? 300 : 0, 0, 86400);
  config.telemetryRollupSeconds = rollup;
  const wellGiven = !malformed.has("TELEMETRY_ROLLUP_SECONDS") && !malformed.has("TELEMETRY_RESOLUTION_SECONDS");
  if (wellGiven && rollup !== 0 && (rollup <= resolution || rollup % resolution !== 0)) {
    problems.push(
      `TELEMETRY_ROLLUP_SECONDS=${rollup}: must be 0 (no rollup) or a multiple of TELEMETRY_RESOLUTION_SECONDS=${resolution} larger than it`,
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

function maxStreams(
  value: (name: string) => string | undefined,
  int: (name: string, fallback: number, min: number, max: number) => number,
  problems: string[],
): number {
  if (value("HTTP2_MAX_CONCURRENT_STREAMS") !== undefined && value("MAX_STREAMS_PER_CONNECTION") !== undefined)
    problems.push("MAX_STREAMS_PER_CONNECTION: the older name of HTTP2_MAX_CONCURRENT_STREAMS; set one of them");
  const name = value("HTTP2_MAX_CONCURRENT_STREAMS") === undefined ? "MAX_STREAMS_PER_CONNECTION" : "HTTP2_MAX_CONCURRENT_STREAMS";
  return int(name, 100, 1, 10_000);
}

function http2Settings(int: (name: string, fallback: number, min: number, max: number) => number, problems: string[]): Http2Settings {
  // HTTP/2 caps a flow-control window at 2^31-1 bytes.
  const settings = {
    streamWindowBytes: int("HTTP2_STREAM_WINDOW_BYTES", 1024 * 1024, 65_535, 2 ** 31 - 1),
    connectionWindowBytes: int("HTTP2_CONNECTION_WINDOW_BYTES", 16 * 1024 * 1024, 65_535, 2 ** 31 - 1),
    maxSessionMemoryMb: int("HTTP2_MAX_SESSION_MEMORY_MB", 64, 1, 65_536),
    maxHeaderListBytes: int("HTTP2_MAX_HEADER_LIST_BYTES", 64 * 1024, 4096, 16 * 1024 * 1024),
  };
  // What a client may send unread must fit in what the connection may hold, or a client that only
  // uses the window it was given would have its connection torn down.
  if (settings.connectionWindowBytes > settings.maxSessionMemoryMb * 1024 * 1024 * 0.75)
    problems.push(
      `HTTP2_CONNECTION_WINDOW_BYTES=${settings.connectionWindowBytes}: must be at most three quarters of HTTP2_MAX_SESSION_MEMORY_MB=${settings.maxSessionMemoryMb} (in bytes)`,
    );
  return settings;
}

/** `CORS_ALLOWED_ORIGINS`: exact origins, scheme and host (and port), no path and no wildcard. */
function origins(raw: string | undefined, problems: string[]): string[] {
  if (raw === undefined) return [];
  const list = raw
    .split(",")
    .map((o) => o.trim())
    .filter((o) => o !== "");
  for (const origin of list) {
    let valid = false;
    try {
      const url = new URL(origin);
      valid = (url.protocol === "http:" || url.protocol === "https:") && url.origin === origin;
    } catch {
      valid = false;
    }
    if (!valid)
      problems.push(
        `CORS_ALLOWED_ORIGINS: ${JSON.stringify(origin)} is not an origin (scheme://host[:port], no path, no trailing '/', no wildcard)`,
      );
  }
  return list;
}

function portRange(raw: string, problems: string[], name = "HOST_PORT_RANGE"): { first: number; last: number } {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(raw);
  const first = Number(m?.[1]);
  const last = Number(m?.[2]);
  if (!m || first < 1024 || last > 65535 || first > last) {
    problems.push(`${name}=${JSON.stringify(raw)}: must be "first-last" within 1024-65535`);
    return { first: 30000, last: 32767 };
  }
  return { first, last };
}

function s3Config(value: (name: string) => string | undefined, endpoint: string | undefined, problems: string[]): Config["s3"] {
  const bucket = value("S3_BUCKET");
  if (!bucket) {
    for (const name of ["S3_ENDPOINT", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"])
      if (value(name)) problems.push(`${name}: set S3_BUCKET too, or leave it out`);
    return undefined;
  }
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) problems.push(`S3_BUCKET=${JSON.stringify(bucket)}: not a valid bucket name`);
  const accessKeyId = value("S3_ACCESS_KEY_ID");
  const secretAccessKey = value("S3_SECRET_ACCESS_KEY");
  if (!accessKeyId !== !secretAccessKey)
    problems.push("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY: set both or neither (neither uses the AWS default chain)");
  const style = value("S3_FORCE_PATH_STYLE");
  if (style !== undefined && style !== "true" && style !== "false")
    problems.push(`S3_FORCE_PATH_STYLE=${JSON.stringify(style)}: must be true or false`);
  return {
    endpoint,
    bucket,
    region: value("S3_REGION") ?? "us-east-1",
    accessKeyId,
    secretAccessKey,
    forcePathStyle: style ? style === "true" : endpoint !== undefined,
  };
}

export interface KubernetesSettings extends KubernetesOptions {
  /** A kubeconfig file; undefined for the in-cluster service account. */
  kubeconfig?: string;
}

/** Every setting of the Kubernetes runtime. */
const K8S_SETTINGS = [
  "K8S_NAMESPACE_PREFIX",
  "K8S_STORAGE_CLASS",
  "K8S_VOLUME_ACCESS_MODE",
  "K8S_VOLUME_MOUNT_PATH",
  "K8S_GPU_MODE",
  "K8S_RUNTIME_CLASS",
  "K8S_INGRESS_BASE_DOMAIN",
  "K8S_INGRESS_CLASS",
  "K8S_INGRESS_TLS_SECRET",
  "K8S_INGRESS_CERT_ISSUER",
  "K8S_IMAGE_PULL_TIMEOUT_SECONDS",
  "K8S_NODE_SELECTOR",
  "K8S_NODE_PORT_RANGE",
];
const ACCESS_MODES = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
/** The ingress host label (at most 63 characters) and its dot come before the base domain. */
const MAX_BASE_DOMAIN = 253 - 64;

function kubernetesConfig(
  value: (name: string) => string | undefined,
  int: (name: string, fallback: number, min: number, max: number) => number,
  problems: string[],
): KubernetesSettings | undefined {
  const runtime = value("RUNTIME") ?? (value("KUBECONFIG") ? "kubernetes" : "agent");
  if (runtime !== "agent" && runtime !== "kubernetes") problems.push(`RUNTIME=${JSON.stringify(runtime)}: must be agent or kubernetes`);
  if (runtime !== "kubernetes") {
    // A K8S_* setting without the runtime would be silently ignored.
    if (runtime === "agent")
      for (const name of K8S_SETTINGS.filter((n) => value(n) !== undefined))
        problems.push(`${name}: set RUNTIME=kubernetes (or KUBECONFIG) too, or leave it out`);
    return undefined;
  }
  const kubeconfig = value("KUBECONFIG");
  if (kubeconfig && !existsSync(kubeconfig)) problems.push(`KUBECONFIG=${JSON.stringify(kubeconfig)}: file not found`);
  const gpuMode = value("K8S_GPU_MODE") ?? "visible-devices";
  if (gpuMode !== "device-plugin" && gpuMode !== "visible-devices")
    problems.push(`K8S_GPU_MODE=${JSON.stringify(gpuMode)}: must be visible-devices or device-plugin`);
  const prefix = value("K8S_NAMESPACE_PREFIX") ?? "rgpu-";
  if (!/^[a-z0-9]([a-z0-9-]{0,20})$/.test(prefix))
    problems.push(`K8S_NAMESPACE_PREFIX=${JSON.stringify(prefix)}: lowercase letters, digits and '-', at most 21 characters`);
  const accessMode = value("K8S_VOLUME_ACCESS_MODE") ?? "ReadWriteOnce";
  if (!ACCESS_MODES.includes(accessMode))
    problems.push(`K8S_VOLUME_ACCESS_MODE=${JSON.stringify(accessMode)}: must be one of ${ACCESS_MODES.join(", ")}`);
  const mountPath = value("K8S_VOLUME_MOUNT_PATH") ?? "/workspace";
  if (!path.posix.isAbsolute(mountPath) || mountPath.includes(":"))
    problems.push(`K8S_VOLUME_MOUNT_PATH=${JSON.stringify(mountPath)}: must be an absolute path without ':'`);
  /** Names of cluster objects (classes, secrets, issuers): DNS-1123 subdomains. */
  const objectName = (name: string, what: string) => {
    const raw = value(name);
    if (raw !== undefined && !isDnsSubdomain(raw))
      problems.push(`${name}=${JSON.stringify(raw)}: must be the name of ${what} (lowercase letters, digits, '-' and '.', at most 253)`);
    return raw;
  };
  const baseDomain = value("K8S_INGRESS_BASE_DOMAIN");
  if (baseDomain !== undefined && (!isDnsSubdomain(baseDomain, MAX_BASE_DOMAIN) || /^[0-9.]+$/.test(baseDomain)))
    problems.push(
      `K8S_INGRESS_BASE_DOMAIN=${JSON.stringify(baseDomain)}: must be a lowercase domain name (labels of a-z, 0-9 and '-'), at most ${MAX_BASE_DOMAIN} characters`,
    );
  const ingressTlsSecret = objectName("K8S_INGRESS_TLS_SECRET", "a Secret");
  const ingressCertIssuer = objectName("K8S_INGRESS_CERT_ISSUER", "a cert-manager ClusterIssuer");
  if (ingressTlsSecret && ingressCertIssuer)
    problems.push(
      "K8S_INGRESS_TLS_SECRET and K8S_INGRESS_CERT_ISSUER: set one (a shared certificate, or one per environment from cert-manager)",
    );
  for (const name of ["K8S_INGRESS_TLS_SECRET", "K8S_INGRESS_CERT_ISSUER", "K8S_INGRESS_CLASS"])
    if (value(name) && !baseDomain) problems.push(`${name}: set K8S_INGRESS_BASE_DOMAIN too, or leave it out`);
  let nodeSelector = value("K8S_NODE_SELECTOR");
  if (nodeSelector !== undefined) {
    try {
      nodeSelector = Object.entries(parseLabelSelector("K8S_NODE_SELECTOR", nodeSelector))
        .map(([k, v]) => `${k}=${v}`)
        .join(",");
    } catch (err) {
      if (!(err instanceof InvalidArgumentError)) throw err;
      const why = err.violations.map((v) => v.description).join("; ");
      problems.push(`K8S_NODE_SELECTOR=${JSON.stringify(nodeSelector)}: must be key=value labels joined by ',' (${why})`);
    }
  }
  return {
    kubeconfig,
    namespacePrefix: prefix,
    storageClass: objectName("K8S_STORAGE_CLASS", "a StorageClass"),
    accessMode,
    mountPath,
    gpuMode: gpuMode as KubernetesOptions["gpuMode"],
    runtimeClass: objectName("K8S_RUNTIME_CLASS", "a RuntimeClass") ?? "nvidia",
    ingressBaseDomain: baseDomain,
    ingressClass: objectName("K8S_INGRESS_CLASS", "an IngressClass"),
    ingressTlsSecret,
    ingressCertIssuer,
    imagePullTimeoutSeconds: int("K8S_IMAGE_PULL_TIMEOUT_SECONDS", 300, 1, 86400),
    nodeSelector,
    nodePortRange: portRange(value("K8S_NODE_PORT_RANGE") ?? "30000-32767", problems, "K8S_NODE_PORT_RANGE"),
  };
}

function tracingConfig(endpoint: string | undefined, serviceName: string | undefined): Config["tracing"] {
  return endpoint ? { endpoint, serviceName: serviceName || "remotegpu" } : undefined;
}
