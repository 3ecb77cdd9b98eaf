// Line charts with the vendored uPlot (static/vendor, loaded before the page's module).
const COLOURS = ["#1f5fbf", "#b3261e", "#1b7f3b", "#8a4fbf", "#b36b00", "#00707a"];

// Ticks on whole steps only.
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

export class LineChart {
  constructor(container, yLabel) {
    this.container = container;
    this.yLabel = yLabel;
    this.plot = null;
    this.names = [];
    window.addEventListener("resize", () => this.plot?.setSize(this.size()));
  }

  size() {
    return { width: Math.max(280, this.container.clientWidth - 8), height: 260 };
  }

  // names: one per series; data: [steps, ...one array per series, null where a step has no value].
  update(names, data) {
    const points = data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null && y !== undefined).length, 0);
    this.container.dataset.points = String(points);
    if (!this.plot || names.join("\u0000") !== this.names.join("\u0000")) {
      this.plot?.destroy();
      this.names = names;
      const series = [
        { label: "step" },
        ...names.map((label, i) => ({ label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true })),
      ];
      const opts = {
        ...this.size(),
        series,
        scales: { x: { time: false } }, // steps, not timestamps
        axes: [{ label: "step", incrs: STEP_INCREMENTS }, { label: this.yLabel }],
      };
      this.plot = new window.uPlot(opts, data, this.container);
    } else {
      this.plot.setData(data);
    }
  }
}

// Several series sampled at different steps, merged onto one sorted step axis.
export function align(seriesList) {
  const steps = [...new Set(seriesList.flatMap((s) => s.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const columns = seriesList.map((s) => {
    const ys = new Array(steps.length).fill(null);
    for (const [x, y] of s) ys[index.get(x)] = typeof y === "number" && Number.isFinite(y) ? y : null;
    return ys;
  });
  return [steps, ...columns];
}
