// Render every .vega-chart's Vega-Lite spec (data-spec) with the vendored vega-embed, in the page's theme:
// vega-embed's "dark" theme (light text and axes) under JupyterHub's dark theme (data-bs-theme="dark" on
// <html>), drawn again when the hub's toggle switches it.
// Without JavaScript the data table under each chart carries the same numbers.
(function () {
  var views = new Map();  // chart element -> its vega-embed result, finalized before a redraw
  function options() {
    var dark = document.documentElement.getAttribute("data-bs-theme") === "dark";
    var opts = { actions: false, renderer: "svg" };
    if (dark) {
      opts.theme = "dark";
      opts.config = { background: null };  // the page's own background, not the theme's grey box
    }
    return opts;
  }
  function render() {
    document.querySelectorAll(".vega-chart[data-spec]").forEach(function (el) {
      var spec = JSON.parse(el.getAttribute("data-spec"));
      if (views.has(el)) { views.get(el).finalize(); views.delete(el); }
      vegaEmbed(el, spec, options())
        .then(function (result) {
          views.set(el, result);
          el.classList.add("vega-ready");
          el.dataset.theme = options().theme || "light";
          var table = el.nextElementSibling;  // open without JS; folded once drawn
          if (table && table.tagName === "DETAILS") { table.open = false; }
        })
        .catch(function (err) { el.textContent = "Chart failed: " + err; });
    });
  }
  new MutationObserver(render).observe(document.documentElement, { attributeFilter: ["data-bs-theme"] });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
