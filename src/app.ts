import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Authenticator } from "./auth/authenticator.js";
import type { Config } from "./config.js";
import { GpuAllocator } from "./gpu/gpu-allocator.js";
import { GpuInventory } from "./gpu/gpu-inventory.js";
import { AgentSessions } from "./host/agent-sessions.js";
import { HostLiveness } from "./host/host-liveness.js";
import { HostRegistry } from "./host/host-registry.js";
import { HeartbeatIngest } from "./telemetry/heartbeat-ingest.js";
import { RedisSampleRelay } from "./telemetry/redis-sample-relay.js";
import { RedisBus } from "./platform/redis-bus.js";
import { MemoryTokenBuckets, RedisTokenBuckets } from "./platform/token-buckets.js";
import type { AgentCommandInput } from "./host/agent-sessions.js";
import { TelemetryHistory } from "./telemetry/telemetry-history.js";
import { Redis } from "ioredis";
import { systemClock, type Clock } from "./platform/clock.js";
import { openDatabase, type MikroORM } from "./platform/database.js";
import { EmbeddedPostgres } from "./platform/embedded-postgres.js";
import { createLogger, type Logger } from "./platform/logger.js";
import { Feed } from "./platform/feed.js";
import { UnavailableError } from "./errors.js";
import { Metrics } from "./platform/metrics.js";
import { GpuHandler } from "./rpc/gpu-handler.js";
import { HealthStatus } from "./rpc/health.js";
import { HostHandler } from "./rpc/host-handler.js";
import { audit, authenticate, authorizeCall, observe } from "./rpc/interceptors.js";
import { rateLimit } from "./rpc/rate-limit.js";
import { WorkspaceHandler } from "./rpc/workspace-handler.js";
import { AuditTrail } from "./audit/audit-trail.js";
import { WorkspaceTokens } from "./auth/workspace-tokens.js";
import { QuotaLedger } from "./workspace/quota-ledger.js";
import { WorkspaceRegistry } from "./workspace/workspace-registry.js";
import { EnvironmentManager } from "./environment/environment-manager.js";
import { EnvironmentLogs } from "./environment/environment-logs.js";
import { EnvironmentReconciler } from "./environment/environment-reconciler.js";
import { AgentRuntime } from "./runtime/agent-runtime.js";
import { LeaderLock } from "./platform/leader-lock.js";
import { EnvironmentHandler } from "./rpc/environment-handler.js";
import { IdleStopper } from "./environment/idle-stopper.js";
import { WorkloadActivity } from "./environment/workload-activity.js";
import path from "node:path";
import { LocalObjectStore } from "./storage/local-object-store.js";
import { S3ObjectStore } from "./storage/s3-object-store.js";
import { WorkspaceFiles } from "./storage/workspace-files.js";
import { KubeConfig } from "@kubernetes/client-node";
import { KubernetesRuntime } from "./runtime/kubernetes-runtime.js";
import { SERVICE_NAMES, routes } from "./rpc/routes.js";
import { RpcServer } from "./rpc/server.js";
import { LatestSamples } from "./telemetry/latest-samples.js";

export interface AppOptions {
  /** @default the system clock */
  clock?: Clock;
  /** @default JSON lines on stdout at config.logLevel */
  logger?: Logger;
}

export interface App {
  orm: MikroORM;
  logger: Logger;
  /** Set on the first start without a configured admin token: the token to show once. */
  generatedAdminToken?: string;
  /** Starts serving; resolves with the port actually bound. */
  listen(): Promise<number>;
  /**
   * One round of background work: writes buffered heartbeats, then expires host leases. Runs every
   * second on its own; tests call it directly with a manual clock instead of sleeping.
   */
  maintain(): Promise<void>;
  /** Graceful stop: drains calls, closes the database and the embedded PostgreSQL. */
  close(): Promise<void>;
}

const DATABASE_PROBE_MS = 5000;
const MAINTENANCE_MS = 1000;
const HISTORY_CLEANUP_MS = 3_600_000;
const RECONCILER_LOCK_KEY = 7_315_482_903;
/** How long DeleteWorkspace with force waits for its environments to be gone. */
const FORCE_DELETE_WAIT_MS = 120_000;

function loadTls(certFile: string, keyFile: string): { cert: Buffer; key: Buffer } {
  const pair = { cert: readFileSync(certFile), key: readFileSync(keyFile) };
  try {
    createSecureContext(pair);
  } catch (err) {
    throw new Error(`TLS_CERT/TLS_KEY: not a usable PEM certificate and key (${err instanceof Error ? err.message : String(err)})`);
  }
  return pair;
}

/** A kubeconfig file, or the pod's service account when running in the cluster. */
function kubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else kc.loadFromCluster();
  return kc;
}

/** The composition root: every long-lived object is made here. */
export async function createApp(config: Config, options: AppOptions = {}): Promise<App> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const clock = options.clock ?? systemClock;

  // The certificate is read (and parsed) before anything starts, so a bad one leaves nothing running.
  const tls = config.tls && loadTls(config.tls.certFile, config.tls.keyFile);
  const embedded = config.databaseUrl ? undefined : await EmbeddedPostgres.start(config.dataDir, config.embeddedPostgresPort, logger);
  let orm: MikroORM | undefined;
  let authenticator: Authenticator;
  let generatedAdminToken: string | undefined;
  try {
    orm = await openDatabase(config.databaseUrl ?? embedded!.url, config.databasePoolSize);
    authenticator = new Authenticator(orm, clock, config.adminToken);
    generatedAdminToken = await authenticator.ensureAdminToken();
  } catch (err) {
    await orm?.close();
    await embedded?.stop();
    throw err;
  }

  const samples = new LatestSamples();
  const hosts = new HostRegistry(orm, clock, samples, config.hostGraceSeconds * 1000, (id) => agents.forgetHost(id));
  const history = new TelemetryHistory(orm, clock, config.telemetryResolutionSeconds * 1000, config.telemetryRetentionHours * 3_600_000);
  const announce = (ids: string[]) => {
    hosts.announce(ids).catch((err: unknown) => logger.error({ err }, "publishing host changes failed"));
  };
  const redis = config.redisUrl ? new Redis(config.redisUrl, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1 }) : undefined;
  redis?.on("error", (err: Error) => logger.warn({ error: err.message }, "redis"));
  const relay = redis && new RedisSampleRelay(redis, samples, config.redisKeyPrefix, logger);
  if (redis && relay) {
    // Without Redis this replica still works; sharing resumes when Redis answers again.
    await redis.connect().catch((err: unknown) => logger.warn({ error: String(err) }, "Redis unreachable at start; continuing without it"));
    await relay.start().catch((err: unknown) => logger.warn({ error: String(err) }, "could not load shared samples from Redis"));
  }
  const ingest = new HeartbeatIngest(orm, clock, samples, history, { maxTemperatureCelsius: config.gpuMaxTemperatureCelsius }, new Feed(), announce, relay);
  if (relay) relay.onRemoteSample = (hostId, sample) => ingest.live.publish({ hostId, sample });
  const agents = new AgentSessions(orm, clock, ingest, config.heartbeatIntervalSeconds * 1000, config.hostGraceSeconds * 1000, announce);
  const liveness = new HostLiveness(orm, clock, config.hostGraceSeconds * 1000);
  const inventory = new GpuInventory(orm, clock, samples, (hostId, uuid) => ingest.readmitted(hostId, uuid));
  const allocator = new GpuAllocator(orm, clock);
  const auditTrail = new AuditTrail(orm, clock, config.auditRetentionDays * 86_400_000);
  const quotas = new QuotaLedger(orm, clock);
  const environments = new EnvironmentManager(orm, clock, quotas, config.hostPortRange, () => reconciler.kick());
  const store = config.s3 ? new S3ObjectStore(config.s3) : new LocalObjectStore(path.join(config.dataDir, "objects"));
  if (store instanceof S3ObjectStore) {
    await store.ensureBucket().catch((err: unknown) => logger.warn({ error: err instanceof Error ? err.message : String(err) }, "S3 bucket check failed; file calls will fail until it answers"));
  }
  const environmentLogs = new EnvironmentLogs(orm, store);
  const files = new WorkspaceFiles(orm, clock, store, quotas, logger);
  const leader = new LeaderLock(config.databaseUrl ?? embedded!.url, RECONCILER_LOCK_KEY, logger);
  const kubernetes: KubernetesRuntime | undefined = config.kubernetes && new KubernetesRuntime(
    kubeConfig(config.kubernetes.kubeconfig),
    config.kubernetes,
    {
      status: (hostId, report): Promise<void> => reconciler.observe(hostId, report),
      logs: async (hostId, environmentId, lines) => void (await environmentLogs.append(hostId, environmentId, lines)),
    },
    logger,
  );
  const reconciler: EnvironmentReconciler = new EnvironmentReconciler(
    orm,
    clock,
    { AGENT: new AgentRuntime(agents), ...(kubernetes ? { KUBERNETES: kubernetes } : {}) },
    environments,
    logger,
    {
      startTimeoutMs: config.environmentStartTimeoutSeconds * 1000,
      lostHostTimeoutMs: config.environmentLostHostSeconds * 1000,
      beforeForget: (environmentId, workspaceId) => environmentLogs.archive(environmentId, workspaceId),
    },
    () => leader.check(),
  );
  // Several replicas: environment changes reach every replica's watchers, and a command for an agent
  // goes to the replica that holds its stream. Without Redis, this replica is all there is.
  const bus = redis && new RedisBus(redis, config.redisKeyPrefix, logger);
  if (bus) {
    bus.on("environment", (p) => {
      const { type, id, deleted } = p as { type: "ADDED" | "MODIFIED" | "DELETED"; id: string; deleted?: { workspaceId: string; name: string } };
      environments.remoteChange(type, id, deleted);
    });
    bus.on("agent-command", (p) => {
      const { hostId, command } = p as { hostId: string; command: AgentCommandInput };
      agents.deliver(hostId, command);
    });
    await bus.start().catch((err: unknown) => logger.warn({ error: String(err) }, "Redis bus unavailable at start; replicas will not hear each other until it answers"));
    environments.forward = (type, view) =>
      bus.publish("environment", { type, id: view.environment.id, deleted: type === "DELETED" ? { workspaceId: view.environment.workspace.id, name: view.environment.name } : undefined });
    agents.route = (hostId, command) => bus.publish("agent-command", { hostId, command });
    bus.on("host", (p) => {
      const { type, id, deleted } = p as { type: "ADDED" | "MODIFIED" | "DELETED"; id: string; deleted?: { name: string; address: string } };
      hosts.remoteChange(type, id, deleted);
    });
    // Changes made elsewhere while Redis was away never reached this replica's watchers, and this
    // replica's changes never reached the others' (Redis may have been lost to it alone): all start over.
    const startOver = () => {
      const gap = new UnavailableError("replicas lost contact with each other for a while and watchers may have missed changes; watch again");
      hosts.changes.interrupt(gap);
      environments.changes.interrupt(gap);
    };
    bus.on("gap", startOver);
    bus.onResume = () => {
      startOver();
      bus.publish("gap", {});
    };
    bus.on("agent-session", (p) => {
      const { hostId, sessionId, epoch } = p as { hostId: string; sessionId: string; epoch: string };
      agents.openedElsewhere(hostId, sessionId, BigInt(epoch));
    });
    agents.opened = (hostId, sessionId, epoch) => bus.publish("agent-session", { hostId, sessionId, epoch: String(epoch) });
    hosts.forward = (type, id, deleted) => bus.publish("host", { type, id, deleted });
  }
  const workspaces = new WorkspaceRegistry(orm, clock, {
    async empty(id) {
      await environments.deleteAll(id, FORCE_DELETE_WAIT_MS);
      await files.deleteAll(id);
    },
    purge: (id) => environmentLogs.purgeArchives(id),
  });
  const activity = new WorkloadActivity(clock, config.idleGpuUtilizationPercent);
  const idle = new IdleStopper(orm, clock, activity, environments, config.idleGpuUtilizationPercent, logger);
  const lifetime = new AbortController();
  kubernetes?.start();
  void (async () => {
    const samples = ingest.live.subscribe({ accept: () => true, capacity: 10_000, overflow: "drop-oldest" }, lifetime.signal);
    for await (const { item } of samples) activity.gpuSample(item.sample.gpuId, item.sample.metrics.gpuUtilizationPercent, item.sample.time);
  })();
  const workspaceTokens = new WorkspaceTokens(orm, clock);

  const health = new HealthStatus();
  for (const name of SERVICE_NAMES) health.set(name, "SERVING");
  const metrics = new Metrics();
  metrics.gaugeFromSource("remotegpu_hosts", "Hosts by status", "status", () => hosts.countByStatus());
  metrics.gaugeFromSource("remotegpu_gpus", "GPUs by status", "status", () => inventory.countByStatus());
  metrics.gaugeFromSource("remotegpu_agents_connected", "Agent streams open on this replica", "replica", async () => ({ self: agents.connected }));

  const handler = connectNodeAdapter({
    routes: routes(
      {
        hosts: new HostHandler(hosts, agents, clock, config.heartbeatIntervalSeconds * 1000, logger, {
          connected: (hostId, running) => reconciler.agentConnected(hostId, running),
          status: (hostId, report) => reconciler.observe(hostId, report),
          logs: async (hostId, environmentId, lines) => void (await environmentLogs.append(hostId, environmentId, lines)),
          traffic: (environmentId, time) => activity.portTraffic(environmentId, time),
        }),
        gpus: new GpuHandler(inventory, allocator, history, ingest.live, clock),
        workspaces: new WorkspaceHandler(workspaces, quotas, workspaceTokens, auditTrail, files),
        environments: new EnvironmentHandler(environments, environmentLogs),
      },
      health,
    ),
    interceptors: [observe(logger, metrics), authenticate(authenticator), rateLimit(config.rateLimitPerSecond, clock, redis ? new RedisTokenBuckets(redis, config.redisKeyPrefix, logger) : new MemoryTokenBuckets()), audit(auditTrail, logger), authorizeCall()],
    readMaxBytes: config.maxMessageBytes,
    fallback: (req, res) => {
      if (req.method === "GET" && req.url === "/metrics") {
        metrics.registry.metrics().then(
          (body) => {
            res.writeHead(200, { "content-type": metrics.registry.contentType });
            res.end(body);
          },
          (err) => {
            logger.error({ err }, "metrics collection failed");
            res.writeHead(503);
            res.end();
          },
        );
        return;
      }
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
    },
  });
  const server = new RpcServer(handler, tls, config.maxStreamsPerConnection, config.keepaliveSeconds * 1000);

  // Readiness follows the database: probes take the replica out of rotation while it is unreachable.
  const probe = setInterval(() => {
    orm.em
      .getConnection()
      .execute("select 1")
      .then(
        () => true,
        () => false,
      )
      .then((up) => {
        for (const name of ["", ...SERVICE_NAMES]) health.set(name, up ? "SERVING" : "NOT_SERVING");
      });
  }, DATABASE_PROBE_MS);
  probe.unref();

  let historyExpiredAt = 0;
  const maintain = async () => {
    await ingest.flush();
    // The leader alone expires leases; the other replicas' watchers hear of it through Redis.
    const expired = (await leader.check()) ? await liveness.expireLeases() : [];
    if (expired.length > 0) {
      logger.warn({ hosts: expired }, "hosts went OFFLINE: lease expired");
      announce(expired);
    }
    reconciler.kick();
    await reconciler.idle();
    if (await leader.check()) await idle.check();
    if (clock.now().getTime() - historyExpiredAt >= HISTORY_CLEANUP_MS) {
      historyExpiredAt = clock.now().getTime();
      const removed = await history.expire();
      if (removed > 0) logger.info({ rows: removed }, "expired old telemetry history");
      const events = await auditTrail.expire();
      if (events > 0) logger.info({ rows: events }, "expired old audit events");
    }
  };
  let maintaining: Promise<void> | undefined;
  const loop = setInterval(() => {
    if (maintaining) return; // the previous round is still writing: never two at once
    maintaining = maintain()
      .catch((err: unknown) => logger.error({ err }, "background maintenance failed"))
      .finally(() => (maintaining = undefined));
  }, MAINTENANCE_MS);
  loop.unref();

  return {
    orm,
    logger,
    generatedAdminToken,
    listen: () => server.listen(config.port, config.bindAddress),
    maintain,
    async close() {
      clearInterval(probe);
      clearInterval(loop);
      lifetime.abort();
      kubernetes?.close();
      health.shutdown();
      agents.shutdown();
      await server.close(config.shutdownTimeoutSeconds * 1000);
      await maintaining;
      await reconciler.idle();
      await leader.close();
      await ingest.flush(true).catch((err: unknown) => logger.error({ err }, "final heartbeat flush failed"));
      await relay?.close();
      bus?.close();
      if (store instanceof S3ObjectStore) store.close();
      redis?.disconnect();
      await orm.close();
      await embedded?.stop();
    },
  };
}
