/* AltCap content script: finds images without a useful description, asks the service worker
 * for captions and writes them as alt text ("Appears to be: ..."), marked with data-altcap so
 * that the page can be put back exactly.
 *
 * A classic script, injected after detection.js (registered for the sites the user allowed,
 * or through activeTab when asked: shortcut, popup, context menu). It never touches the
 * network: only the service worker does. It never throws into the page and logs nothing:
 * every entry point is wrapped in guard().
 *
 * Messages it sends (chrome.runtime.sendMessage, to the service worker):
 *   {type: "hello"} -> {consented, enabled, auto, prefix, words}
 *   {type: "describe", images: [{id, url, data?}]} -> {results: [{id, caption} | {id, error}]}
 *   {type: "counts", found, described, failed}
 * Messages it answers (from the service worker or the popup, same extension only):
 *   ping, status, describe-now, describe-target {srcUrl}, toggle, restore
 */
(function () {
  "use strict";
  // Injected twice (registered script, then "describe now")? The first copy does the work.
  if (globalThis.__altcapContentScript) return;
  globalThis.__altcapContentScript = true;

  const D = globalThis.AltCapDetection;
  if (!D || typeof chrome === "undefined" || !chrome.runtime || !chrome.runtime.id) return;

  const BATCH_SIZE = 32; // images per message (and per server request)
  const MAX_IN_FLIGHT = 2; // messages waiting for captions at once
  const FLUSH_DELAY_MS = 40; // gather images found together into one batch
  const COUNTS_DELAY_MS = 400; // badge updates, throttled
  const MAX_REWRITES = 3; // the page keeps resetting an alt we wrote: stop after this
  const SNAPSHOT_MAX_SIDE = 1024; // canvas fall-back for blob: images (CLIP sees 224 px)
  const PRIORITY = { focused: 0, visible: 1, other: 2 };
  const SELECTOR = 'img, input[type="image" i]';
  const WATCHED = ["src", "srcset", "sizes", "alt", "aria-label", "aria-labelledby", "aria-hidden", "role", "title"];

  let config = { consented: false, enabled: false, auto: false, prefix: "Appears to be: " };
  let started = false; // observers attached
  let showing = true; // captions written (the popup's toggle hides them)
  let summaryPending = false; // announce a summary when the queue drains ("describe now")
  let nextId = 1;
  let inFlight = 0;
  let flushTimer = 0;
  let countsTimer = 0;
  let lastContextTarget = null;
  let liveRegion = null;
  let mutations = null;
  let visibility = null;
  let observed = new WeakSet();

  const state = new WeakMap(); // element -> {status, url, rewrites}
  const written = new WeakMap(); // element -> the alt text we wrote
  const queue = new Map(); // id -> {id, el, url, data?, priority, order}
  const captions = new Map(); // url -> caption, for this page's lifetime (survives toggling)
  const visible = new Set(); // elements near the viewport (IntersectionObserver)
  const counts = { found: 0, described: 0, failed: 0 };

  function guard(fn) {
    return function guarded(...args) {
      try {
        const r = fn.apply(this, args);
        if (r && typeof r.catch === "function") r.catch(() => {});
        return r;
      } catch (_) {
        return undefined;
      }
    };
  }

  async function send(message) {
    try {
      return await chrome.runtime.sendMessage(message);
    } catch (_) {
      return null; // extension reloaded or service worker gone: behave as if off
    }
  }

  // --- per-element status and counts --------------------------------------------------------

  function info(el) {
    let s = state.get(el);
    if (!s) {
      s = { status: null, url: "", rewrites: 0 };
      state.set(el, s);
    }
    return s;
  }

  // status: null | "queued" | "sent" | "described" | "failed" | "given-up"
  function setStatus(el, status) {
    const s = info(el);
    const active = (st) => st === "queued" || st === "sent" || st === "described" || st === "failed";
    if (active(s.status)) counts.found--;
    if (s.status === "described") counts.described--;
    if (s.status === "failed") counts.failed--;
    s.status = status;
    if (active(status)) counts.found++;
    if (status === "described") counts.described++;
    if (status === "failed") counts.failed++;
    reportCountsSoon();
  }

  function reportCountsSoon() {
    if (countsTimer) return;
    countsTimer = setTimeout(
      guard(() => {
        countsTimer = 0;
        send({ type: "counts", ...counts });
      }),
      COUNTS_DELAY_MS,
    );
  }

  // --- finding images -----------------------------------------------------------------------

  function watchVisibility(el) {
    if (!visibility || observed.has(el)) return;
    observed.add(el);
    visibility.observe(el);
  }

  /** Look at one element; queue it if it needs a caption. */
  function consider(el, priority = PRIORITY.other) {
    if (!started || !showing || !el || !el.isConnected) return;
    watchVisibility(el); // hidden or tiny now, maybe not later: look again when it shows
    const s = info(el);
    if (s.status === "queued" || s.status === "sent") {
      for (const item of queue.values()) if (item.el === el) item.priority = Math.min(item.priority, priority);
      return;
    }
    if (s.status === "described" || s.status === "failed" || s.status === "given-up") return;
    const verdict = D.assess(el, window);
    if (verdict.action !== "describe") return; // "wait": the load listener looks again
    const cached = captions.get(verdict.url);
    if (cached) {
      write(el, verdict.url, cached);
      return;
    }
    s.url = verdict.url;
    setStatus(el, "queued");
    const id = "i" + nextId++;
    queue.set(id, { id, el, url: verdict.url, priority, order: nextId });
    scheduleFlush(priority === PRIORITY.focused ? 0 : FLUSH_DELAY_MS);
  }

  function scan(root, priority) {
    if (!root || root.nodeType !== 1) return;
    if (D.isCandidate(root)) consider(root, priority);
    if (typeof root.querySelectorAll === "function") {
      for (const el of root.querySelectorAll(SELECTOR)) consider(el, priority);
    }
  }

  // --- writing and restoring ----------------------------------------------------------------

  function stillNeedsIt(el, url) {
    if (!el.isConnected || D.imageUrl(el) !== url) return false;
    if (el.hasAttribute(D.MARK)) return written.has(el); // ours: replace our own text only
    const verdict = D.classifyAlt(el.getAttribute("alt"));
    return verdict === "missing" || verdict === "meaningless";
  }

  /** Write prefix + caption as alt. `explicit`: the user asked for this one image (context
   * menu), so it is written even where AltCap is not running on the page. */
  function write(el, url, caption, explicit = false) {
    const s = info(el);
    s.url = url;
    if (!showing || (!started && !explicit) || !stillNeedsIt(el, url)) {
      setStatus(el, null);
      return false;
    }
    const text = D.captionText(config.prefix, caption);
    written.set(el, text); // before the write, so the observer knows the change is ours
    D.applyCaption(el, text);
    setStatus(el, "described");
    return true;
  }

  /** Put every alt we wrote back as the page had it. */
  function restoreAll() {
    for (const el of document.querySelectorAll("[" + D.MARK + "]")) {
      if (!written.has(el)) continue;
      written.delete(el);
      D.restoreOriginal(el);
    }
  }

  function hideCaptions() {
    showing = false;
    restoreAll();
    reportCountsSoon();
  }

  function showCaptions() {
    showing = true;
    if (!started) return;
    for (const el of document.querySelectorAll(SELECTOR)) {
      const s = state.get(el);
      if (s && s.status === "described") {
        const caption = captions.get(s.url);
        if (!caption || !write(el, s.url, caption)) setStatus(el, null);
      }
      consider(el);
    }
  }

  // --- talking to the service worker --------------------------------------------------------

  function scheduleFlush(delay) {
    if (flushTimer) {
      if (delay > 0) return;
      clearTimeout(flushTimer);
    }
    flushTimer = setTimeout(guard(flush), delay);
  }

  function priorityOf(item) {
    const focused = document.activeElement;
    if (focused && (item.el === focused || (focused.contains && focused.contains(item.el)))) {
      return PRIORITY.focused;
    }
    if (visible.has(item.el)) return Math.min(item.priority, PRIORITY.visible);
    return item.priority;
  }

  function takeBatch() {
    const items = [...queue.values()]
      .map((item) => ({ item, p: priorityOf(item) }))
      .sort((a, b) => a.p - b.p || a.item.order - b.item.order)
      .slice(0, BATCH_SIZE)
      .map(({ item }) => item);
    for (const item of items) {
      queue.delete(item.id);
      setStatus(item.el, "sent");
    }
    return items;
  }

  function flush() {
    flushTimer = 0;
    while (inFlight < MAX_IN_FLIGHT && queue.size) {
      const batch = takeBatch();
      inFlight++;
      describeBatch(batch)
        .catch(() => batch.forEach((item) => fail(item)))
        .finally(
          guard(() => {
            inFlight--;
            if (queue.size) scheduleFlush(0);
            announceSummaryIfIdle();
          }),
        );
    }
    announceSummaryIfIdle();
  }

  async function describeBatch(batch) {
    const images = batch.map((item) =>
      item.data ? { id: item.id, url: item.url, data: item.data } : { id: item.id, url: item.url },
    );
    const answer = await send({ type: "describe", images });
    const results = answer && Array.isArray(answer.results) ? answer.results : null;
    const byId = new Map((results || []).map((r) => [r && r.id, r]));
    for (const item of batch) {
      const r = byId.get(item.id);
      if (r && typeof r.caption === "string" && r.caption) {
        captions.set(item.url, r.caption);
        write(item.el, item.url, r.caption);
      } else if (r && r.error && r.error.code === "needs_canvas" && !item.data) {
        const data = snapshot(item.el);
        if (!data) {
          fail(item);
          continue;
        }
        setStatus(item.el, "queued");
        queue.set(item.id, { ...item, data });
        scheduleFlush(0);
      } else {
        fail(item);
      }
    }
  }

  function fail(item) {
    if (info(item.el).status !== "described") setStatus(item.el, "failed");
  }

  /** blob: images only (same origin, so the canvas is not tainted): a JPEG snapshot. */
  function snapshot(el) {
    try {
      if (!el || String(el.tagName).toUpperCase() !== "IMG" || !el.complete) return null;
      const w0 = el.naturalWidth;
      const h0 = el.naturalHeight;
      if (!w0 || !h0) return null;
      const scale = Math.min(1, SNAPSHOT_MAX_SIDE / Math.max(w0, h0));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(w0 * scale));
      canvas.height = Math.max(1, Math.round(h0 * scale));
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff"; // transparent areas read as white, as the server does
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(el, 0, 0, canvas.width, canvas.height);
      const data = canvas.toDataURL("image/jpeg", 0.9);
      return data.startsWith("data:image/jpeg;base64,") ? data : null;
    } catch (_) {
      return null; // tainted canvas or no 2D context
    }
  }

  // --- announcements (screen readers) -------------------------------------------------------

  function announce(text) {
    if (!document.body) return;
    if (!liveRegion || !liveRegion.isConnected) {
      liveRegion = document.createElement("div");
      liveRegion.setAttribute("role", "status");
      liveRegion.setAttribute("aria-live", "polite");
      liveRegion.setAttribute("data-altcap-live", "");
      // Visually hidden, still read. Set through CSSOM, which page CSPs do not block.
      Object.assign(liveRegion.style, {
        position: "absolute",
        width: "1px",
        height: "1px",
        margin: "-1px",
        padding: "0",
        border: "0",
        overflow: "hidden",
        clip: "rect(0 0 0 0)",
        clipPath: "inset(50%)",
        whiteSpace: "nowrap",
      });
      document.body.appendChild(liveRegion);
    }
    // Empty first, fill a moment later: screen readers announce a change, and a region that
    // was just inserted needs a beat before its content counts as one.
    liveRegion.textContent = "";
    const region = liveRegion;
    setTimeout(
      guard(() => {
        region.textContent = text;
      }),
      150,
    );
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function announceSummaryIfIdle() {
    if (!summaryPending || queue.size || inFlight) return;
    summaryPending = false;
    const failed = counts.failed ? `, ${counts.failed} could not be described` : "";
    announce(`AltCap: ${plural(counts.described, "image")} described${failed}.`);
  }

  // --- events -------------------------------------------------------------------------------

  const onMutations = guard((records) => {
    for (const record of records) {
      if (record.type === "childList") {
        for (const node of record.addedNodes) scan(node, PRIORITY.other);
      } else if (record.type === "attributes") {
        onAttribute(record.target, record.attributeName);
      }
    }
  });

  function onAttribute(el, name) {
    if (!D.isCandidate(el)) {
      if (name === "aria-hidden") scan(el, PRIORITY.other); // a container was shown to AT
      return;
    }
    const s = info(el);
    const ours = written.get(el);
    if (name === "alt") {
      if (ours !== undefined && el.getAttribute("alt") === ours) return; // our own write
      if (ours !== undefined) {
        // The page replaced the alt we wrote: the author's text wins.
        written.delete(el);
        D.dropMark(el);
        setStatus(el, null);
        if (++s.rewrites > MAX_REWRITES) {
          s.status = "given-up";
          return;
        }
      }
      consider(el);
      return;
    }
    if (name === "src" || name === "srcset" || name === "sizes") {
      // A new picture: our caption described the old one.
      if (ours !== undefined) {
        written.delete(el);
        D.restoreOriginal(el);
      }
      if (s.status !== "given-up") setStatus(el, null);
      for (const [id, item] of queue) if (item.el === el) queue.delete(id);
      consider(el); // usually "wait": the load event brings it back
      return;
    }
    if (ours === undefined) consider(el); // a label or role changed
  }

  const onLoad = guard((event) => {
    const el = event.target;
    if (el && el.nodeType === 1 && D.isCandidate(el)) {
      consider(el, visible.has(el) ? PRIORITY.visible : PRIORITY.other);
    }
  });

  const onFocus = guard((event) => {
    const el = event.target;
    if (!el || el.nodeType !== 1) return;
    if (D.isCandidate(el)) consider(el, PRIORITY.focused);
    else if (typeof el.querySelectorAll === "function") {
      for (const img of el.querySelectorAll(SELECTOR)) consider(img, PRIORITY.focused);
    }
  });

  const onVisibility = guard((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        visible.add(entry.target);
        consider(entry.target, PRIORITY.visible);
      } else {
        visible.delete(entry.target);
      }
    }
  });

  function start() {
    if (started) return;
    started = true;
    showing = true;
    visibility = new IntersectionObserver(onVisibility, { rootMargin: "256px" });
    observed = new WeakSet();
    mutations = new MutationObserver(onMutations);
    mutations.observe(document.documentElement, {
      childList: true,
      subtree: true,
      attributes: true,
      attributeFilter: WATCHED,
    });
    document.addEventListener("load", onLoad, true); // load does not bubble; capture sees it
    document.addEventListener("focusin", onFocus, true);
    scan(document.documentElement, PRIORITY.other);
  }

  function stop() {
    if (!started) return;
    started = false;
    if (mutations) mutations.disconnect();
    if (visibility) visibility.disconnect();
    mutations = visibility = null;
    document.removeEventListener("load", onLoad, true);
    document.removeEventListener("focusin", onFocus, true);
    for (const item of queue.values()) setStatus(item.el, null);
    queue.clear();
    visible.clear();
  }

  // --- requests from the extension ----------------------------------------------------------

  function status() {
    return {
      running: started,
      showing,
      consented: config.consented === true,
      found: counts.found,
      described: counts.described,
      failed: counts.failed,
    };
  }

  async function describeNow() {
    await ready;
    if (!config.consented) {
      announce("AltCap: nothing was sent. Agree to the privacy notice in AltCap's options first.");
      return { ok: false, error: "no_consent" };
    }
    const wasShowing = showing;
    start();
    if (!wasShowing) showCaptions();
    // Try the failures again: the server may be back.
    for (const el of document.querySelectorAll(SELECTOR)) {
      const s = state.get(el);
      if (s && s.status === "failed") setStatus(el, null);
      consider(el, visible.has(el) ? PRIORITY.visible : PRIORITY.other);
    }
    const waiting = queue.size;
    summaryPending = true;
    if (waiting) announce(`AltCap: describing ${plural(waiting, "image")}.`);
    else if (!inFlight) {
      summaryPending = false;
      announce(
        counts.found
          ? `AltCap: ${plural(counts.described, "image")} described.`
          : "AltCap: no images without a description on this page.",
      );
    }
    return { ok: true, ...status() };
  }

  function findImage(srcUrl) {
    const matches = (el) => el && el.isConnected && (D.imageUrl(el) === srcUrl || el.src === srcUrl);
    if (matches(lastContextTarget)) return lastContextTarget;
    for (const el of document.querySelectorAll(SELECTOR)) if (matches(el)) return el;
    return null;
  }

  /** "Describe this image" from the context menu: caption it, write it if the image has no
   * author text, and announce it either way. */
  async function describeTarget(srcUrl) {
    await ready;
    const el = findImage(srcUrl);
    const url = el ? D.imageUrl(el) || srcUrl : srcUrl;
    let caption = captions.get(url);
    let error = null;
    if (!caption) {
      const id = "t" + nextId++;
      let answer = await send({ type: "describe", images: [{ id, url }] });
      let r = answer && Array.isArray(answer.results) ? answer.results[0] : null;
      if (r && r.error && r.error.code === "needs_canvas") {
        const data = snapshot(el);
        answer = data ? await send({ type: "describe", images: [{ id, url, data }] }) : null;
        r = answer && Array.isArray(answer.results) ? answer.results[0] : r;
      }
      if (r && typeof r.caption === "string" && r.caption) {
        caption = r.caption;
        captions.set(url, caption);
      } else {
        error = (r && r.error) || (answer && answer.error) || { message: "no answer from AltCap" };
      }
    }
    if (!caption) {
      announce(`AltCap could not describe this image: ${error.message || error.code}.`);
      return { ok: false, error };
    }
    if (el) write(el, url, caption, true);
    announce(D.captionText(config.prefix, caption));
    return { ok: true, caption };
  }

  /** The site was switched off: put the page back and stop (captions stay cached, so asking
   * again later is instant). */
  function restorePage() {
    hideCaptions();
    stop();
    for (const el of document.querySelectorAll(SELECTOR)) {
      const s = state.get(el);
      if (s && s.status) setStatus(el, null);
    }
    showing = true;
    summaryPending = false;
  }

  function toggle() {
    if (showing) hideCaptions();
    else showCaptions();
    return showing;
  }

  chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
    try {
      if (!sender || sender.id !== chrome.runtime.id) return false;
      if (!message || typeof message !== "object" || typeof message.type !== "string") return false;
      const reply = (promise) => {
        promise.then(sendResponse, () => sendResponse({ ok: false }));
        return true; // answer asynchronously
      };
      switch (message.type) {
        case "ping":
          sendResponse({ pong: true });
          return false;
        case "status":
          sendResponse(status());
          return false;
        case "describe-now":
          return reply(describeNow());
        case "describe-target":
          if (typeof message.srcUrl !== "string") return false;
          return reply(describeTarget(message.srcUrl));
        case "toggle":
          sendResponse({ showing: toggle(), ...status() });
          return false;
        case "restore":
          restorePage();
          sendResponse(status());
          return false;
        default:
          return false;
      }
    } catch (_) {
      return false;
    }
  });

  document.addEventListener(
    "contextmenu",
    guard((event) => {
      lastContextTarget = event.target;
    }),
    true,
  );

  const ready = send({ type: "hello" }).then(
    guard((answer) => {
      if (!answer || typeof answer !== "object" || answer.error) return;
      config = { ...config, ...answer };
      D.setMeaninglessWords(answer.words);
      if (config.auto) start();
    }),
  );
})();
