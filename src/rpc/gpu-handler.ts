import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { Feed } from "../platform/feed.js";
import type { LiveSample } from "../telemetry/heartbeat-ingest.js";
import type { LatestSamples } from "../telemetry/latest-samples.js";
import type {
  AllocateGpuRequest,
  CreateGpuRequest,
  DeleteGpuRequest,
  GetGpuRequest,
  GetGpuTelemetryRequest,
  WatchGpuTelemetryRequest,
  WatchGpuTelemetryResponseSchema,
  GpuService,
  ListGpusRequest,
  ReleaseGpuRequest,
  UpdateGpuRequest,
} from "../../gen/remotegpu/v1/gpu_pb.js";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { GpuAllocator } from "../gpu/gpu-allocator.js";
import type { Clock } from "../platform/clock.js";
import type { TelemetryHistory } from "../telemetry/telemetry-history.js";
import type { GpuInventory } from "../gpu/gpu-inventory.js";
import { auditNote } from "./context.js";
import { Violations, parseLabelSelector, required, toSafeNumber } from "../validation.js";
import { dateFromMessage, gpuMetricsToMessage, gpuSampleToMessage, gpuStatus, gpuToMessage, msFromMessage } from "./convert.js";
import { BUFFERS } from "./watch.js";

type Impl = Partial<ServiceImpl<typeof GpuService>>;

/** GpuService over Connect/gRPC. */
export class GpuHandler implements Impl {
  constructor(
    private readonly inventory: GpuInventory,
    private readonly allocator: GpuAllocator,
    private readonly history: TelemetryHistory,
    private readonly live: Feed<LiveSample>,
    private readonly clock: Clock,
    /** Where a new watcher's first samples come from: without them it would wait for the next heartbeat. */
    private readonly latest?: LatestSamples,
  ) {}

  async createGpu(req: CreateGpuRequest, ctx: HandlerContext) {
    const v = new Violations();
    const memoryBytes = toSafeNumber(v, "memory_bytes", req.memoryBytes);
    v.throwIfAny();
    const view = await this.inventory.create(
      { hostId: req.hostId, index: req.index, uuid: req.uuid, model: req.model, memoryBytes },
      auditNote(ctx),
    );
    return { gpu: gpuToMessage(view) };
  }

  async getGpu(req: GetGpuRequest) {
    return { gpu: gpuToMessage(await this.inventory.get(req.id)) };
  }

  async listGpus(req: ListGpusRequest) {
    const v = new Violations();
    const status = gpuStatus.toDomain(req.status, "status", v);
    v.throwIfAny();
    const filter = {
      hostId: req.hostId || undefined,
      model: req.model || undefined,
      status,
      freeOnly: req.freeOnly,
      migProfile: req.migProfile,
      labels: parseLabelSelector("label_selector", req.labelSelector),
    };
    const page = await this.inventory.list(filter, req.pageSize, req.pageToken);
    return { gpus: page.items.map(gpuToMessage), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  async updateGpu(req: UpdateGpuRequest, ctx: HandlerContext) {
    const v = new Violations();
    const g = req.gpu;
    if (!g) v.add("gpu", "required");
    const patch = {
      model: g?.model ?? "",
      memoryBytes: toSafeNumber(v, "gpu.memory_bytes", g?.memoryBytes ?? 0n),
      status: req.updateMask?.paths.includes("status")
        ? (gpuStatus.toDomain(g?.status ?? 0, "gpu.status", v) ?? required(v, "gpu.status"))
        : undefined,
      healthReasons: g?.healthReasons ?? [],
    };
    v.throwIfAny();
    return { gpu: gpuToMessage(await this.inventory.update(g!.id, patch, req.updateMask?.paths ?? [], auditNote(ctx))) };
  }

  async deleteGpu(req: DeleteGpuRequest, ctx: HandlerContext) {
    await this.inventory.delete(req.id, auditNote(ctx));
    return {};
  }

  async allocateGpu(req: AllocateGpuRequest, ctx: HandlerContext) {
    const gpu = await this.allocator.allocate(
      { gpuId: req.gpuId, hostId: req.hostId, model: req.model, holder: req.holder },
      auditNote(ctx),
    );
    return { gpu: gpuToMessage(this.inventory.view(gpu)) };
  }

  async releaseGpu(req: ReleaseGpuRequest, ctx: HandlerContext) {
    const gpu = await this.allocator.release(req.gpuId, req.holder, auditNote(ctx));
    return { gpu: gpuToMessage(this.inventory.view(gpu)) };
  }

  /**
   * Live samples of one GPU, one host's GPUs, or all: first the latest known sample of each, at once,
   * then every new one. A slow reader loses the oldest, never slows ingestion.
   */
  async *watchGpuTelemetry(
    req: WatchGpuTelemetryRequest,
    ctx: HandlerContext,
  ): AsyncIterable<MessageInitShape<typeof WatchGpuTelemetryResponseSchema>> {
    let accept = (_: LiveSample) => true;
    let hostId: string | undefined;
    if (req.gpuId) {
      const { gpu } = await this.inventory.get(req.gpuId);
      hostId = gpu.host.id;
      accept = (s) => s.hostId === gpu.host.id && s.sample.gpuUuid === gpu.uuid;
    } else if (req.hostId) {
      hostId = await this.inventory.requireHost(req.hostId);
      accept = (s) => s.hostId === hostId;
    }
    // The latest samples are read in the same turn as the subscription starts: every sample the feed
    // delivers afterwards is newer than them, so none is missed or sent twice.
    const deliveries = this.live.subscribe({ accept, ...BUFFERS.samples }, ctx.signal);
    const latest = [...(this.latest?.gpuSamples(hostId) ?? [])].filter(accept);
    for (const s of latest) yield { sample: gpuSampleToMessage(s.sample, s.sample.gpuId ?? "", s.hostId), dropped: 0n };
    for await (const { item, dropped } of deliveries) {
      yield { sample: gpuSampleToMessage(item.sample, item.sample.gpuId ?? "", item.hostId), dropped: BigInt(dropped) };
    }
  }

  async getGpuTelemetry(req: GetGpuTelemetryRequest) {
    const v = new Violations();
    const to = req.endTime ? dateFromMessage(v, "end_time", req.endTime) : this.clock.now();
    const from = req.startTime ? dateFromMessage(v, "start_time", req.startTime) : new Date(to.getTime() - DEFAULT_RANGE_MS);
    const stepMs = req.step ? msFromMessage(v, "step", req.step) : DEFAULT_STEP_MS;
    v.throwIfAny();
    const { gpu } = await this.inventory.get(req.gpuId);
    const buckets = await this.history.query(gpu.id, from, to, stepMs);
    return {
      buckets: buckets.map((b) => ({
        startTime: timestampFromDate(b.start),
        sampleCount: BigInt(b.sampleCount),
        average: gpuMetricsToMessage(b.average),
        maximum: gpuMetricsToMessage(b.maximum),
      })),
    };
  }
}

const DEFAULT_RANGE_MS = 3_600_000;
const DEFAULT_STEP_MS = 60_000;
