// The job page's curves with plotly.js (served from the installed plotly package): one chart per
// quantity, a trace per metric, redrawn at most a few times a second however fast events arrive.

const CHARTS = [
  { id: "chart-loss", title: "Loss", metrics: ["train_loss", "valid_loss", "full_valid_loss"] },
  { id: "chart-accuracy", title: "Mean token accuracy",
    metrics: ["train_mean_token_accuracy", "valid_mean_token_accuracy", "full_valid_mean_token_accuracy"] },
  { id: "chart-lr", title: "Learning rate", metrics: ["learning_rate"] },
];
const REDRAW_MS = 250;
// Per-step metrics are drawn as lines; the sparse validation ones also get markers.
const DENSE = new Set(["train_loss", "train_mean_token_accuracy", "learning_rate"]);

export class JobCharts {
  constructor(container) {
    this.series = new Map();
    this.pending = null;
    this.elements = CHARTS.map((chart) => {
      const element = document.createElement("div");
      element.className = "chart";
      element.id = chart.id;
      container.append(element);
      for (const metric of chart.metrics) this.series.set(metric, new Map());
      return [chart, element];
    });
  }

  // Adds one metrics event's data; a step seen again (after a resume) keeps its latest values.
  add(data) {
    for (const [metric, points] of this.series) {
      const value = data[metric];
      if (typeof value === "number" && Number.isFinite(value)) points.set(data.step, value);
    }
    this.schedule();
  }

  schedule() {
    if (this.pending === null) this.pending = setTimeout(() => this.draw(), REDRAW_MS);
  }

  draw() {
    this.pending = null;
    for (const [chart, element] of this.elements) {
      const traces = chart.metrics.map((metric) => {
        const steps = [...this.series.get(metric).keys()].sort((a, b) => a - b);
        return {
          name: metric, x: steps, y: steps.map((step) => this.series.get(metric).get(step)),
          type: "scatter", mode: DENSE.has(metric) ? "lines" : "lines+markers",
          line: { simplify: false }, // a vertex per step, even where points are collinear
        };
      }).filter((trace) => trace.x.length > 0);
      const layout = {
        title: { text: chart.title, font: { size: 14 } }, margin: { l: 50, r: 10, t: 36, b: 80 },
        xaxis: { title: { text: "step" } }, legend: { orientation: "h", y: -0.35 }, showlegend: true,
      };
      window.Plotly.react(element, traces, layout, { displaylogo: false, responsive: true });
    }
  }
}
