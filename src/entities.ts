import { ApiTokenSchema } from "./auth/api-token.js";
import { AuditEventSchema } from "./audit/audit-event.js";
import { EnvironmentLogLineSchema, EnvironmentSchema, PortMappingSchema } from "./environment/environment.js";
import { FreeGpuCountSchema } from "./gpu/free-gpu-count.js";
import { GpuSchema } from "./gpu/gpu.js";
import { GpuListCountSchema } from "./gpu/gpu-list-count.js";
import { HostSchema } from "./host/host.js";
import { SshHostKeySchema } from "./platform/ssh-host-key.js";
import { LogArchiveSchema, WorkspaceFileSchema } from "./storage/workspace-file.js";
import { TelemetryBucketSchema } from "./telemetry/telemetry-bucket.js";
import { ResourceQuotaSchema, WorkspaceSchema } from "./workspace/workspace.js";

/** Every entity the database holds; the committed migrations must make exactly these tables. */
export const entities = [
  HostSchema,
  GpuSchema,
  FreeGpuCountSchema,
  GpuListCountSchema,
  WorkspaceSchema,
  ResourceQuotaSchema,
  EnvironmentSchema,
  PortMappingSchema,
  ApiTokenSchema,
  TelemetryBucketSchema,
  AuditEventSchema,
  EnvironmentLogLineSchema,
  WorkspaceFileSchema,
  LogArchiveSchema,
  SshHostKeySchema,
];
