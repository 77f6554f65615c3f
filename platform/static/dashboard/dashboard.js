// Draws the server-built plotly figures: each <script type="application/json" data-chart="ID"> holds one figure,
// drawn into the element with that id. No inline scripts, so the page's Content-Security-Policy forbids them.
(function () {
  "use strict";
  function draw() {
    document.querySelectorAll('script[type="application/json"][data-chart]').forEach(function (node) {
      var target = document.getElementById(node.getAttribute("data-chart"));
      if (!target || typeof Plotly === "undefined") { return; }
      var fig = JSON.parse(node.textContent);
      Plotly.newPlot(target, fig.data, fig.layout, {displayModeBar: false, responsive: true}).then(function () {
        target.setAttribute("data-rendered", "true");
      });
    });
  }
  function printButtons() {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.addEventListener("click", function () { window.print(); });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(); printButtons(); });
})();
