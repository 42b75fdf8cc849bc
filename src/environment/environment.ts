import { createHash, randomUUID } from "node:crypto";
import { BigIntType, EntitySchema, OptionalProps, wrap } from "@mikro-orm/core";
import { Host } from "../host/host.js";
import { Workspace } from "../workspace/workspace.js";

export type EnvironmentDesiredState = "RUNNING" | "STOPPED" | "DELETED";
export type EnvironmentStatus =
  | "PENDING"
  | "CREATING"
  | "RUNNING"
  | "STOPPING"
  | "STOPPED"
  | "STARTING"
  | "DELETING"
  | "DELETED"
  | "FAILED";
export type PortProtocol = "TCP" | "HTTP";

export interface PortSpec {
  name: string;
  containerPort: number;
  protocol: PortProtocol;
}

export interface StatusTransition {
  status: EnvironmentStatus;
  time: string;
  message: string;
}

export class Environment {
  declare [OptionalProps]?:
    | "command"
    | "args"
    | "env"
    | "gpuCount"
    | "gpuModel"
    | "migProfile"
    | "cpuMillicores"
    | "memoryBytes"
    | "storageBytes"
    | "storageUsedBytes"
    | "ports"
    | "primaryPort"
    | "sshPublicKeys"
    | "idleTimeoutMinutes"
    | "desiredState"
    | "status"
    | "statusMessage"
    | "host"
    | "requestId"
    | "requestHash"
    | "transitions"
    | "version"
    | "generation"
    | "workloadState"
    | "workloadMessage"
    | "workloadGeneration"
    | "actedAt"
    | "attempts";
  id: string = randomUUID();
  workspace!: Workspace;
  name!: string;
  image!: string;
  command: string[] = [];
  args: string[] = [];
  env: Record<string, string> = {};
  gpuCount = 0;
  gpuModel = "";
  /** Set when the environment asks for MIG slices of this profile instead of whole GPUs. */
  migProfile = "";
  cpuMillicores = 0;
  memoryBytes = 0;
  storageBytes = 0;
  /** Bytes its volume used when its host last measured it (0 until then). */
  storageUsedBytes = 0;
  /** In the order they were added: the runtime gets them so, and the first is the one that says "ready". */
  ports: PortSpec[] = [];
  /**
   * The container port `PORT` names: the first port the environment ever had (0 before it had one).
   * It stays when that port is removed, so adding or removing ports never changes `PORT`.
   */
  primaryPort = 0;
  sshPublicKeys: string[] = [];
  idleTimeoutMinutes = 0;
  desiredState: EnvironmentDesiredState = "RUNNING";
  status: EnvironmentStatus = "PENDING";
  statusMessage = "";
  host: Host | null = null;
  requestId: string | null = null;
  /** SHA-256 of the creating request (see requestHash), to refuse the same request id with another request; null before it was kept. */
  requestHash: string | null = null;
  transitions: StatusTransition[] = [];
  /** Grows on every start or restart; the runtime's reports name the generation they are about. */
  generation = 0;
  /** What the runtime last reported for `workloadGeneration` ("" before any report). */
  workloadState = "";
  workloadMessage = "";
  workloadGeneration = 0;
  /** When the reconciler last asked the runtime to act, for retries with backoff. */
  actedAt: Date | null = null;
  attempts = 0;
  createdAt!: Date;
  updatedAt!: Date;
  version = 1;
}

export const EnvironmentSchema = new EntitySchema<Environment>({
  class: Environment,
  tableName: "environments",
  uniques: [
    { name: "environments_workspace_request_unique", properties: ["workspace", "requestId"] },
    { name: "environments_workspace_name_unique", properties: ["workspace", "name"] },
  ],
  indexes: [{ name: "environments_status_index", properties: ["status"] }],
  properties: {
    id: { type: "uuid", primary: true },
    workspace: { kind: "m:1", entity: () => Workspace, deleteRule: "cascade" },
    name: { type: "string", length: 63 },
    image: { type: "string", length: 512 },
    command: { type: "json" },
    args: { type: "json" },
    env: { type: "json" },
    gpuCount: { type: "integer" },
    gpuModel: { type: "string", length: 128 },
    migProfile: { type: "string", length: 24, default: "" },
    cpuMillicores: { type: new BigIntType("number") },
    memoryBytes: { type: new BigIntType("number") },
    storageBytes: { type: new BigIntType("number") },
    storageUsedBytes: { type: new BigIntType("number") },
    ports: { type: "json" },
    primaryPort: { type: "integer" },
    sshPublicKeys: { type: "json" },
    idleTimeoutMinutes: { type: "integer" },
    desiredState: { type: "string", length: 16 },
    status: { type: "string", length: 16 },
    statusMessage: { type: "text" },
    host: { kind: "m:1", entity: () => Host, nullable: true, deleteRule: "set null" },
    requestId: { type: "string", length: 128, nullable: true },
    requestHash: { type: "string", length: 64, nullable: true },
    transitions: { type: "json" },
    generation: { type: "integer" },
    workloadState: { type: "string", length: 16 },
    workloadMessage: { type: "text" },
    workloadGeneration: { type: "integer" },
    actedAt: { type: "Date", columnType: "timestamptz", nullable: true },
    attempts: { type: "integer" },
    createdAt: { type: "Date", columnType: "timestamptz" },
    updatedAt: { type: "Date", columnType: "timestamptz" },
    version: { type: "integer", version: true },
  },
});

/** Volume size of an environment created without one (10 GiB), as the API documents. */
export const DEFAULT_STORAGE_BYTES = 10 * 2 ** 30;

/**
 * The id of an environment port's mapping: derived from the environment and the port's name, so it
 * is the same while the environment is stopped (no host port), after each start, and on every replica.
 */
export function portMappingId(environmentId: string, name: string): string {
  const h = createHash("sha256").update(`port-mapping:${environmentId}:${name}`).digest("hex");
  // A version-5-shaped UUID (variant bits set), so it passes every id check.
  const variant = ((Number.parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** A host's address without a port: "10.0.0.5:7000" → "10.0.0.5", "[fd00::5]:7000" and "fd00::5" → "fd00::5". */
export function hostName(address: string): string {
  const bracketed = /^\[([^\]]+)\](:\d+)?$/.exec(address);
  if (bracketed) return bracketed[1]!;
  // More than one colon and no brackets: a bare IPv6 address, which has no port.
  return address.split(":").length > 2 ? address : address.replace(/:\d+$/, "");
}

/** A host port given to an environment port. The unique (host, host_port) pair is what makes a port never mapped twice. */
export class PortMapping {
  id: string = randomUUID();
  environment!: Environment;
  host!: Host;
  name!: string;
  containerPort!: number;
  protocol: PortProtocol = "TCP";
  hostPort!: number;
  url = "";
  createdAt!: Date;

  /** Where a client connects, "host:port" ("[v6]:port"); empty while no host port is held (or the host is not loaded). */
  address(): string {
    if (!this.hostPort || !this.host || !wrap(this.host).isInitialized()) return "";
    const name = hostName(this.host.address);
    return `${name.includes(":") ? `[${name}]` : name}:${this.hostPort}`;
  }
}

export const PortMappingSchema = new EntitySchema<PortMapping>({
  class: PortMapping,
  tableName: "port_mappings",
  uniques: [
    { name: "port_mappings_host_port_unique", properties: ["host", "hostPort"] },
    { name: "port_mappings_environment_name_unique", properties: ["environment", "name"] },
  ],
  properties: {
    id: { type: "uuid", primary: true },
    environment: { kind: "m:1", entity: () => Environment, deleteRule: "cascade" },
    host: { kind: "m:1", entity: () => Host, deleteRule: "cascade" },
    name: { type: "string", length: 15 },
    containerPort: { type: "integer" },
    protocol: { type: "string", length: 8 },
    hostPort: { type: "integer" },
    url: { type: "string", length: 512 },
    createdAt: { type: "Date", columnType: "timestamptz" },
  },
});

export type LogStreamName = "STDOUT" | "STDERR" | "SYSTEM";

/** One line of an environment's output, as its runtime reported it. */
export class EnvironmentLogLine {
  id!: string;
  environment!: Environment;
  time!: Date;
  stream!: LogStreamName;
  text!: string;
}

export const EnvironmentLogLineSchema = new EntitySchema<EnvironmentLogLine>({
  class: EnvironmentLogLine,
  tableName: "environment_logs",
  indexes: [{ name: "environment_logs_environment_index", properties: ["environment", "id"] }],
  properties: {
    id: { type: new BigIntType("string"), primary: true, autoincrement: true },
    environment: { kind: "m:1", entity: () => Environment, deleteRule: "cascade" },
    time: { type: "Date", columnType: "timestamptz" },
    stream: { type: "string", length: 8 },
    text: { type: "text" },
  },
});
