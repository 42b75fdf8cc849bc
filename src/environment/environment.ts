import { randomUUID } from "node:crypto";
import { BigIntType, EntitySchema, OptionalProps } from "@mikro-orm/core";
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
    | "cpuMillicores"
    | "memoryBytes"
    | "storageBytes"
    | "ports"
    | "sshPublicKeys"
    | "idleTimeoutMinutes"
    | "desiredState"
    | "status"
    | "statusMessage"
    | "host"
    | "requestId"
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
  cpuMillicores = 0;
  memoryBytes = 0;
  storageBytes = 0;
  ports: PortSpec[] = [];
  sshPublicKeys: string[] = [];
  idleTimeoutMinutes = 0;
  desiredState: EnvironmentDesiredState = "RUNNING";
  status: EnvironmentStatus = "PENDING";
  statusMessage = "";
  host: Host | null = null;
  requestId: string | null = null;
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
    cpuMillicores: { type: new BigIntType("number") },
    memoryBytes: { type: new BigIntType("number") },
    storageBytes: { type: new BigIntType("number") },
    ports: { type: "json" },
    sshPublicKeys: { type: "json" },
    idleTimeoutMinutes: { type: "integer" },
    desiredState: { type: "string", length: 16 },
    status: { type: "string", length: 16 },
    statusMessage: { type: "text" },
    host: { kind: "m:1", entity: () => Host, nullable: true, deleteRule: "set null" },
    requestId: { type: "string", length: 128, nullable: true },
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
