import type { ServiceImpl } from "@connectrpc/connect";
import type {
  AllocateGpuRequest,
  CreateGpuRequest,
  DeleteGpuRequest,
  GetGpuRequest,
  GpuService,
  ListGpusRequest,
  ReleaseGpuRequest,
  UpdateGpuRequest,
} from "../../gen/remotegpu/v1/gpu_pb.js";
import type { GpuAllocator } from "../gpu/gpu-allocator.js";
import type { GpuInventory } from "../gpu/gpu-inventory.js";
import { Violations, parseLabelSelector, toSafeNumber } from "../validation.js";
import { gpuStatus, gpuToMessage } from "./convert.js";

type Impl = Partial<ServiceImpl<typeof GpuService>>;

/** GpuService over Connect/gRPC. */
export class GpuHandler implements Impl {
  constructor(
    private readonly inventory: GpuInventory,
    private readonly allocator: GpuAllocator,
  ) {}

  async createGpu(req: CreateGpuRequest) {
    const v = new Violations();
    const memoryBytes = toSafeNumber(v, "memory_bytes", req.memoryBytes);
    v.throwIfAny();
    const view = await this.inventory.create({ hostId: req.hostId, index: req.index, uuid: req.uuid, model: req.model, memoryBytes });
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
      labels: parseLabelSelector("label_selector", req.labelSelector),
    };
    const page = await this.inventory.list(filter, req.pageSize, req.pageToken);
    return { gpus: page.items.map(gpuToMessage), nextPageToken: page.nextPageToken, totalSize: page.totalSize };
  }

  async updateGpu(req: UpdateGpuRequest) {
    const v = new Violations();
    const g = req.gpu;
    if (!g) v.add("gpu", "required");
    const patch = {
      model: g?.model ?? "",
      memoryBytes: toSafeNumber(v, "gpu.memory_bytes", g?.memoryBytes ?? 0n),
      status: gpuStatus.toDomain(g?.status ?? 0, "gpu.status", v) ?? "AVAILABLE",
      healthReasons: g?.healthReasons ?? [],
    };
    v.throwIfAny();
    return { gpu: gpuToMessage(await this.inventory.update(g!.id, patch, req.updateMask?.paths ?? [])) };
  }

  async deleteGpu(req: DeleteGpuRequest) {
    await this.inventory.delete(req.id);
    return {};
  }

  async allocateGpu(req: AllocateGpuRequest) {
    const gpu = await this.allocator.allocate({ gpuId: req.gpuId, hostId: req.hostId, model: req.model, holder: req.holder });
    return { gpu: gpuToMessage(this.inventory.view(gpu)) };
  }

  async releaseGpu(req: ReleaseGpuRequest) {
    const gpu = await this.allocator.release(req.gpuId, req.holder);
    return { gpu: gpuToMessage(this.inventory.view(gpu)) };
  }
}
