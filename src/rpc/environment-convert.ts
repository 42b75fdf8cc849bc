// Conversion of environment messages.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  EnvironmentDesiredState as DesiredMessage,
  EnvironmentSchema as EnvironmentMessageSchema,
  EnvironmentStatus as StatusMessage,
  LogStream,
  PortMappingSchema as PortMappingMessageSchema,
  PortProtocol as ProtocolMessage,
  type CreateEnvironmentRequest,
  type PortSpec as PortSpecMessage,
} from "../../gen/remotegpu/v1/environment_pb.js";
import type {
  EnvironmentDesiredState,
  EnvironmentStatus,
  LogStreamName,
  PortMapping,
  PortProtocol,
  PortSpec,
} from "../environment/environment.js";
import type { EnvironmentInput, EnvironmentView } from "../environment/environment-manager.js";
import type { LogLineRecord } from "../environment/environment-logs.js";
import { Violations, toSafeNumber } from "../validation.js";
import { enumMap, ts } from "./convert.js";

export const environmentStatus = enumMap<EnvironmentStatus, StatusMessage>([
  ["PENDING", StatusMessage.PENDING],
  ["CREATING", StatusMessage.CREATING],
  ["RUNNING", StatusMessage.RUNNING],
  ["STOPPING", StatusMessage.STOPPING],
  ["STOPPED", StatusMessage.STOPPED],
  ["STARTING", StatusMessage.STARTING],
  ["DELETING", StatusMessage.DELETING],
  ["DELETED", StatusMessage.DELETED],
  ["FAILED", StatusMessage.FAILED],
]);

const desiredState = enumMap<EnvironmentDesiredState, DesiredMessage>([
  ["RUNNING", DesiredMessage.RUNNING],
  ["STOPPED", DesiredMessage.STOPPED],
  ["DELETED", DesiredMessage.DELETED],
]);

const portProtocol = enumMap<PortProtocol, ProtocolMessage>([
  ["TCP", ProtocolMessage.TCP],
  ["HTTP", ProtocolMessage.HTTP],
]);

export const logStream = enumMap<LogStreamName, LogStream>([
  ["STDOUT", LogStream.STDOUT],
  ["STDERR", LogStream.STDERR],
  ["SYSTEM", LogStream.SYSTEM],
]);

/** A port spec from a request; the protocol defaults to TCP. */
export function portFromMessage(v: Violations, field: string, p: PortSpecMessage): PortSpec {
  return { name: p.name, containerPort: p.containerPort, protocol: portProtocol.toDomain(p.protocol, `${field}.protocol`, v) ?? "TCP" };
}

export function environmentInputFromMessage(req: CreateEnvironmentRequest): EnvironmentInput {
  const v = new Violations();
  const input = {
    workspaceId: req.workspaceId,
    name: req.name,
    image: req.image,
    command: [...req.command],
    args: [...req.args],
    env: { ...req.env },
    gpuCount: req.gpuCount,
    gpuModel: req.gpuModel,
    migProfile: req.migProfile,
    cpuMillicores: toSafeNumber(v, "cpu_millicores", req.cpuMillicores),
    memoryBytes: toSafeNumber(v, "memory_bytes", req.memoryBytes),
    storageBytes: toSafeNumber(v, "storage_bytes", req.storageBytes),
    ports: req.ports.map((p, i) => portFromMessage(v, `ports[${i}]`, p)),
    sshPublicKeys: [...req.sshPublicKeys],
    idleTimeoutMinutes: req.idleTimeoutMinutes,
    requestId: req.requestId,
  };
  v.throwIfAny();
  return input;
}

export function portMappingToMessage(p: PortMapping) {
  return create(PortMappingMessageSchema, {
    id: p.id,
    environmentId: p.environment.id,
    name: p.name,
    containerPort: p.containerPort,
    protocol: portProtocol.toProto(p.protocol),
    hostPort: p.hostPort,
    url: p.url,
    createTime: ts(p.createdAt),
    address: p.address(),
  });
}

export function environmentToMessage(view: EnvironmentView) {
  const e = view.environment;
  return create(EnvironmentMessageSchema, {
    id: e.id,
    workspaceId: e.workspace.id,
    name: e.name,
    image: e.image,
    command: e.command,
    args: e.args,
    env: e.env,
    gpuCount: e.gpuCount,
    gpuModel: e.gpuModel,
    migProfile: e.migProfile,
    cpuMillicores: BigInt(e.cpuMillicores),
    memoryBytes: BigInt(e.memoryBytes),
    storageBytes: BigInt(e.storageBytes),
    storageUsedBytes: BigInt(e.storageUsedBytes),
    ports: e.ports.map((p) => ({ name: p.name, containerPort: p.containerPort, protocol: portProtocol.toProto(p.protocol) })),
    sshPublicKeys: e.sshPublicKeys,
    idleTimeoutMinutes: e.idleTimeoutMinutes,
    desiredState: desiredState.toProto(e.desiredState),
    status: environmentStatus.toProto(e.status),
    statusMessage: e.statusMessage,
    hostId: e.host?.id ?? "",
    gpuIds: view.gpuIds,
    portMappings: view.portMappings.map(portMappingToMessage),
    transitions: e.transitions.map((t) => ({
      status: environmentStatus.toProto(t.status),
      time: timestampFromDate(new Date(t.time)),
      message: t.message,
    })),
    createTime: ts(e.createdAt),
    updateTime: ts(e.updatedAt),
  });
}

export function logLineToMessage(l: LogLineRecord) {
  return { time: timestampFromDate(l.time), stream: logStream.toProto(l.stream), text: l.text };
}
