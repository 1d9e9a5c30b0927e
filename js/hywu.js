// ComfyUI-HY-WU frontend extension: gives the pack's nodes (category "HY-WU") one colour so
// they stand out on the canvas.
import { app } from "../../scripts/app.js";

const HYWU_COLOR = "#1d3b33";
const HYWU_BGCOLOR = "#2b5247";

app.registerExtension({
  name: "HYWU.NodeColors",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.category || "").startsWith("HY-WU")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = HYWU_COLOR;
      this.bgcolor = HYWU_BGCOLOR;
      return result;
    };
  },
});
