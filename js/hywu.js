// ComfyUI-HY-WU frontend extension.
// - gives the pack's nodes (category "HY-WU") one colour;
// - after HYWUGenerateLoRA runs, shows its per-layer update norms as a bar chart on the node, with
//   the layer name and value shown while the pointer is over a bar;
// - shows the text a node reports after running (e.g. HYWUSaveLoRA's file name) on the node;
// - when one of the pack's nodes fails, shows its error text in a red box on that node until the
//   next run starts.
// All three are DOM widgets (node.addDOMWidget) holding our own elements, drawn by us and fed by our
// own pointer events: one drawing path that both renderers show.
//
// Only the public extension API is used: `app` (scripts/app.js), `api` (scripts/api.js),
// app.registerExtension hooks, and LiteGraph node methods (addDOMWidget, removeWidget, computeSize,
// setSize, setDirtyCanvas). scripts/widgets.js (ComfyWidgets) is internal: frontend 1.58.1 logs
// '"scripts/widgets.js" is an internal module, not part of the public API' when it is imported.
//
// Facts this relies on, checked against ComfyUI 0.3.75 (execution.py, server.py) with the bundled
// frontend 1.32.9 and with comfyui-frontend-package 1.58.1 (tests/browser runs both, each in the
// classic LiteGraph renderer and in Vue nodes, "Nodes 2.0", setting Comfy.VueNodes.Enabled):
// - `api` is an EventTarget: every websocket message becomes a CustomEvent named by its type, with
//   the message data as `detail`; "executing" alone carries just a node id (display_node || node).
// - Messages go only to the client that queued the prompt. A prompt sends "execution_start"
//   {prompt_id, timestamp} first, "executing" for each node that runs (not for cached ones),
//   "executed" {node, display_node, output, prompt_id} for each node with UI output that runs or
//   that the run reaches cached (the inner nodes of a fully cached prompt are not reached), then
//   "execution_success", "execution_interrupted" or "execution_error" {prompt_id, node_id,
//   node_type, executed, exception_message, exception_type, traceback, current_inputs,
//   current_outputs}; exception_message is str(exception) plus a newline. On "executed" the app
//   calls node.onExecuted(output) in both renderers.
// - node_id is an execution id: "12" for a node of the root graph, "5:12" for node 12 inside
//   subgraph node 5. app.graph is the root graph.
// - On "execution_error" the stock frontend outlines the node and opens its error dialog (1.32.9) or
//   a "<node> failed ... View details" toast (1.58.1; Vue nodes add an "Error" tab to the node); on
//   "execution_start" it forgets the error.
// - LiteGraph calls node.onDrawForeground only in the classic renderer; Vue nodes never call it, so
//   nothing here draws on the LiteGraph canvas.
// - node.addDOMWidget(name, type, element, options) exists in both frontends. Classic: the element
//   is laid over the canvas at the widget's place, sized from options.getMinHeight/getMaxHeight
//   (plus options.margin, default 10, around it) and CSS-scaled with the canvas zoom (ResizeObserver
//   does not see that scale; options.onDraw runs as the canvas draws the widget); with hideOnZoom
//   (default true) a plain box stands in for it when zoomed out. Vue nodes: a type that is not one of the
//   frontend's widget types is mounted as the element itself (component "WidgetDOM"), without the
//   widget's name or label, in the node's normal layout flow. Neither renderer shows a DOM widget's
//   name; widget.label is what panels that list widgets show.
// - A node that grows may overlap the node below it. app.canvas.bringToFront(node) raises it in the
//   classic renderer and in 1.58.1's Vue nodes; 1.32.9's Vue nodes keep their stacking order (by
//   creation), so there a node below may cover the lower part of the box (the stock frontend also
//   outlines the failing node in red and shows the same message in its error dialog).
// - A saved node's widgets_values holds values by widget index (in 1.32.9 a widget with
//   serialize === false leaves a hole), so the pack's widgets are only ever appended after the node's own.
// - options.serialize === false keeps a widget out of the prompt; widget.serialize === false keeps
//   its value out of the saved workflow's widgets_values.
// - Custom node templates (/api/workflow_templates, app/custom_node_manager.py) are the *.json files
//   of the pack's workflows/ folder listed by file name; both frontends title a template card with
//   that name and load its thumbnail from /api/workflow_templates/<pack folder>/<name>.jpg.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const HYWU_COLOR = "#1d3b33";
const HYWU_BGCOLOR = "#2b5247";
const CHART_WIDGET = "hywu_norms";
const SUMMARY_WIDGET = "hywu_summary";
const ERROR_WIDGET = "hywu_error";
const CHART_HEIGHT = 110;          // the chart element: a caption line over the bars
const CAPTION_HEIGHT = 18;
const CHART_MIN_WIDTH = 280;
const CHART_BACKGROUND = "#17302a";
const BAR_COLOR = "#6fcf97";
const HOVER_COLOR = "#f2c94c";
const ERROR_FONT_SIZE = 12;
const ERROR_LINE_HEIGHT = 16;
const ERROR_PADDING = 6;
const ERROR_MAX_HEIGHT = 240;
const SUMMARY_MAX_HEIGHT = 160;

// A DOM widget that never reaches the prompt or the saved workflow.
function addElementWidget(node, name, type, label, element, minHeight, maxHeight, onDraw) {
  const widget = node.addDOMWidget(name, type, element, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: minHeight,
    getMaxHeight: maxHeight,
    onDraw,  // classic renderer: called as the canvas draws the widget
  });
  widget.serialize = false;
  widget.label = label;
  return widget;
}

// Grow the node to fit its widgets (never shrink what the user chose), and raise it over the nodes it
// may now overlap (app.canvas.bringToFront: the classic renderer and 1.58.1's Vue nodes follow it).
function fitNode(node, minWidth = 0) {
  const [width, height] = node.size;
  const [needWidth, needHeight] = node.computeSize();
  const size = [Math.max(width, needWidth, minWidth), Math.max(height, needHeight)];
  if (size[0] !== width || size[1] !== height) {
    node.setSize(size);
    if (node.graph === app.canvas?.graph) app.canvas.bringToFront?.(node);
  }
  node.setDirtyCanvas(true, true);
}

// The height a text element needs at the node's width, plus the widget's margins: what the classic
// renderer gets from getMinHeight/getMaxHeight (it sets the element's size itself, while the Vue nodes
// layout gives the element its own content height). Measured on an invisible copy of the element.
const DOM_WIDGET_MARGIN = 10;  // the frontend's default options.margin around a DOM widget
function contentHeight(node, element, maxHeight) {
  const probe = element.cloneNode(true);
  Object.assign(probe.style, {
    position: "absolute", visibility: "hidden", left: "-10000px", top: "0", height: "auto", maxHeight: "none",
    width: `${Math.max(node.size[0] - 2 * DOM_WIDGET_MARGIN, 40)}px`, transform: "none",
  });
  document.body.append(probe);
  const height = probe.offsetHeight;
  probe.remove();
  return Math.min(height, maxHeight) + 2 * DOM_WIDGET_MARGIN;
}

// ---- the update-norm chart (HYWUGenerateLoRA) ----

// The chart's state lives on its element: element.hywuNorms {layers, mean}, element.hywuHover.
function chartCaption(element) {
  const norms = element.hywuNorms;
  if (!norms?.mean.length) return "no update norms yet: run the workflow";
  const i = element.hywuHover;
  if (i >= 0) return `${norms.layers[i]}: ${norms.mean[i].toPrecision(4)}`;
  return `update norm per layer (max ${Math.max(...norms.mean).toPrecision(3)})`;
}

function drawChart(element) {
  const canvas = element.querySelector("canvas");
  const caption = element.querySelector(".hywu-chart-caption");
  caption.textContent = chartCaption(element);
  const box = canvas.getBoundingClientRect();
  if (!canvas.clientWidth || !canvas.clientHeight) return;  // not laid out (hidden): drawn when shown
  // device pixels of the element as shown (the classic renderer CSS-scales it with the canvas zoom)
  const scale = (window.devicePixelRatio || 1) * Math.max(1, box.width / canvas.clientWidth);
  const width = Math.round(canvas.clientWidth * scale);
  const height = Math.round(canvas.clientHeight * scale);
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = CHART_BACKGROUND;
  ctx.fillRect(0, 0, width, height);
  const norms = element.hywuNorms;
  if (!norms?.mean.length) return;
  const top = Math.max(...norms.mean, 1e-12);
  const barWidth = width / norms.mean.length;
  const gap = barWidth > 4 ? Math.max(1, Math.round(scale)) : 0;
  norms.mean.forEach((value, i) => {
    const barHeight = Math.round((value / top) * (height - 2 * scale));
    ctx.fillStyle = i === element.hywuHover ? HOVER_COLOR : BAR_COLOR;
    const left = Math.round(i * barWidth) + gap;
    const right = Math.round((i + 1) * barWidth) - gap;
    ctx.fillRect(left, height - barHeight, Math.max(right - left, 1), barHeight);
  });
  element.dataset.drawn = String(Number(element.dataset.drawn ?? 0) + 1);
}

function setHover(element, hover) {
  if (hover === element.hywuHover) return;
  element.hywuHover = hover;
  drawChart(element);
}

function createChartElement() {
  const element = document.createElement("div");
  element.className = "hywu-norms-chart";
  Object.assign(element.style, {
    display: "flex", flexDirection: "column", boxSizing: "border-box", height: `${CHART_HEIGHT}px`,
    minHeight: `${CHART_HEIGHT}px`, padding: "2px", borderRadius: "4px", background: CHART_BACKGROUND,
    overflow: "hidden",
  });
  const caption = document.createElement("div");
  caption.className = "hywu-chart-caption";
  Object.assign(caption.style, {
    height: `${CAPTION_HEIGHT}px`, lineHeight: `${CAPTION_HEIGHT}px`, font: "11px sans-serif",
    color: "#ddd", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", padding: "0 4px",
  });
  const canvas = document.createElement("canvas");
  Object.assign(canvas.style, { display: "block", width: "100%", flex: "1 1 auto", minHeight: "0", cursor: "crosshair" });
  element.append(caption, canvas);
  element.hywuHover = -1;
  // hover from the element's own pointer events: the bar under the pointer, by its x across the canvas
  canvas.addEventListener("pointermove", (event) => {
    const norms = element.hywuNorms;
    const box = canvas.getBoundingClientRect();
    if (!norms?.mean.length || !box.width) return setHover(element, -1);
    const x = (event.clientX - box.left) / box.width;
    const y = (event.clientY - box.top) / box.height;
    const inside = x >= 0 && x < 1 && y >= 0 && y <= 1;
    setHover(element, inside ? Math.min(Math.floor(x * norms.mean.length), norms.mean.length - 1) : -1);
  });
  canvas.addEventListener("pointerleave", () => setHover(element, -1));
  // redrawn at its shown size whenever the node (classic) or the layout (Vue nodes) resizes it
  new ResizeObserver(() => drawChart(element)).observe(canvas);
  return element;
}

function showNorms(node, norms) {
  let widget = node.widgets?.find((w) => w.name === CHART_WIDGET);
  if (!widget) {
    // the classic renderer zooms the element with a CSS transform: redraw at the new device pixel size
    const element = createChartElement();
    const onDraw = () => {
      const canvas = element.querySelector("canvas");
      const shown = Math.round(canvas.getBoundingClientRect().width * (window.devicePixelRatio || 1));
      if (canvas.clientWidth && Math.abs(shown - canvas.width) > 1 && shown > canvas.width) drawChart(element);
    };
    widget = addElementWidget(node, CHART_WIDGET, "hywu_norms_chart", "update norms", element,
                              () => CHART_HEIGHT + 2 * DOM_WIDGET_MARGIN,
                              () => CHART_HEIGHT + 2 * DOM_WIDGET_MARGIN, onDraw);
  }
  widget.element.hywuNorms = { layers: [...norms.layers], mean: [...norms.mean] };
  widget.element.hywuHover = -1;
  fitNode(node, CHART_MIN_WIDTH);
  drawChart(widget.element);
}

// ---- the text a node reports (e.g. HYWUSaveLoRA's file name) ----

function showSummary(node, text) {
  let widget = node.widgets?.find((w) => w.name === SUMMARY_WIDGET);
  if (!widget) {
    const element = document.createElement("div");
    element.className = "hywu-summary";
    Object.assign(element.style, {
      boxSizing: "border-box", padding: "4px 6px", borderRadius: "4px", background: "rgba(0, 0, 0, 0.25)",
      color: "#ddd", font: "12px monospace", whiteSpace: "pre-wrap", overflowWrap: "anywhere",
      overflow: "auto", userSelect: "text", maxHeight: `${SUMMARY_MAX_HEIGHT}px`,
    });
    const height = () => contentHeight(node, element, SUMMARY_MAX_HEIGHT);
    widget = addElementWidget(node, SUMMARY_WIDGET, "hywu_summary_text", "result", element, height, height);
  }
  widget.element.textContent = text;
  fitNode(node);
}

// ---- the error box of a failing HY-WU node ----

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

function showError(node, message) {
  let widget = node.widgets?.find((w) => w.name === ERROR_WIDGET);
  if (!widget) {
    const element = document.createElement("div");
    element.className = "hywu-error";
    element.setAttribute("role", "alert");
    Object.assign(element.style, {
      boxSizing: "border-box", padding: `${ERROR_PADDING}px`, borderRadius: "6px", background: "#5c1414",
      border: "2px solid #ff5c5c", color: "#ffe3e3", font: `${ERROR_FONT_SIZE}px sans-serif`,
      lineHeight: `${ERROR_LINE_HEIGHT}px`, whiteSpace: "pre-wrap", overflowWrap: "anywhere", overflow: "auto",
      maxHeight: `${ERROR_MAX_HEIGHT}px`, userSelect: "text",
    });
    const title = document.createElement("div");
    title.style.fontWeight = "bold";
    const text = document.createElement("div");
    text.className = "hywu-error-text";
    element.append(title, text);
    node.hywuSizeBeforeError = [...node.size];
    const height = () => contentHeight(node, element, ERROR_MAX_HEIGHT);
    widget = addElementWidget(node, ERROR_WIDGET, "hywu_error_box", "error", element, height, height);
  }
  widget.element.firstChild.textContent = `${node.type} failed:`;
  widget.element.querySelector(".hywu-error-text").textContent = message;
  failedNodes.add(node);
  fitNode(node);
}

function clearError(node) {
  const widget = node.widgets?.find((w) => w.name === ERROR_WIDGET);
  if (widget) {
    node.removeWidget(widget);
    widget.element.remove();
    // back to the height the node had before the box (or what its widgets need now, if more)
    const [needWidth, needHeight] = node.computeSize();
    const before = node.hywuSizeBeforeError ?? [0, 0];
    delete node.hywuSizeBeforeError;
    node.setSize([Math.max(node.size[0], needWidth), Math.max(needHeight, before[1])]);
  }
  node.setDirtyCanvas(true, true);
}

function clearErrors() {
  for (const node of failedNodes) clearError(node);
  failedNodes.clear();
}

function onExecutionError({ detail }) {
  if (!String(detail?.node_type ?? "").startsWith("HYWU")) return;
  const node = nodeByExecutionId(detail.node_id);
  if (node) showError(node, String(detail.exception_message).trim());
}

app.registerExtension({
  name: "HYWU.Nodes",
  setup() {
    api.addEventListener("execution_start", clearErrors);
    api.addEventListener("execution_error", onExecutionError);
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
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      failedNodes.delete(this);
      return onRemoved?.apply(this, arguments);
    };
    const chart = nodeData.name === "HYWUGenerateLoRA";
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      if (chart && output?.hywu_norms?.length) showNorms(this, output.hywu_norms[0]);
      else if (!chart && output?.text?.length) showSummary(this, output.text.join("\n"));
      return result;
    };
  },
});
