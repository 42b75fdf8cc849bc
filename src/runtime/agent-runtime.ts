import { UnavailableError } from "../errors.js";
import type { AgentCommandInput, AgentSessions } from "../host/agent-sessions.js";
import type { Runtime, WorkloadSpec } from "./runtime.js";

/**
 * The embedded runtime: commands go down the host's agent stream; the agent reports the workload's
 * states back up the same stream. An agent that is not connected cannot be asked; the reconciler
 * retries until it is, or until the host is given up on.
 */
export class AgentRuntime implements Runtime {
  constructor(private readonly agents: AgentSessions) {}

  async run(spec: WorkloadSpec): Promise<void> {
    this.deliver(spec.hostId, { kind: "run", spec });
  }

  async stop(environmentId: string, hostId: string, generation: number): Promise<void> {
    this.deliver(hostId, { kind: "stop", environmentId, generation });
  }

  async remove(environmentId: string, hostId: string, generation: number): Promise<void> {
    this.deliver(hostId, { kind: "remove", environmentId, generation });
  }

  private deliver(hostId: string, command: AgentCommandInput): void {
    if (!this.agents.send(hostId, command)) throw new UnavailableError(`the agent of host ${hostId} is not connected`);
  }
}
