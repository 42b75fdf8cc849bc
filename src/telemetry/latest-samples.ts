/** Numeric GPU measurements; absent fields were not reported. Meanings follow nvidia-smi --query-gpu. */
export interface GpuMetrics {
  gpuUtilizationPercent?: number;
  memoryUtilizationPercent?: number;
  memoryUsedBytes?: number;
  memoryTotalBytes?: number;
  temperatureCelsius?: number;
  powerDrawWatts?: number;
  powerLimitWatts?: number;
  smClockMhz?: number;
  fanSpeedPercent?: number;
  eccCorrectedErrors?: number;
  eccUncorrectedErrors?: number;
  lastXid?: number;
  pcieRxBytesPerSecond?: number;
  pcieTxBytesPerSecond?: number;
}

export interface GpuSampleRecord {
  gpuUuid: string;
  /** The GPU's server-side id, when the receiver knows it. */
  gpuId?: string;
  index: number;
  time: Date;
  metrics: GpuMetrics;
}

export interface HostSampleRecord {
  cpuUtilizationPercent?: number;
  memoryUsedBytes?: number;
  memoryTotalBytes?: number;
  diskUsedBytes?: number;
  diskTotalBytes?: number;
  uptimeSeconds?: number;
}

/** The most recent sample per host and per GPU, in memory: served by GetHost/GetGpu without a query. */
export class LatestSamples {
  private readonly hosts = new Map<string, HostSampleRecord>();
  /** By host id, then by GPU UUID. */
  private readonly gpus = new Map<string, Map<string, GpuSampleRecord>>();

  recordHost(hostId: string, sample: HostSampleRecord): void {
    this.hosts.set(hostId, sample);
  }

  recordGpu(hostId: string, sample: GpuSampleRecord): void {
    const ofHost = this.gpus.get(hostId) ?? new Map<string, GpuSampleRecord>();
    ofHost.set(sample.gpuUuid, sample);
    this.gpus.set(hostId, ofHost);
  }

  host(hostId: string): HostSampleRecord | undefined {
    return this.hosts.get(hostId);
  }

  gpu(hostId: string, uuid: string): GpuSampleRecord | undefined {
    return this.gpus.get(hostId)?.get(uuid);
  }

  /** The latest sample of every GPU of `hostId`, or of every host: what a new live watcher sees first. */
  *gpuSamples(hostId?: string): Iterable<{ hostId: string; sample: GpuSampleRecord }> {
    const hosts = hostId === undefined ? this.gpus : new Map([[hostId, this.gpus.get(hostId) ?? new Map()]]);
    for (const [id, ofHost] of hosts) for (const sample of ofHost.values()) yield { hostId: id, sample };
  }

  forgetHost(hostId: string): void {
    this.hosts.delete(hostId);
    this.gpus.delete(hostId);
  }
}
