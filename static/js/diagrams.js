// Lesson diagrams: mermaid draws each ```mermaid block of the lesson (a <pre class="mermaid"> with
// the diagram's source as text) as an SVG. Until it has, or if it cannot, the source stays readable.
//
// securityLevel "strict": mermaid sanitises labels and does not bind `click` in a diagram, so a
// diagram can no more run script than the rest of the (server-sanitised) lesson text.

import mermaid from "mermaid";

const diagrams = [...document.querySelectorAll(".lesson pre.mermaid")];
const sources = new Map(diagrams.map((diagram) => [diagram, diagram.textContent]));

// suppressErrorRendering: no "syntax error" picture in place of a broken diagram.
mermaid.initialize({ startOnLoad: false, securityLevel: "strict", suppressErrorRendering: true, theme: "neutral" });

try {
  await mermaid.run({ nodes: diagrams });
} catch (error) {
  console.error("A lesson diagram could not be drawn; its source is shown instead.", error);
  // mermaid empties a diagram it fails to draw: put its source back.
  for (const [diagram, source] of sources) {
    if (!diagram.querySelector("svg")) {
      diagram.textContent = source;
      diagram.removeAttribute("data-processed");
    }
  }
}
