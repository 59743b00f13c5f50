// Progressive enhancement for the AltCap page: send the form with fetch() to /v1/captions
// and announce the caption in the live region, without reloading the page. Without
// JavaScript the same form posts to /caption-form and the server renders the result.
"use strict";

(function () {
  const form = document.getElementById("caption-form");
  const result = document.getElementById("result");
  if (!form || !result || !window.fetch || !window.FormData) return;

  // kind: "caption", "empty", "error" or "progress"; the live region announces what it holds.
  function show(text, kind, language) {
    const parts = [];
    if (kind === "caption") parts.push(["", "Suggested alt text (machine-generated):"]);
    if (kind === "error") text = "Error: " + text;
    parts.push([kind, text]);
    result.replaceChildren(
      ...parts.map(([cls, content]) => {
        const p = document.createElement("p");
        if (cls) p.id = p.className = cls;
        if (cls === "empty") p.className = "hint";
        // The caption in its own language, where that is not the page's (a model trained
        // on other captions may not write English).
        if (cls === "caption" && language && primary(language) !== primary(document.documentElement.lang)) {
          p.lang = language;
        }
        p.textContent = content;
        return p;
      })
    );
  }

  function primary(tag) {
    return String(tag || "").split("-")[0].trim().toLowerCase();
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const data = new FormData(form);
    const headers = {};
    const key = data.get("api_key");
    data.delete("api_key");
    if (key) headers["Authorization"] = "Bearer " + key;
    const file = data.get("image");
    if (file && file.size > 0) {
      data.delete("url"); // the file wins, as on the server's form path
    } else {
      data.delete("image");
    }
    if (!data.get("image") && !String(data.get("url") || "").trim()) {
      show("choose an image file or paste an image URL", "error");
      return;
    }
    button.setAttribute("aria-disabled", "true");
    show("Describing the image…", "progress");
    try {
      const response = await fetch(form.dataset.api, { method: "POST", body: data, headers });
      const body = await response.json().catch(() => null);
      if (!response.ok || !body) {
        const message = body && body.error ? body.error.message : "HTTP " + response.status;
        show(message, "error");
      } else if (body.results[0].error) {
        show(body.results[0].error.message, "error");
      } else if (body.results[0].caption) {
        show(body.results[0].caption, "caption", body.language);
      } else {
        show(result.dataset.empty, "empty");
      }
    } catch (err) {
      show("the server could not be reached", "error");
    } finally {
      button.removeAttribute("aria-disabled");
    }
  });
})();
