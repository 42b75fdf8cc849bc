import type { ConnectRouter } from "@connectrpc/connect";
import { EnvironmentService, file_remotegpu_v1_environment } from "../../gen/remotegpu/v1/environment_pb.js";
import { GpuService, file_remotegpu_v1_gpu } from "../../gen/remotegpu/v1/gpu_pb.js";
import { HostService, file_remotegpu_v1_host } from "../../gen/remotegpu/v1/host_pb.js";
import { WorkspaceService, file_remotegpu_v1_workspace } from "../../gen/remotegpu/v1/workspace_pb.js";
import type { GpuHandler } from "./gpu-handler.js";
import { registerHealth, type HealthStatus } from "./health.js";
import type { HostHandler } from "./host-handler.js";
import type { WorkspaceHandler } from "./workspace-handler.js";
import type { EnvironmentHandler } from "./environment-handler.js";
import { registerReflection } from "./reflection.js";

/** Names of the application services, as health and reflection report them. */
export const SERVICE_NAMES = [HostService, GpuService, WorkspaceService, EnvironmentService].map((s) => s.typeName);

/** Every service on one router. Methods a handler lacks answer UNIMPLEMENTED. */
export function routes(
  handlers: { hosts: HostHandler; gpus: GpuHandler; workspaces: WorkspaceHandler; environments: EnvironmentHandler },
  health: HealthStatus,
) {
  return (router: ConnectRouter) => {
    router.service(HostService, handlers.hosts);
    router.service(GpuService, handlers.gpus);
    router.service(WorkspaceService, handlers.workspaces);
    // File content goes out as it is, whatever compression the caller accepts (Node clients accept
    // gzip by default): gzip held a download to about 20 MiB/s of server CPU per stream, and most
    // files (checkpoints, archives, images) do not shrink anyway. Registered after the service, this
    // handler replaces the service's one for the same path (RpcServer keeps the last of a path).
    router.rpc(WorkspaceService.method.downloadFile, (req, ctx) => handlers.workspaces.downloadFile(req, ctx), {
      compressMinBytes: Number.POSITIVE_INFINITY,
    });
    router.service(EnvironmentService, handlers.environments);
    registerHealth(router, health);
    registerReflection(router, [file_remotegpu_v1_host, file_remotegpu_v1_gpu, file_remotegpu_v1_workspace, file_remotegpu_v1_environment]);
  };
}
