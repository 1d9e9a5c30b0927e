// ComfyUI-HY-WU frontend extension.
// - gives the pack's nodes (category "HY-WU") one colour;
// - after HYWUGenerateLoRA runs, draws its per-layer update norms as a bar chart on the node,
//   with the layer name and value shown while the pointer is over a bar;
// - shows the text a node reports after running (e.g. HYWUSaveLoRA's file name) on the node;
// - when one of the pack's nodes fails, draws its error text in a red box under that node.
//
// ComfyUI 0.3.75 (execution.py) with frontend 1.32.9 (scripts/api.ts, scripts/app.ts):
// - `api` is an EventTarget: every websocket message becomes a CustomEvent named by its type, with
//   the message data as `detail`; "executing" alone carries just a node id (display_node || node).
// - Messages go only to the client that queued the prompt. A prompt sends "execution_start"
//   {prompt_id, timestamp} first, "executing" for each node that runs (not for cached ones),
//   "executed" {node, display_node, output, prompt_id} for each node with UI output that runs or
//   that the run reaches cached (the inner nodes of a fully cached prompt are not reached), then
//   "execution_success", "execution_interrupted" or "execution_error" {prompt_id, node_id,
//   node_type, executed, exception_message, exception_type, traceback, current_inputs,
//   current_outputs}; exception_message is str(exception) plus a newline.
// - node_id is an execution id: "12" for a node of the root graph, "5:12" for node 12 inside
//   subgraph node 5. app.graph is the root graph.
// - On "execution_error" the stock frontend opens its error dialog and outlines the node; on
//   "execution_start" it forgets the error. LiteGraph calls node.onDrawForeground(ctx) in node
//   coordinates (origin at the body's top-left, the title above it), also for a collapsed node,
//   but not in the Vue nodes mode (Comfy.VueNodes.Enabled), which draws neither chart nor box.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const HYWU_COLOR = "#1d3b33";
const HYWU_BGCOLOR = "#2b5247";
const SUMMARY_WIDGET = "hywu_summary";
const CHART_HEIGHT = 90;
const CHART_MARGIN = 10;
const ERROR_FONT_SIZE = 12;
const ERROR_PADDING = 6;
const ERROR_MIN_WIDTH = 240;

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
  // hywuHoverText: the drawn "layer: value" of the bar under the pointer, null when none
  node.hywuHoverText = node.hywuHover >= 0
    ? `${norms.layers[node.hywuHover]}: ${norms.mean[node.hywuHover].toPrecision(4)}`
    : null;
  ctx.fillText(node.hywuHoverText ?? `update norm per layer (max ${top.toPrecision(3)})`, rect.x + 4, rect.y + 11);
  ctx.restore();
  node.hywuChartDrawn = norms.mean.length;
}

// The error text in lines that fit `width` at the current font (words longer than a line stay whole).
function wrapText(ctx, text, width) {
  const lines = [];
  for (const paragraph of text.split("\n")) {
    let line = "";
    for (const word of paragraph.split(/\s+/).filter(Boolean)) {
      const candidate = line ? `${line} ${word}` : word;
      if (line && ctx.measureText(candidate).width > width) {
        lines.push(line);
        line = word;
      } else {
        line = candidate;
      }
    }
    lines.push(line);
  }
  return lines;
}

// A red box under the node (under the title when collapsed) with the node's error message.
function drawError(node, ctx) {
  const [nodeWidth, nodeHeight] = node.renderingSize;
  const width = Math.max(nodeWidth, ERROR_MIN_WIDTH);
  const lineHeight = ERROR_FONT_SIZE + 3;
  ctx.save();
  ctx.font = `${ERROR_FONT_SIZE}px sans-serif`;
  const lines = [`${node.type} failed:`, ...wrapText(ctx, node.hywuError, width - 2 * ERROR_PADDING)];
  const top = nodeHeight + 8;
  const height = lines.length * lineHeight + 2 * ERROR_PADDING;
  ctx.globalAlpha = 1;
  ctx.fillStyle = "#5c1414";
  ctx.strokeStyle = "#ff5c5c";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.roundRect(0, top, width, height, 6);
  ctx.fill();
  ctx.stroke();
  ctx.fillStyle = "#ffe3e3";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  lines.forEach((line, i) => ctx.fillText(line, ERROR_PADDING, top + ERROR_PADDING + i * lineHeight));
  ctx.restore();
  node.hywuErrorDrawn = (node.hywuErrorDrawn ?? 0) + 1;
}

// Nodes showing an error; every run starts with "execution_start", which clears them all.
const failedNodes = new Set();

function nodeByExecutionId(executionId) {
  let graph = app.graph;
  let node = null;
  for (const id of String(executionId).split(":")) {
    node = graph?.getNodeById(id) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

function clearErrors() {
  for (const node of failedNodes) {
    delete node.hywuError;
    node.setDirtyCanvas(true, true);
  }
  failedNodes.clear();
}

function showError({ detail }) {
  if (!String(detail?.node_type ?? "").startsWith("HYWU")) return;
  const node = nodeByExecutionId(detail.node_id);
  if (!node) return;
  node.hywuError = String(detail.exception_message).trim();
  failedNodes.add(node);
  node.setDirtyCanvas(true, true);
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
  const setHover = (node, hover) => {
    if (hover === node.hywuHover) return;
    node.hywuHover = hover;
    node.setDirtyCanvas(true, false);
  };
  const onMouseMove = nodeType.prototype.onMouseMove;
  nodeType.prototype.onMouseMove = function (event, localPos) {
    const result = onMouseMove?.apply(this, arguments);
    setHover(this, localPos ? barAt(this, localPos[0], localPos[1]) : -1);
    return result;
  };
  // LiteGraph calls onMouseMove only while the pointer is over the node
  const onMouseLeave = nodeType.prototype.onMouseLeave;
  nodeType.prototype.onMouseLeave = function () {
    const result = onMouseLeave?.apply(this, arguments);
    setHover(this, -1);
    return result;
  };
}

app.registerExtension({
  name: "HYWU.Nodes",
  setup() {
    api.addEventListener("execution_start", clearErrors);
    api.addEventListener("execution_error", showError);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.category || "").startsWith("HY-WU")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = HYWU_COLOR;
      this.bgcolor = HYWU_BGCOLOR;
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (this.hywuError) drawError(this, ctx);
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
