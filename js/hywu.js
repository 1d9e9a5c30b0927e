// ComfyUI-HY-WU frontend extension: gives the pack's nodes (category "HY-WU") one colour, and
// shows the text a node reports after running (HYWUGenerateLoRA: per-layer update norms) on the node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const HYWU_COLOR = "#1d3b33";
const HYWU_BGCOLOR = "#2b5247";
const SUMMARY_WIDGET = "hywu_summary";

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
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      if (output?.text?.length) showSummary(this, output.text.join("\n"));
      return result;
    };
  },
});
