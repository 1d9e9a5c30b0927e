// ComfyUI-HY-WU frontend extension.
// - gives the pack's nodes (category "HY-WU") one colour;
// - after HYWUGenerateLoRA runs, draws its per-layer update norms as a bar chart on the node,
//   with the layer name and value shown while the pointer is over a bar;
// - shows the text a node reports after running (e.g. HYWUSaveLoRA's file name) on the node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const HYWU_COLOR = "#1d3b33";
const HYWU_BGCOLOR = "#2b5247";
const SUMMARY_WIDGET = "hywu_summary";
const CHART_HEIGHT = 90;
const CHART_MARGIN = 10;

function showSummary(node, text) {
  let widget = node.widgets?.find((w) => w.name === SUMMARY_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, SUMMARY_WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.8;
    }
  }
  widget.value = text;
  node.setDirtyCanvas(true, true);
}

// The chart sits at the bottom of the node; returns its rectangle in node coordinates.
function chartRect(node) {
  const width = node.size[0] - 2 * CHART_MARGIN;
  return { x: CHART_MARGIN, y: node.size[1] - CHART_HEIGHT - CHART_MARGIN, width, height: CHART_HEIGHT };
}

function barAt(node, localX, localY) {
  const norms = node.hywuNorms;
  if (!norms) return -1;
  const rect = chartRect(node);
  if (localX < rect.x || localX > rect.x + rect.width || localY < rect.y || localY > rect.y + rect.height) return -1;
  const index = Math.floor(((localX - rect.x) / rect.width) * norms.mean.length);
  return Math.min(Math.max(index, 0), norms.mean.length - 1);
}

function drawChart(node, ctx) {
  const norms = node.hywuNorms;
  if (!norms || !norms.mean.length) return;
  const rect = chartRect(node);
  const top = Math.max(...norms.mean, 1e-12);
  const barWidth = rect.width / norms.mean.length;
  ctx.save();
  ctx.fillStyle = "rgba(0, 0, 0, 0.25)";
  ctx.fillRect(rect.x, rect.y, rect.width, rect.height);
  norms.mean.forEach((value, i) => {
    const height = (value / top) * (rect.height - 14);
    ctx.fillStyle = i === node.hywuHover ? "#f2c94c" : "#6fcf97";
    ctx.fillRect(rect.x + i * barWidth + 1, rect.y + rect.height - height, Math.max(barWidth - 2, 1), height);
  });
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  const label = node.hywuHover >= 0
    ? `${norms.layers[node.hywuHover]}: ${norms.mean[node.hywuHover].toPrecision(4)}`
    : `update norm per layer (max ${top.toPrecision(3)})`;
  ctx.fillText(label, rect.x + 4, rect.y + 11);
  ctx.restore();
  node.hywuChartDrawn = norms.mean.length;
}

function addNormsChart(nodeType) {
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (output) {
    const result = onExecuted?.apply(this, arguments);
    if (output?.hywu_norms?.length) {
      this.hywuNorms = output.hywu_norms[0];
      this.hywuHover = -1;
      const needed = this.computeSize()[1] + CHART_HEIGHT + 2 * CHART_MARGIN;
      if (this.size[1] < needed) this.setSize([Math.max(this.size[0], 260), needed]);
      this.setDirtyCanvas(true, true);
    }
    return result;
  };
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx) {
    const result = onDrawForeground?.apply(this, arguments);
    if (!this.flags?.collapsed) drawChart(this, ctx);
    return result;
  };
  const onMouseMove = nodeType.prototype.onMouseMove;
  nodeType.prototype.onMouseMove = function (event, localPos) {
    const result = onMouseMove?.apply(this, arguments);
    const hover = localPos ? barAt(this, localPos[0], localPos[1]) : -1;
    if (hover !== this.hywuHover) {
      this.hywuHover = hover;
      this.setDirtyCanvas(true, false);
    }
    return result;
  };
}

app.registerExtension({
  name: "HYWU.Nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.category || "").startsWith("HY-WU")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = HYWU_COLOR;
      this.bgcolor = HYWU_BGCOLOR;
      return result;
    };
    if (nodeData.name === "HYWUGenerateLoRA") {
      addNormsChart(nodeType);
      return;
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      if (output?.text?.length) showSummary(this, output.text.join("\n"));
      return result;
    };
  },
});
