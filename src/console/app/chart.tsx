import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";

/** Columns as uPlot takes them: times in seconds, then one array per series (null where absent). */
export type Columns = [number[], ...(number | null)[][]];

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"];

/**
 * A small time-series plot (uPlot draws on a canvas). It fills its container's width and redraws
 * when `data` changes; the series are named by `labels`. The time axis spans the last `spanSeconds`;
 * `max` fixes the top of the value axis (100 for percentages).
 */
export function Chart({
  title,
  unit,
  labels,
  data,
  spanSeconds,
  max,
}: { title: string; unit: string; labels: string[]; data: Columns; spanSeconds: number; max?: number }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const key = `${labels.join("\n")} ${spanSeconds}`;

  useEffect(() => {
    const el = box.current!;
    const styles = getComputedStyle(document.documentElement);
    const ink = styles.getPropertyValue("--ink").trim() || "#222";
    const grid = styles.getPropertyValue("--line").trim() || "#ddd";
    const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: 180,
      series: [
        {},
        ...labels.map((label, i) => ({
          label,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: true,
          points: { show: false },
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : `${v.toFixed(1)} ${unit}`),
        })),
      ],
      axes: [axis, { ...axis, size: 50, values: (_u, ticks) => ticks.map((t) => `${t}`) }],
      scales: {
        x: { time: true, range: () => [Date.now() / 1000 - spanSeconds, Date.now() / 1000] },
        ...(max === undefined ? {} : { y: { range: [0, max] as uPlot.Range.MinMax } }),
      },
      legend: { show: labels.length > 1 },
    };
    plot.current = new uPlot(opts, data as uPlot.AlignedData, el);
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(200, el.clientWidth), height: 180 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [key, unit]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  const points = data.slice(1).reduce((n, s) => n + s.filter((v) => v !== null).length, 0);
  return (
    <figure class="chart" data-points={points}>
      <figcaption>
        {title} ({unit})
      </figcaption>
      <div ref={box} role="img" aria-label={`${title} over time, ${points} points`} />
    </figure>
  );
}
