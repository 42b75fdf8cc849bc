import path from "node:path";
import { AuditTrail } from "./audit/audit-trail.js";
import { Authenticator } from "./auth/authenticator.js";
import { WorkspaceTokens } from "./auth/workspace-tokens.js";
import type { Config } from "./config.js";
import { entities } from "./entities.js";
import { EnvironmentLogs } from "./environment/environment-logs.js";
import { EnvironmentManager, environmentTopics } from "./environment/environment-manager.js";
import { EnvironmentReconciler } from "./environment/environment-reconciler.js";
import { IdleStopper } from "./environment/idle-stopper.js";
import { WorkloadActivity } from "./environment/workload-activity.js";
import { GpuAllocator } from "./gpu/gpu-allocator.js";
import { GpuInventory } from "./gpu/gpu-inventory.js";
import { AgentSessions, agentTopics } from "./host/agent-sessions.js";
import { HostLiveness } from "./host/host-liveness.js";
import { HostRegistry, hostTopics } from "./host/host-registry.js";
import { NodeHosts } from "./host/node-hosts.js";
import { Maintenance } from "./maintenance.js";
import { systemClock, type Clock } from "./platform/clock.js";
import { LocalClusterEvents, type TopicsOf } from "./platform/cluster-events.js";
import { databaseAnswers, startDatabase, type Database, type MikroORM } from "./platform/database.js";
import { Feed } from "./platform/feed.js";
import { LeaderLock } from "./platform/leader-lock.js";
import { createLogger, type Logger } from "./platform/logger.js";
import { Metrics } from "./platform/metrics.js";
import { openRedis } from "./platform/redis.js";
import { RedisClusterEvents } from "./platform/redis-cluster-events.js";
import { loadTls } from "./platform/tls.js";
import { MemoryTokenBuckets, RedisTokenBuckets } from "./platform/token-buckets.js";
import { EnvironmentHandler } from "./rpc/environment-handler.js";
import { GpuHandler } from "./rpc/gpu-handler.js";
import { HealthStatus } from "./rpc/health.js";
import { HostHandler, type WorkloadReports } from "./rpc/host-handler.js";
import { audit, authenticate, authorizeCall, observe, traceCalls } from "./rpc/interceptors.js";
import { consoleFiles } from "./console/console-files.js";
import { GpuModels } from "./gpu/gpu-models.js";
import { SshRelay } from "./environment/ssh-relay.js";
import { SshTunnels } from "./environment/ssh-tunnels.js";
import { MetricsEndpoint } from "./rpc/metrics-endpoint.js";
import { FleetMetrics } from "./telemetry/fleet-metrics.js";
import { startTracing } from "./platform/tracing.js";
import { rateLimit } from "./rpc/rate-limit.js";
import { ReadinessProbe } from "./rpc/readiness-probe.js";
import { SERVICE_NAMES, routes } from "./rpc/routes.js";
import { RpcServer } from "./rpc/server.js";
import { WorkspaceHandler } from "./rpc/workspace-handler.js";
import { AgentRuntime } from "./runtime/agent-runtime.js";
import { sharedHostKey } from "./platform/ssh-host-key.js";
import { LocalObjectStore } from "./storage/local-object-store.js";
import { WorkspaceFiles } from "./storage/workspace-files.js";
import { HeartbeatIngest, type LiveSample } from "./telemetry/heartbeat-ingest.js";
import { LatestSamples } from "./telemetry/latest-samples.js";
import { RedisSampleRelay } from "./telemetry/redis-sample-relay.js";
import { TelemetryHistory } from "./telemetry/telemetry-history.js";
import { QuotaLedger } from "./workspace/quota-ledger.js";
import { WorkspaceRegistry } from "./workspace/workspace-registry.js";

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

const RECONCILER_LOCK_KEY = 7_315_482_903;
/** How long DeleteWorkspace with force waits for its environments to be gone. */
const FORCE_DELETE_WAIT_MS = 120_000;

/** The composition root: every long-lived object is made here. */
export async function createApp(config: Config, options: AppOptions = {}): Promise<App> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const clock = options.clock ?? systemClock;
  // The certificate is read (and parsed) before anything starts, so a bad one leaves nothing running.
  const tls = config.tls && loadTls(config.tls.certFile, config.tls.keyFile);
  const { databaseUrl: url, dataDir, embeddedPostgresPort: embeddedPort, databasePoolSize: poolSize } = config;
  const stopTracing = config.tracing ? await startTracing(config.tracing.endpoint, config.tracing.serviceName) : async () => undefined;
  const database = await startDatabase({ url, dataDir, embeddedPort, poolSize, entities }, logger).catch(async (err: unknown) => {
    await stopTracing();
    throw err;
  });
  // Nothing that fails from here on may leave the database (or the embedded PostgreSQL) running.
  const app = await compose(config, database, tls, clock, logger).catch(async (err: unknown) => {
    await database.close();
    await stopTracing();
    throw err;
  });
  return {
    ...app,
    async close() {
      await app.close();
      await stopTracing();
    },
  };
}

type Tls = ReturnType<typeof loadTls>;

async function compose(config: Config, database: Database, tls: Tls | undefined, clock: Clock, logger: Logger): Promise<App> {
  const { orm } = database;
  const authenticator = new Authenticator(orm, clock, config.adminToken);
  const generatedAdminToken = await authenticator.ensureAdminToken();

  // Several replicas: what one changes reaches the others' watchers, and a command for an agent goes
  // to the replica that holds its stream. Without Redis, this replica is all there is.
  const redis = config.redisUrl ? await openRedis(config.redisUrl, logger) : undefined;
  const topics = { ...hostTopics, ...environmentTopics, ...agentTopics };
  const events = redis
    ? new RedisClusterEvents(redis, config.redisKeyPrefix, topics, logger)
    : new LocalClusterEvents<TopicsOf<typeof topics>>();
  const metrics = new Metrics();
  const samples = new LatestSamples();
  const live = new Feed<LiveSample>();
  const relay = redis && new RedisSampleRelay(redis, samples, live, config.redisKeyPrefix, logger);
  await relay?.start();

  const hosts = new HostRegistry(orm, clock, samples, config.hostGraceSeconds * 1000, events);
  const rollup = config.telemetryRollupSeconds
    ? { afterMs: config.telemetryRollupAfterHours * 3_600_000, widthMs: config.telemetryRollupSeconds * 1000 }
    : undefined;
  const history = new TelemetryHistory(
    orm,
    clock,
    config.telemetryResolutionSeconds * 1000,
    config.telemetryRetentionHours * 3_600_000,
    rollup,
  );
  const thresholds = { maxTemperatureCelsius: config.gpuMaxTemperatureCelsius };
  const ingest = new HeartbeatIngest(
    orm,
    clock,
    samples,
    history,
    thresholds,
    live,
    (ids) => hosts.announce(ids),
    relay,
    (batch, seconds) => metrics.flushDuration.observe({ batch }, seconds),
  );
  const leaseMs = config.hostGraceSeconds * 1000;
  const agents = new AgentSessions(orm, clock, ingest, config.heartbeatIntervalSeconds * 1000, leaseMs, hosts, events);
  const liveness = new HostLiveness(orm, clock, leaseMs);
  const inventory = new GpuInventory(orm, clock, samples, (hostId, uuid) => ingest.readmitted(hostId, uuid));
  const allocator = new GpuAllocator(orm, clock);
  const auditTrail = new AuditTrail(orm, clock, config.auditRetentionDays * 86_400_000);
  const quotas = new QuotaLedger(orm, clock);
  const environments = new EnvironmentManager(
    orm,
    clock,
    quotas,
    config.hostPortRange,
    events,
    (id) => reconciler.kick(id),
    undefined, // the real placement
    config.kubernetes,
  );
  await events.start();

  // The S3 and Kubernetes clients take most of a start's module loading (0.1 and 0.5 s here): only
  // a server configured for them loads them.
  const s3 = config.s3 && new (await import("./storage/s3-object-store.js")).S3ObjectStore(config.s3);
  const store = s3 || new LocalObjectStore(path.join(config.dataDir, "objects"));
  const bucketFailed = (err: unknown) =>
    logger.warn(
      { error: err instanceof Error ? err.message : String(err) },
      "S3 bucket check failed; file calls will fail until it answers",
    );
  await s3?.ensureBucket().catch(bucketFailed);
  const environmentLogs = new EnvironmentLogs(orm, store);
  const files = new WorkspaceFiles(orm, clock, store, quotas, logger);
  const leader = new LeaderLock(database.url, RECONCILER_LOCK_KEY, logger);
  const activity = new WorkloadActivity(clock, config.idleGpuUtilizationPercent);
  // What agents and Kubernetes report of workloads, for the reconciler (made after the runtimes it drives).
  const workloads: WorkloadReports = {
    connected: (hostId, running) => reconciler.agentConnected(hostId, running),
    status: (hostId, report) => reconciler.observe(hostId, report),
    logs: async (hostId, environmentId, lines) => void (await environmentLogs.append(hostId, environmentId, lines)),
    traffic: (environmentId, time) => activity.portTraffic(environmentId, time),
  };
  const k8s = config.kubernetes && (await loadKubernetes(config.kubernetes.kubeconfig));
  const kubernetes =
    config.kubernetes &&
    k8s &&
    new k8s.KubernetesRuntime(k8s.kc, config.kubernetes, { ...workloads, lastLog: (id) => environmentLogs.lastLine(id, "STDOUT") }, logger);
  const reconcilerOptions = {
    onFailed: () => metrics.environmentsFailed.inc(),
    startTimeoutMs: config.environmentStartTimeoutSeconds * 1000,
    lostHostTimeoutMs: config.environmentLostHostSeconds * 1000,
    hostGraceMs: leaseMs,
    beforeForget: (environmentId: string, workspaceId: string) => environmentLogs.archive(environmentId, workspaceId),
  };
  const runtimes = { AGENT: new AgentRuntime(agents), ...(kubernetes ? { KUBERNETES: kubernetes } : {}) };
  const isLeader = () => leader.check();
  // Matching Kubernetes nodes become hosts by themselves; the leader alone watches them.
  const selector = config.kubernetes?.nodeSelector;
  const nodeHosts =
    k8s && selector
      ? new NodeHosts((listener) => new k8s.KubeNodeWatch(k8s.kc, selector, listener, logger), orm, clock, hosts, isLeader, logger, {
          selector,
        })
      : undefined;
  const reconciler: EnvironmentReconciler = new EnvironmentReconciler(
    orm,
    clock,
    runtimes,
    environments,
    logger,
    reconcilerOptions,
    isLeader,
  );
  const workspaces = new WorkspaceRegistry(orm, clock, {
    async empty(id) {
      await environments.deleteAll(id, FORCE_DELETE_WAIT_MS);
      await files.deleteAll(id);
    },
    purge: (id) => environmentLogs.purgeArchives(id),
  });
  const idle = new IdleStopper(orm, clock, activity, environments, config.idleGpuUtilizationPercent, logger);
  const workspaceTokens = new WorkspaceTokens(orm, clock);
  const maintenance = new Maintenance({ ingest, leader, liveness, hosts, reconciler, idle, history, audit: auditTrail }, clock, logger);

  const health = new HealthStatus();
  const readiness = new ReadinessProbe(health, SERVICE_NAMES, () => databaseAnswers(orm));
  const fleet = new FleetMetrics(
    {
      orm,
      clock,
      samples,
      heldHosts: () => agents.heldHosts(),
      leads: () => leader.leads,
      gpuCounts: () => inventory.countByStatus(),
      lastReconcile: () => reconciler.lastPassAt,
      logger,
    },
    config.metricsGpuSeries,
    config.metricsRefreshSeconds * 1000,
  );
  const busConnected = events instanceof RedisClusterEvents ? () => events.connected : () => true;
  const metricsEndpoint = new MetricsEndpoint(metrics, fleet, { agents, leader, busConnected }, logger, config.metricsToken);
  const tunnels = new SshTunnels(
    environments,
    agents,
    auditTrail,
    clock,
    logger,
    {
      perEnvironment: config.sshMaxPerEnvironment,
      perToken: config.sshMaxPerToken,
      answerMs: 10_000,
    },
    redis && new SshRelay(redis, config.redisKeyPrefix),
    k8s &&
      kubernetes &&
      new k8s.KubernetesSsh(
        k8s.kc,
        kubernetes,
        async () => {
          const { utils } = (await import("ssh2")).default;
          return sharedHostKey(orm, "control-plane", () => utils.generateKeyPairSync("ed25519").private);
        },
        (environmentId) => activity.portTraffic(environmentId, clock.now()),
        logger,
      ),
  );
  const handlers = {
    hosts: new HostHandler(hosts, agents, clock, config.heartbeatIntervalSeconds * 1000, logger, workloads, metrics.heartbeatAck, tunnels),
    gpus: new GpuHandler(inventory, allocator, history, live, clock, samples),
    workspaces: new WorkspaceHandler(workspaces, quotas, workspaceTokens, auditTrail, files),
    environments: new EnvironmentHandler(environments, environmentLogs, new GpuModels(orm, quotas), tunnels),
  };
  const tokenBuckets = redis ? new RedisTokenBuckets(redis, config.redisKeyPrefix, logger) : new MemoryTokenBuckets();
  const interceptors = [
    traceCalls(),
    observe(logger, metrics),
    authenticate(authenticator),
    rateLimit(config.rateLimitPerSecond, clock, tokenBuckets, () => metrics.rateLimited.inc()),
    audit(auditTrail, logger),
    authorizeCall(),
  ];
  const server = new RpcServer(
    {
      routes: routes(handlers, health),
      interceptors,
      readMaxBytes: config.maxMessageBytes,
      fallback: await consoleFiles(config.consoleDir, metricsEndpoint.handle),
    },
    { config, logger, tls },
  );

  const lifetime = new AbortController();
  live.follow((s) => activity.gpuSample(s.sample.gpuId, s.sample.metrics.gpuUtilizationPercent, s.sample.time), lifetime.signal);
  kubernetes?.start();
  nodeHosts?.start();
  readiness.start();
  maintenance.start();
  fleet.start();

  return {
    orm,
    logger,
    generatedAdminToken,
    listen: () => server.listen(config.port, config.bindAddress),
    // A background round now, and the fleet metrics' snapshot read again after it.
    maintain: () => maintenance.round().then(() => fleet.refresh()),
    async close() {
      readiness.stop();
      const rounds = maintenance.stop();
      await fleet.stop();
      lifetime.abort();
      kubernetes?.close();
      health.shutdown();
      tunnels.shutdown();
      agents.shutdown();
      await server.close(config.shutdownTimeoutSeconds * 1000);
      await rounds;
      await nodeHosts?.close();
      await reconciler.idle();
      await leader.close();
      await ingest.flush(true).catch((err: unknown) => logger.error({ err }, "final heartbeat flush failed"));
      await relay?.close();
      events.close();
      s3?.close();
      redis?.disconnect();
      await database.close();
    },
  };
}

/** The Kubernetes client and what drives it: loaded only by a server configured for Kubernetes. */
async function loadKubernetes(kubeconfig: string | undefined) {
  const [{ kubeConfig }, { KubeNodeWatch }, { KubernetesRuntime }, { KubernetesSsh }] = await Promise.all([
    import("./platform/kube-config.js"),
    import("./platform/kube-node-watch.js"),
    import("./runtime/kubernetes-runtime.js"),
    import("./runtime/kubernetes-ssh.js"),
  ]);
  return { kc: kubeConfig(kubeconfig), KubeNodeWatch, KubernetesRuntime, KubernetesSsh };
}
