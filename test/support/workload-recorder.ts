import type { StatusReport, WorkloadEvents, WorkloadLogLine, WorkloadSpec, WorkloadState as State } from "../../agent/src/workloads.js";
import { publishablePorts } from "./child.js";

/** Resolves with `find()`'s first defined value, re-checked on each `poke`; fails naming `what` after `ms`. */
export class Waiter {
  private pokes = new Set<() => void>();

  poke(): void {
    for (const p of this.pokes) p();
  }

  until<T>(what: string, find: () => T | undefined, ms = 20_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = find();
        if (found === undefined) return;
        done();
        resolve(found);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`waited ${ms} ms for ${what}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.pokes.delete(check);
      };
      this.pokes.add(check);
      check();
    });
  }
}

/** Every event the Workloads emit, in order. */
export class Recorder extends Waiter implements WorkloadEvents {
  readonly statuses: StatusReport[] = [];
  readonly lines: (WorkloadLogLine & { environmentId: string })[] = [];

  status(report: StatusReport): void {
    this.statuses.push(report);
    this.poke();
  }

  logs(environmentId: string, lines: WorkloadLogLine[]): void {
    for (const l of lines) this.lines.push({ environmentId, ...l });
    this.poke();
  }

  /** The first report for `id` in `state` (of `generation`, when given), past or future. */
  state(id: string, state: State, generation?: number): Promise<StatusReport> {
    const what = `${id} ${state}${generation === undefined ? "" : ` (generation ${generation})`}; reports so far: ${this.describe(id)}`;
    return this.until(what, () =>
      this.statuses.find((s) => s.environmentId === id && s.state === state && (generation === undefined || s.generation === generation)),
    );
  }

  line(id: string, match: (l: WorkloadLogLine) => boolean, what: string): Promise<WorkloadLogLine> {
    return this.until(`log line ${what} of ${id}; lines so far: ${JSON.stringify(this.texts(id))}`, () =>
      this.lines.find((l) => l.environmentId === id && match(l)),
    );
  }

  count(id: string, state: State): number {
    return this.statuses.filter((s) => s.environmentId === id && s.state === state).length;
  }

  texts(id: string): string[] {
    return this.lines.filter((l) => l.environmentId === id).map((l) => `${l.stream} ${l.text}`);
  }

  describe(id: string): string {
    return this.statuses
      .filter((s) => s.environmentId === id)
      .map((s) => `${s.state}/${s.generation} ${s.message}`)
      .join(", ");
  }
}

export function spec(environmentId: string, command: string[], more: Partial<WorkloadSpec> = {}): WorkloadSpec {
  return {
    environmentId,
    workspaceId: "ws-1",
    image: "",
    command,
    args: [],
    env: {},
    gpuUuids: [],
    gpuIndices: [],
    ports: [],
    generation: 1,
    ...more,
  };
}

/** Two free ports, fit for a container engine to publish (see publishablePorts). */
export async function twoPorts(): Promise<[number, number]> {
  const first = await publishablePorts(2);
  return [first, first + 1];
}
