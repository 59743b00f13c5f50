/* AltCap page image: an image's bytes, read as the page showing it may read them.
 *
 * The service worker asks the content script for them when the server could not download
 * an image ("needs_bytes") or not decode it ("needs_canvas": a JPEG snapshot then). What is
 * read here is described in the page, whose scripts read the description: so only what the
 * page could read itself is read, by the page's own rules (issue 20). A request made as the
 * page makes it: same-origin, or CORS with the page's credentials mode (cookies for another
 * site only where the <img> asks for them with crossorigin="use-credentials" and that site
 * allows it). And a snapshot drawn only from such bytes, from a data: URL or from a blob: URL
 * the page made: never of whatever an <img> shows, since Firefox lets an extension with
 * access to all sites read a canvas that a cross-origin image tainted, and a same-origin
 * address may redirect to another site. The service worker itself downloads no image.
 *
 * A classic script (no import/export), injected before content-script.js; it only defines
 * globalThis.AltCapPageImage, in the extension's isolated world. Wrapped in a function so
 * that injecting it twice redeclares nothing.
 */
(function (root) {
  "use strict";

  const SNAPSHOT_MAX_SIDE = 1024; // CLIP sees 224 px
  const IMAGE_FETCH_TIMEOUT_MS = 15000;
  const MAX_IMAGE_BYTES = 10 * 1024 * 1024; // as the server's ALTCAP_FETCH_MAX_BYTES
  const SNAPSHOT = /^data:image\/jpeg;base64,/; // what a snapshot is (the worker's rule too)

  /** Whether `data` is a snapshot (whose answer from the server is final). */
  function isSnapshot(data) {
    return SNAPSHOT.test(String(data || ""));
  }

  /** "http" | "data" | "blob" | "" */
  function kindOf(url) {
    const m = /^([a-z][a-z0-9+.-]*):/i.exec(String(url || ""));
    const scheme = m ? m[1].toLowerCase() : "";
    if (scheme === "http" || scheme === "https") return "http";
    return scheme === "data" || scheme === "blob" ? scheme : "";
  }

  /** The data the worker asked for (`code`) for `item` ({url, el, data?}: data already sent,
   * the bytes of a needs_bytes answer), as a data: URL; null where the page may not read
   * the image. Never throws. */
  async function imageData(item, code) {
    try {
      const data = item.data || (await pageBytes(item.url, item.el));
      if (!data || code !== "needs_canvas" || SNAPSHOT.test(data)) return data;
      return await rasterize(data, item.el);
    } catch (_) {
      return null;
    }
  }

  /** The image at `url` as a data: URL, read as the page may read it; null otherwise. */
  async function pageBytes(url, el) {
    const kind = kindOf(url);
    if (kind === "data") return /^data:image\//i.test(url) ? url : null;
    if (kind === "blob") return pageMade(url) ? snapshot(el) : null;
    if (kind !== "http") return null;
    const credentials = el && el.crossOrigin === "use-credentials" ? "include" : "same-origin";
    return readAsPage(url, credentials);
  }

  /** A blob: URL this page made (its origin is in the URL, and it cannot redirect). */
  function pageMade(url) {
    try {
      const origin = new URL(url).origin;
      return origin !== "null" && origin === location.origin;
    } catch (_) {
      return false;
    }
  }

  async function readAsPage(url, credentials) {
    let response;
    try {
      const request = pageFetch(url, { mode: "cors", credentials, redirect: "follow" });
      response = await Promise.race([ours(request), timeout(IMAGE_FETCH_TIMEOUT_MS)]);
    } catch (_) {
      return null; // the page may not read it (CORS), or it cannot be reached
    }
    if (!response || !response.ok || response.type === "opaque") return null;
    const type = String(response.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
    if (type && !type.startsWith("image/") && type !== "application/octet-stream") return null; // a web page
    if (Number(response.headers.get("Content-Length")) > MAX_IMAGE_BYTES) return null;
    const bytes = copied(await ours(response.arrayBuffer()));
    if (!bytes.length || bytes.length > MAX_IMAGE_BYTES) return null;
    const mime = /^image\/[a-z0-9.+-]+$/.test(type) ? type : "image/unknown"; // the server sniffs
    return `data:${mime};base64,${base64(bytes)}`;
  }

  /** fetch() as the page makes it. Chrome's content scripts fetch as their page does; in
   * Firefox the content script's own fetch() carries the extension's principal, and
   * content.fetch() is the page's. */
  function pageFetch(url, init) {
    const firefox = String(chrome.runtime.getURL("")).startsWith("moz-extension:");
    const page = firefox ? globalThis.content : null;
    return page && typeof page.fetch === "function" ? page.fetch(url, init) : fetch(url, init);
  }

  /** A promise of this world for `promise`, which may be the page's (Firefox's content.fetch()
   * answers with the page's promises, whose constructor this world may not touch). */
  function ours(promise) {
    return new Promise((resolve, reject) => promise.then(resolve, reject));
  }

  function timeout(ms) {
    return new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), ms));
  }

  /** The bytes of `buffer` in an array of this world's (Firefox builds a view of the page's
   * buffer in the page's world, where this one may not call its methods). */
  function copied(buffer) {
    const view = new Uint8Array(buffer);
    const bytes = new Uint8Array(view.length);
    bytes.set(view);
    return bytes;
  }

  function base64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  /** A JPEG snapshot of the image in `data` (a data: URL the page may read), as the browser
   * draws it; `el` gives the size of an SVG that has none of its own. */
  async function rasterize(data, el) {
    const picture = new Image();
    picture.src = data;
    await ours(picture.decode());
    const w = picture.naturalWidth || (el && el.width) || 300;
    const h = picture.naturalHeight || (el && el.height) || 150;
    return drawJpeg(picture, w, h);
  }

  /** A JPEG snapshot of an <img> as the browser renders it: for blob: images the page made
   * (the worker cannot read them). null when the canvas is tainted or there is nothing to
   * draw. */
  function snapshot(el) {
    if (!el || String(el.tagName).toUpperCase() !== "IMG" || !el.complete) return null;
    // an SVG without a size of its own: as laid out
    return drawJpeg(el, el.naturalWidth || el.width, el.naturalHeight || el.height);
  }

  function drawJpeg(source, w0, h0) {
    try {
      if (!w0 || !h0) return null;
      const scale = Math.min(1, SNAPSHOT_MAX_SIDE / Math.max(w0, h0));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(w0 * scale));
      canvas.height = Math.max(1, Math.round(h0 * scale));
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff"; // transparent areas read as white, as the server does
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
      const data = canvas.toDataURL("image/jpeg", 0.9);
      return SNAPSHOT.test(data) ? data : null;
    } catch (_) {
      return null; // tainted canvas or no 2D context
    }
  }

  root.AltCapPageImage = Object.freeze({ imageData, isSnapshot });
})(globalThis);
