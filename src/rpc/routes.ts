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
    router.service(EnvironmentService, handlers.environments);
    // Bytes that do not shrink go out as they are, whatever compression the caller accepts (Node
    // clients accept gzip by default): file content (gzip held a download to about 20 MiB/s of server
    // CPU per stream; checkpoints, archives and images do not shrink anyway) and SSH tunnels'
    // encrypted bytes. Registered after their services, these handlers replace the services' ones
    // for the same paths (RpcServer keeps the last of a path).
    const asTheyAre = { compressMinBytes: Number.POSITIVE_INFINITY };
    router.rpc(WorkspaceService.method.downloadFile, (req, ctx) => handlers.workspaces.downloadFile(req, ctx), asTheyAre);
    router.rpc(HostService.method.acceptSshTunnel, (req, ctx) => handlers.hosts.acceptSshTunnel(req, ctx), asTheyAre);
    router.rpc(EnvironmentService.method.openSshTunnel, (req, ctx) => handlers.environments.openSshTunnel(req, ctx), asTheyAre);
    registerHealth(router, health);
    registerReflection(router, [file_remotegpu_v1_host, file_remotegpu_v1_gpu, file_remotegpu_v1_workspace, file_remotegpu_v1_environment]);
  };
}
