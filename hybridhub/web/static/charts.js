// Render every .vega-chart's Vega-Lite spec (data-spec) with the vendored vega-embed.
// Without JavaScript the data table under each chart carries the same numbers.
(function () {
  function render() {
    document.querySelectorAll(".vega-chart[data-spec]").forEach(function (el) {
      var spec = JSON.parse(el.getAttribute("data-spec"));
      vegaEmbed(el, spec, { actions: false, renderer: "svg" })
        .then(function () {
          el.classList.add("vega-ready");
          var table = el.nextElementSibling;  // open without JS; folded once drawn
          if (table && table.tagName === "DETAILS") { table.open = false; }
        })
        .catch(function (err) { el.textContent = "Chart failed: " + err; });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
