import { LockMode, type FilterQuery } from "@mikro-orm/core";
import type { EntityManager, MikroORM } from "@mikro-orm/postgresql";
import type { Host } from "../host/host.js";
import { ConflictError, FailedPreconditionError, ResourceExhaustedError } from "../errors.js";
import { checkId } from "../ids.js";
import type { Clock } from "../platform/clock.js";
import { Violations, checkString } from "../validation.js";
import { Gpu, effectiveGpuStatus } from "./gpu.js";
import { FREE_GPU, GPU_ALIAS, findGpu } from "./gpu-inventory.js";
import type { AuditNote } from "../audit/audit-trail.js";

const unaudited: AuditNote = () => undefined;

export interface AllocationRequest {
  /** A specific GPU; when empty one is picked by hostId and model. */
  gpuId: string;
  hostId: string;
  model: string;
  holder: string;
}

/**
 * Takes a share lock on the host and re-reads it: a concurrent drain or cordon (an UPDATE of that
 * row) then either waits for this allocation, and reports it, or has already happened and is seen.
 */
async function lockHostOpen(em: EntityManager, host: Host, refuse: () => Error): Promise<void> {
  await em.refresh(host, { lockMode: LockMode.PESSIMISTIC_READ });
  if (host.status !== "ONLINE" || !host.schedulable) throw refuse();
}

/**
 * Hands GPUs to holders. Every path locks the GPU row inside a transaction before looking at its
 * holder, so two callers can never both see it free.
 */
export class GpuAllocator {
  constructor(
    private readonly orm: MikroORM,
    private readonly clock: Clock,
  ) {}

  async allocate(req: AllocationRequest, note: AuditNote = unaudited): Promise<Gpu> {
    const v = new Violations();
    checkString(v, "holder", req.holder, { required: true, max: 128 });
    checkString(v, "model", req.model, { max: 128 });
    v.throwIfAny();

    return this.orm.em.fork().transactional(async (em) => {
      let gpu: Gpu | null;
      if (req.gpuId) {
        gpu = await findGpu(em, req.gpuId, LockMode.PESSIMISTIC_WRITE);
        if (gpu.holder !== null) throw new FailedPreconditionError(`GPU ${gpu.id} is already allocated to "${gpu.holder}"`);
        if (gpu.migEnabled)
          throw new FailedPreconditionError(
            `GPU ${gpu.id} is in MIG mode: allocate one of its MIG slices (ListGpus shows them with mig.parent_id ${gpu.id})`,
          );
        const status = effectiveGpuStatus(gpu);
        if (status !== "AVAILABLE") throw new FailedPreconditionError(`GPU ${gpu.id} is ${status} and cannot be allocated`);
        await lockHostOpen(
          em,
          gpu.host,
          () =>
            new FailedPreconditionError(
              `GPU ${gpu!.id} is on host "${gpu!.host.name}", which takes no new work (${gpu!.host.status}${gpu!.host.schedulable ? "" : ", cordoned"})`,
            ),
        );
      } else {
        const where: FilterQuery<Gpu>[] = [FREE_GPU];
        if (req.hostId) where.push({ host: checkId("host_id", req.hostId) });
        // A MIG slice is picked when its model is asked for; "any GPU" means a whole one.
        where.push(req.model ? { model: req.model } : { migProfile: "" });
        // SKIP LOCKED: concurrent pickers take different rows instead of queueing on the same one.
        gpu = await em.findOne(
          Gpu,
          { $and: where },
          {
            orderBy: [{ host: "asc" }, { index: "asc" }],
            lockMode: LockMode.PESSIMISTIC_PARTIAL_WRITE,
            lockTableAliases: [GPU_ALIAS],
            populate: ["host"],
          },
        );
        if (!gpu) {
          const what = [req.model && `model "${req.model}"`, req.hostId && `on host ${req.hostId}`].filter(Boolean).join(" ");
          throw new ResourceExhaustedError(`no free GPU${what ? ` of ${what}` : ""} on an online, schedulable host`);
        }
        await lockHostOpen(
          em,
          gpu.host,
          () => new ConflictError(`host "${gpu!.host.name}" was cordoned or went offline while allocating; retry`),
        );
      }
      const now = this.clock.now();
      Object.assign(gpu, { status: "ALLOCATED", holder: req.holder, allocatedAt: now, updatedAt: now });
      note(em, { targetId: gpu.id });
      return gpu;
    });
  }

  /** Frees a GPU held through AllocateGpu. GPUs held by environments are freed by stopping the environment. */
  async release(gpuId: string, expectedHolder: string, note: AuditNote = unaudited): Promise<Gpu> {
    const v = new Violations();
    checkString(v, "holder", expectedHolder, { max: 128 });
    v.throwIfAny();
    return this.orm.em.fork().transactional(async (em) => {
      const gpu = await findGpu(em, gpuId, LockMode.PESSIMISTIC_WRITE);
      if (gpu.holder === null) throw new FailedPreconditionError(`GPU ${gpu.id} is not allocated`);
      if (expectedHolder && gpu.holder !== expectedHolder) {
        throw new FailedPreconditionError(`GPU ${gpu.id} is held by "${gpu.holder}", not "${expectedHolder}"`);
      }
      if (gpu.environment) {
        throw new FailedPreconditionError(
          `GPU ${gpu.id} is held by environment ${gpu.environment.id}; stop or delete the environment instead`,
        );
      }
      // Slices made while it was held whole (put in MIG mode under its holder) were held with it.
      if (gpu.migEnabled)
        await em.getConnection().execute(
          `update gpus set holder = null, allocated_at = null, status = case when status = 'ALLOCATED' then 'AVAILABLE' else status end,
             updated_at = ?, version = version + 1
           where parent_id = ? and holder = ? and environment_id is null`,
          [this.clock.now(), gpu.id, gpu.holder],
          "run",
          em.getTransactionContext(),
        );
      Object.assign(gpu, {
        holder: null,
        allocatedAt: null,
        status: gpu.status === "ALLOCATED" ? "AVAILABLE" : gpu.status,
        updatedAt: this.clock.now(),
      });
      note(em, { targetId: gpu.id });
      return gpu;
    });
  }
}
