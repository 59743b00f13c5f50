// Progressive enhancement for the AltCap page: send the form with fetch() to /v1/captions
// and announce the alt text (and the caption and text it was made of) in the live region,
// without reloading the page. Without JavaScript the same form posts to /caption-form and
// the server renders the result.
"use strict";

(function () {
  const form = document.getElementById("caption-form");
  const result = document.getElementById("result");
  if (!form || !result || !window.fetch || !window.FormData) return;

  // The page's words for a result's parts (the server's PAGE_WORDS).
  let words = {};
  try {
    words = JSON.parse(result.dataset.words || "{}");
  } catch (err) {
    words = {};
  }

  function paragraph(text, id, cls, language) {
    const p = document.createElement("p");
    if (id) p.id = id;
    if (cls) p.className = cls;
    if (language) p.lang = language;
    p.textContent = text;
    return p;
  }

  // kind: "empty", "error" or "progress"; the live region announces what it holds.
  function show(text, kind) {
    if (kind === "error") text = "Error: " + text;
    const p = kind === "empty" ? paragraph(text, "empty", "hint") : paragraph(text, kind, kind);
    result.replaceChildren(p);
  }

  // One result of /v1/captions: the alt, and the caption and text it was made of, as the
  // server renders them on /caption-form.
  function showResult(r, language) {
    // The caption in its own language, where that is not the page's (a model trained on
    // other captions may not write English).
    const lang = language && primary(language) !== primary(document.documentElement.lang) ? language : "";
    const alt = typeof r.alt === "string" ? r.alt : r.caption; // a server without text reading
    const from = r.alt_from || "caption";
    if (!alt) {
      show(result.dataset.empty, "empty");
      return;
    }
    const parts = [paragraph("Suggested alt text (machine-generated):")];
    // The server's trust.withholds: not confident, and the alt rests on the caption.
    if (r.confident === false && from !== "text") {
      parts.push(paragraph(words.not_confident || "", "not-confident", "warning"));
    }
    if (from === "caption") {
      parts.push(paragraph(r.caption, "caption", "caption", lang));
    } else {
      parts.push(paragraph(alt, "alt", "caption", from === "caption_and_text" ? lang : ""));
      parts.push(paragraph((words.alt_from || {})[from] || "", "alt-from", "hint"));
      const list = document.createElement("dl");
      list.className = "parts";
      const add = (term, text, id, cls, language) => {
        const dt = document.createElement("dt");
        dt.textContent = term;
        const dd = document.createElement("dd");
        dd.id = id;
        if (cls) dd.className = cls;
        if (language) dd.lang = language;
        dd.textContent = text;
        list.append(dt, dd);
      };
      if (r.caption) add(words.caption || "Caption", r.caption, "caption", "", lang);
      add(words.text || "Text", r.text || "", "text", "text", "");
      parts.push(list);
    }
    if (typeof r.confidence === "number") {
      const percent = Math.round(r.confidence * 100);
      parts.push(paragraph((words.confidence || "Confidence") + ": " + percent + "%", "confidence", "hint"));
    }
    if (r.text === "" && words.no_text) parts.push(paragraph(words.no_text, "no-text", "hint"));
    if (r.alt_check) {
      const verdict = r.alt_check.verdict;
      const cls = verdict === "matches" ? "hint" : "warning";
      parts.push(paragraph((words.alt_check || {})[verdict] || verdict, "alt-check", cls));
    }
    for (const code of r.warnings || []) {
      parts.push(paragraph((words.warnings || {})[code] || code, "", "hint warning"));
    }
    result.replaceChildren(...parts);
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
    if (!String(data.get("alt") || "").trim()) data.delete("alt"); // nothing to check
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
      } else {
        showResult(body.results[0], body.language);
      }
    } catch (err) {
      show("the server could not be reached", "error");
    } finally {
      button.removeAttribute("aria-disabled");
    }
  });
})();
