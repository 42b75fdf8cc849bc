/** Human-readable output: aligned tables and compact units. */

/** Columns padded to their widest cell; columns named in `right` are right-aligned (numbers). */
export function table(headers: string[], rows: string[][], right: number[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (right.includes(i) ? c.padStart(widths[i]!) : i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function bytes(n: bigint | number): string {
  let v = Number(n);
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${UNITS[u]}`;
}

/** "4s ago", "3m ago", "2h ago", "5d ago"; "never" without a time. */
export function age(time: Date | undefined, now = new Date()): string {
  if (!time) return "never";
  const s = Math.max(0, Math.round((now.getTime() - time.getTime()) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/** used/limit as a percentage; "-" without a limit. */
export function percent(used: number, limit: number | undefined): string {
  if (limit === undefined) return "-";
  if (limit === 0) return used === 0 ? "0%" : "over";
  return `${Math.round((used / limit) * 100)}%`;
}
