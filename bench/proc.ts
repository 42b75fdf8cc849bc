// What a bench reads of a process from Linux's /proc.
import { readFileSync } from "node:fs";

/** CPU seconds (user and system) process `pid` has used: utime and stime of /proc/PID/stat, in 1/100 s. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // from field 3, the state
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident memory of process `pid` now, in MiB. */
export function rssMiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}
