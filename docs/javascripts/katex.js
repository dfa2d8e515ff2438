// Typesets the math that pymdownx.arithmatex marks (generic mode: \( \) inline, \[ \] in
// display), with the KaTeX copy shipped under docs/assets/katex (no network needed).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".arithmatex").forEach(function (element) {
    var source = element.textContent.trim();
    var display = source.startsWith("\\[");
    var tex = source.replace(/^\\[\[(]/, "").replace(/\\[\])]$/, "");
    katex.render(tex, element, { displayMode: display, throwOnError: false });
  });
});
