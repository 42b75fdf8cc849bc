// Conversion between the agent protocol's messages and the domain's records.
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  WorkloadState as WorkloadStateMessage,
  type AgentCommandSchema,
  type AgentHeartbeat,
  type AgentHello as AgentHelloMessage,
  type EnvironmentLogReport,
  type EnvironmentStatusReport,
} from "../../gen/remotegpu/v1/agent_pb.js";
import { LogStream, PortProtocol } from "../../gen/remotegpu/v1/environment_pb.js";
import type { LogStreamName } from "../environment/environment.js";
import type { LogLineRecord } from "../environment/environment-logs.js";
import type { WorkloadReport } from "../environment/environment-reconciler.js";
import { InvalidArgumentError } from "../errors.js";
import { MAX_RUNTIME_REASON, type AgentCommand, type AgentHello } from "../host/agent-sessions.js";
import { checkId, isId } from "../ids.js";
import type { VolumeUsageRecord } from "../telemetry/heartbeat-ingest.js";
import type { WorkloadState } from "../runtime/runtime.js";
import { Violations, checkString, toSafeNumber } from "../validation.js";
import { capacityFromMessage, dateFromMessage } from "./convert.js";

const WORKLOAD_STATES: Record<number, WorkloadState> = {
  [WorkloadStateMessage.STARTING]: "STARTING",
  [WorkloadStateMessage.RUNNING]: "RUNNING",
  [WorkloadStateMessage.STOPPED]: "STOPPED",
  [WorkloadStateMessage.FAILED]: "FAILED",
  [WorkloadStateMessage.REMOVED]: "REMOVED",
};

const STREAMS: Record<number, LogStreamName> = { [LogStream.STDOUT]: "STDOUT", [LogStream.STDERR]: "STDERR", [LogStream.SYSTEM]: "SYSTEM" };

/** Most lines one log report may carry. */
const MAX_LOG_LINES = 10_000;
/** Most volume figures one heartbeat may carry; the rest are ignored. */
const MAX_VOLUMES = 1000;

/** An agent's hello as AgentSessions.open takes it; INVALID_ARGUMENT naming every bad field. */
export function helloFromMessage(m: AgentHelloMessage): AgentHello {
  const v = new Violations();
  const hello = {
    hostId: m.hostId,
    agentVersion: m.agentVersion,
    ...capacityFromMessage(v, "hello.capacity", m.capacity),
    gpus: m.gpus.map((g, i) => ({
      index: g.index,
      uuid: g.uuid,
      model: g.model,
      memoryBytes: toSafeNumber(v, `hello.gpus[${i}].memory_bytes`, g.memoryBytes),
      driverVersion: g.driverVersion,
      cudaVersion: g.cudaVersion,
      migEnabled: g.migEnabled,
      mig: g.parentUuid
        ? {
            parentUuid: g.parentUuid,
            profile: g.migProfile,
            deviceIndex: g.migDeviceIndex,
            gpuInstanceId: g.gpuInstanceId,
            computeInstanceId: g.computeInstanceId,
          }
        : undefined,
    })),
    containersSupported: m.containersSupported,
    // Tidied rather than refused: an agent must still connect to say why it cannot run anything.
    runtimeUnavailableReason: m.runtimeUnavailableReason
      .replace(/[\s\p{Cc}]+/gu, " ")
      .trim()
      .slice(0, MAX_RUNTIME_REASON),
  };
  v.throwIfAny();
  return hello;
}

/**
 * The volume figures of a heartbeat. A negative size is INVALID_ARGUMENT; a malformed environment id
 * is skipped like an unknown one (the figure of an environment the host does not run is ignored).
 */
export function volumesFromMessage(beat: AgentHeartbeat): VolumeUsageRecord[] {
  const v = new Violations();
  const volumes = beat.volumes.slice(0, MAX_VOLUMES).flatMap((u, i) => {
    const usedBytes = toSafeNumber(v, `heartbeat.volumes[${i}].used_bytes`, u.usedBytes);
    return isId(u.environmentId) ? [{ environmentId: u.environmentId.toLowerCase(), usedBytes }] : [];
  });
  v.throwIfAny();
  return volumes;
}

/** A workload's state as the agent reports it; an exit code the message does not mention is appended. */
export function statusReportFromMessage(r: EnvironmentStatusReport): WorkloadReport {
  const state = WORKLOAD_STATES[r.state];
  if (!state) throw InvalidArgumentError.field("environment_status.state", `unknown value ${r.state}`);
  const v = new Violations();
  checkString(v, "environment_status.message", r.message.slice(0, 4096), { max: 4096 });
  const environmentId = checkId("environment_status.environment_id", r.environmentId);
  const generation = toSafeNumber(v, "environment_status.generation", r.generation);
  v.throwIfAny();
  const withCode = r.exitCode === undefined || r.message.includes(String(r.exitCode));
  return { environmentId, generation, state, message: withCode ? r.message : `${r.message} (exit code ${r.exitCode})` };
}

/** A batch of a workload's log lines; a line without a time gets `now`. */
export function logReportFromMessage(r: EnvironmentLogReport, now: Date): { environmentId: string; lines: LogLineRecord[] } {
  const environmentId = checkId("environment_logs.environment_id", r.environmentId);
  if (r.lines.length > MAX_LOG_LINES) throw InvalidArgumentError.field("environment_logs.lines", `at most ${MAX_LOG_LINES} per report`);
  const v = new Violations();
  const lines = r.lines.map((l) => ({
    time: l.time ? dateFromMessage(v, "environment_logs.lines.time", l.time) : now,
    stream: STREAMS[l.stream] ?? "STDOUT",
    text: l.text,
  }));
  v.throwIfAny();
  return { environmentId, lines };
}

/** A server-side command as the agent protocol spells it. */
export function commandToMessage(c: AgentCommand): MessageInitShape<typeof AgentCommandSchema> {
  switch (c.kind) {
    case "drain":
      return { commandId: c.id, command: { case: "drain", value: {} } };
    case "ssh":
      return {
        commandId: c.id,
        command: {
          case: "openSshTunnel",
          value: { tunnelId: c.tunnelId, environmentId: c.environmentId, authorizedKeys: c.authorizedKeys },
        },
      };
    case "stop":
    case "remove": {
      const value = { environmentId: c.environmentId, generation: BigInt(c.generation) };
      return { commandId: c.id, command: c.kind === "stop" ? { case: "stopEnvironment", value } : { case: "removeEnvironment", value } };
    }
    case "run": {
      const s = c.spec;
      return {
        commandId: c.id,
        command: {
          case: "runEnvironment",
          value: {
            environmentId: s.environmentId,
            workspaceId: s.workspaceId,
            image: s.image,
            command: s.command,
            args: s.args,
            env: s.env,
            gpuUuids: s.gpuUuids,
            gpuIndices: s.gpuIndices,
            ports: s.ports.map((p) => ({
              name: p.name,
              containerPort: p.containerPort,
              hostPort: p.hostPort,
              protocol: p.protocol === "HTTP" ? PortProtocol.HTTP : PortProtocol.TCP,
            })),
            cpuMillicores: BigInt(s.cpuMillicores),
            memoryBytes: BigInt(s.memoryBytes),
            sshPublicKeys: s.sshPublicKeys,
            generation: BigInt(s.generation),
          },
        },
      };
    }
  }
}
