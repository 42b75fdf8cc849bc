import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { Feed } from "../platform/feed.js";
import type { Logger } from "../platform/logger.js";
import type { LiveSample, SampleRelay } from "./heartbeat-ingest.js";
import type { GpuSampleRecord, HostSampleRecord, LatestSamples } from "./latest-samples.js";

interface HostReport {
  host?: HostSampleRecord;
  gpus: GpuSampleRecord[];
}

/**
 * Shares the latest samples between replicas through Redis: each flush publishes what arrived since
 * the last one (one message, however many hosts) and keeps it in a hash, so a replica that starts
 * later loads the current state and every replica serves GetGpu/GetHost from its own memory.
 */
export class RedisSampleRelay implements SampleRelay {
  private readonly replica = randomUUID();
  private pending = new Map<string, HostReport>();
  private readonly subscriber: Redis;

  constructor(
    private readonly redis: Redis,
    private readonly samples: LatestSamples,
    /** Where samples other replicas received go, for this replica's live watchers. */
    private readonly live: Feed<LiveSample>,
    private readonly prefix: string,
    private readonly logger: Logger,
  ) {
    this.subscriber = redis.duplicate();
    this.subscriber.on("error", (err: Error) => logger.warn({ error: err.message }, "redis subscriber"));
  }

  private get channel(): string {
    return `${this.prefix}samples`;
  }

  private get hash(): string {
    return `${this.prefix}latest`;
  }

  /**
   * Loads the current state and starts following other replicas (ioredis re-subscribes after an
   * outage). Never throws: without Redis this replica serves its own samples until Redis answers.
   */
  async start(): Promise<void> {
    try {
      await this.follow();
    } catch (err) {
      this.logger.warn({ error: String(err) }, "could not load shared samples from Redis");
    }
  }

  private async follow(): Promise<void> {
    this.subscriber.on("message", (_channel: string, message: string) => {
      try {
        const { from, reports } = JSON.parse(message) as { from: string; reports: Record<string, HostReport> };
        if (from !== this.replica) for (const [hostId, r] of Object.entries(reports)) this.apply(hostId, r);
      } catch (err) {
        this.logger.warn({ err }, "ignoring a malformed sample message from Redis");
      }
    });
    await this.subscriber.connect();
    await this.subscriber.subscribe(this.channel);
    for (const [hostId, json] of Object.entries(await this.redis.hgetall(this.hash)))
      this.apply(hostId, JSON.parse(json) as HostReport, false);
  }

  record(hostId: string, host: HostSampleRecord | undefined, gpus: GpuSampleRecord[]): void {
    const report = this.pending.get(hostId) ?? { gpus: [] };
    if (host) report.host = host;
    report.gpus.push(...gpus);
    this.pending.set(hostId, report);
  }

  /** Never throws: Redis only serves other replicas, and its outage must not stop this one. */
  async flush(): Promise<void> {
    if (this.pending.size === 0) return;
    const reports = Object.fromEntries(this.pending);
    this.pending = new Map();
    const snapshot: Record<string, string> = {};
    for (const [hostId, r] of Object.entries(reports)) {
      // The hash keeps the newest sample per GPU of each host, as memory does.
      const latest = new Map(r.gpus.map((g) => [g.gpuUuid, g]));
      for (const uuid of latest.keys()) {
        const mine = this.samples.gpu(hostId, uuid);
        if (mine) latest.set(uuid, mine);
      }
      snapshot[hostId] = JSON.stringify({ host: this.samples.host(hostId) ?? r.host, gpus: [...latest.values()] });
    }
    try {
      await this.redis
        .multi()
        .hset(this.hash, snapshot)
        .publish(this.channel, JSON.stringify({ from: this.replica, reports }))
        .exec();
    } catch (err) {
      this.logger.warn({ error: String(err) }, "sharing samples through Redis failed; other replicas see older samples");
    }
  }

  /** Drops a deleted host from the shared hash, so replicas that start later do not load it. */
  forgetHost(hostId: string): void {
    this.pending.delete(hostId);
    this.redis
      .hdel(this.hash, hostId)
      .catch((err: unknown) => this.logger.warn({ error: String(err) }, "could not remove a deleted host from Redis"));
  }

  async close(): Promise<void> {
    this.subscriber.disconnect();
  }

  private apply(hostId: string, r: HostReport, live = true): void {
    if (r.host) this.samples.recordHost(hostId, r.host);
    for (const g of r.gpus) {
      const sample = { ...g, time: new Date(g.time) };
      this.samples.recordGpu(hostId, sample);
      if (live) this.live.publish({ hostId, sample });
    }
  }
}
