/* AltCap content script: finds images without a useful description, asks the service worker
 * for captions and writes them as alt text ("Appears to be: ..."; an image of text gets its
 * text, "Appears to say: ..."), marked with data-altcap so that the page can be put back
 * exactly. Elements with role="img" and a CSS background image but no name get the caption
 * as their aria-label instead (see detection.js).
 *
 * A classic script, injected after detection.js, caption-text.js and page-image.js
 * (registered for the sites the user allowed, or through activeTab when asked: shortcut,
 * popup, context menu). It talks to no server: only the service worker does. When the worker
 * asks for an image's bytes, page-image.js reads them as the page itself may (same-origin or
 * CORS), or not at all. It never throws into the page and logs nothing: every entry point
 * is wrapped in guard().
 *
 * Where it looks: the document and every shadow root in it (web components), nested ones
 * too, each watched by the same MutationObserver as soon as it is found. Closed roots as
 * well, where the browser lets extensions open them (Chrome's chrome.dom, Firefox's
 * openOrClosedShadowRoot): a page closes a root against its own scripts, but a screen reader
 * still reads what it renders, images without alt text included. Iframes get
 * a copy of this script of their own (registered with allFrames): each frame describes and
 * counts its own images, and the service worker adds the frames up.
 *
 * Messages it sends (chrome.runtime.sendMessage, to the service worker):
 *   {type: "hello"} -> {consented, enabled, auto, showing, prefix, textPrefix, checkAlt, readText,
 *     words, stopwords}
 *   {type: "describe", images: [{id, url, data?, alt?}]}
 *     -> {results: [{id, caption, alt, alt_from, text?, confident?, alt_check?, language?} |
 *         {id, error}]}
 *   {type: "counts", found, described, failed, unsure, suspect}
 * Messages it answers (from the service worker, same extension only):
 *   ping, status, describe-now {quiet?}, describe-target {srcUrl}, toggle {showing?}, restore,
 *   check-alt {on}
 *
 * Trust (issue 23). An answer that says `confident: false` for an alt that rests on the
 * caption (caption-text.js withholds()) is not written: the image keeps what it had, and is
 * counted as "unsure" (the popup's "No confident description"). With the opt-in check on
 * (config.checkAlt), an image in view whose author's alt says something is sent with that alt
 * (`alt`, batched with the rest, after them); a "suspect" verdict adds an aria-description
 * (caption-text.js mismatchNote()), marked data-altcap-note, which goes when the descriptions
 * are hidden, the check is switched off or the image or its alt changes. The author's alt is
 * never touched. The images that carry such a note are counted ("suspect": the popup's
 * "Descriptions that may not match") and said in the spoken summary.
 *
 * Thin banners (detection.js textOnly) are sent only to read their text: with "Read text in
 * images" off (config.readText false) they are not sent at all, and one whose request fails
 * is not counted as "Could not describe" (a banner without text is no failure to describe a
 * picture): it is counted nowhere, as a banner answered by a caption alone, and tried again
 * on the next "describe now".
 */
(function () {
  "use strict";
  // Injected twice (registered script, then "describe now")? The first copy does the work.
  // Its mark is a symbol of this world's registry: a page's named elements are properties of
  // window even here (<div id="__altcapContentScript"> once switched AltCap off for its page),
  // but their names are strings, and the page's scripts have a registry of their own.
  const RUNNING = Symbol.for("altcap.content-script");
  if (globalThis[RUNNING]) return;
  globalThis[RUNNING] = true;

  const D = globalThis.AltCapDetection;
  const P = globalThis.AltCapPageImage; // page-image.js: an image's bytes, as the page reads them
  if (!D || typeof chrome === "undefined" || !chrome.runtime || !chrome.runtime.id) return;

  const BATCH_SIZE = 32; // images per message (and per server request)
  const MAX_IN_FLIGHT = 2; // messages waiting for captions at once
  const FLUSH_DELAY_MS = 40; // gather images found together into one batch
  const COUNTS_DELAY_MS = 400; // badge updates, throttled
  const MAX_REWRITES = 3; // the page keeps resetting an alt we wrote: stop after this
  // What a failed "Describe this image" says, by error code: AltCap's words only, never the
  // server's (its address, its messages), since the page reads its own live region.
  const FAILURES = {
    no_consent: "agree to the privacy notice in AltCap's options first",
    incognito_off: "AltCap is off in private windows",
    bytes_not_allowed: "it is not at a public address, and sending image bytes is off in AltCap's options",
    needs_bytes: "this page does not let AltCap read it",
    needs_canvas: "this page does not let AltCap read it",
    server_unreachable: "the AltCap server did not answer",
    server_timeout: "the AltCap server did not answer",
  };
  // check: an author's alt to check (the opt-in), sent after every image that needs a caption
  const PRIORITY = { focused: 0, visible: 1, other: 2, check: 3 };
  const NOTE = "aria-description"; // where a suspect alt's note goes: read after the alt
  const NOTE_MARK = "data-altcap-note"; // on an element whose aria-description is AltCap's
  const SELECTOR = 'img, input[type="image" i], [role~="img" i]'; // ARIA images: role="img"
  const WATCHED = ["src", "srcset", "sizes", "alt", "aria-label", "aria-labelledby", "aria-hidden", "role", "title"];
  const OBSERVE = { childList: true, subtree: true, attributes: true, attributeFilter: WATCHED };
  // A custom element inserted before its definition loads gets its shadow root later, and
  // nothing in the document changes when that happens: look at such elements again a few
  // times (cheap: one property read each) for this long after they appear.
  const PENDING_CHECK_MS = 500;
  const PENDING_FOR_MS = 15000;
  // The built-in elements attachShadow() accepts (custom elements are the rest).
  const SHADOW_HOSTS = new Set(
    "article aside blockquote body div footer h1 h2 h3 h4 h5 h6 header main nav p section span".split(" "),
  );
  const SLICE_MS = 8; // longest run of scanning before the page gets the main thread back
  const SLICE_CHECK_EVERY = 64; // elements between two looks at the clock

  let config = {
    consented: false,
    enabled: false,
    auto: false,
    prefix: "Appears to be: ",
    textPrefix: "Appears to say: ",
    checkAlt: false, // the opt-in check of authors' alts (settings.js checkAlt)
    readText: true, // the server reads the text in images (settings.js readText)
  };
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
  let watchedRoots = new WeakSet(); // shadow roots the mutation observer covers (per start)
  const listenedRoots = new WeakSet(); // shadow roots with our load/focus listeners
  const pending = new Map(); // custom element without a shadow root yet -> give up at (ms)
  let pendingTimer = 0;
  const scans = []; // scans still to finish (generators), oldest first
  let scanning = false; // in a slice now
  let scanTimer = 0; // the next slice
  let sliceEnd = 0;
  let sliceTicks = 0;

  const state = new WeakMap(); // element -> {status, url, rewrites, textOnly}
  const written = new WeakMap(); // element -> the alt text (or aria-label) we wrote
  // id -> {id, el, url, data?, priority, order} (+ check: true, alt: an author's alt to check)
  const queue = new Map();
  // url -> {caption, alt, alt_from, confident?, language?}, for this page's lifetime (survives
  // toggling)
  const captions = new Map();
  const visible = new Set(); // elements near the viewport (IntersectionObserver)
  // unsure: no confident description (the answer's alt was withheld); suspect: images whose
  // author's alt carries AltCap's note that it may not match (the opt-in check)
  const counts = { found: 0, described: 0, failed: 0, unsure: 0, suspect: 0 };
  // The opt-in check of authors' alts: element -> {key, status: "queued" | "sent" | "done" |
  // "failed"}; key (url + alt) -> {verdict, caption, confident?} for this page's lifetime;
  // element -> the aria-description we added.
  const checks = new WeakMap();
  const checked = new Map();
  const noted = new WeakMap();
  let checksUnavailable = false; // the server answered without checking: ask no more

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
      return globalThis.AltCapCaptionText.cleanAnswer(await chrome.runtime.sendMessage(message)); // caption-text.js
    } catch (_) {
      return null; // extension reloaded or service worker gone: behave as if off
    }
  }

  // --- per-element status and counts --------------------------------------------------------

  function info(el) {
    let s = state.get(el);
    if (!s) {
      // textOnly: a thin banner (detection.js), written only with its own text
      s = { status: null, url: "", rewrites: 0, textOnly: false };
      state.set(el, s);
    }
    return s;
  }

  // status: null | "queued" | "sent" | "described" | "unsure" | "failed" | "banner-failed" |
  // "given-up" ("unsure": answered, its alt withheld: the server does not believe the caption;
  // "banner-failed": a thin banner whose request failed, counted nowhere, tried again on
  // "describe now")
  function setStatus(el, status) {
    const s = info(el);
    const counted = { described: "described", failed: "failed", unsure: "unsure" };
    const active = (st) => st === "queued" || st === "sent" || st in counted;
    if (active(s.status)) counts.found--;
    if (s.status in counted) counts[counted[s.status]]--;
    s.status = status;
    if (active(status)) counts.found++;
    if (status in counted) counts[counted[status]]++;
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
    if (["described", "unsure", "failed", "banner-failed", "given-up"].includes(s.status)) return;
    const verdict = D.assess(el, window);
    if (verdict.action !== "describe") {
      if (verdict.reason === "author-alt") considerCheck(el, priority);
      return; // "wait": the load listener looks again
    }
    s.textOnly = verdict.textOnly === true;
    // A banner is written only with its own text: with text reading off, nothing to ask for.
    if (s.textOnly && config.readText === false) return;
    const cached = captions.get(verdict.url); // a banner answered by a caption: not sent again
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

  // --- checking authors' alts (the opt-in) ----------------------------------------------------

  function checkKey(url, alt) {
    return `${url}\n${alt}`;
  }

  /** With the check on, queue an image whose author's alt says something for checking: once
   * per image address and alt, and only when it is in view (or focused), so a long page costs
   * only what the user looks at. A check already answered is noted again (after a toggle). */
  function considerCheck(el, priority = PRIORITY.other) {
    if (!config.checkAlt || checksUnavailable || !started || !showing) return;
    if (!visible.has(el) && priority !== PRIORITY.focused) return;
    const verdict = D.assessCheck(el, window);
    if (verdict.action !== "check") return;
    const key = checkKey(verdict.url, verdict.alt);
    const c = checks.get(el);
    if (c && c.key === key) {
      if (c.status === "done") note(el, checked.get(key));
      return; // queued, sent, or failed: tried again on "describe now"
    }
    forgetCheck(el);
    const known = checked.get(key);
    if (known) {
      checks.set(el, { key, status: "done" });
      note(el, known);
      return;
    }
    checks.set(el, { key, status: "queued" });
    const id = "c" + nextId++;
    const alt = globalThis.AltCapCaptionText.tidyText(verdict.alt);
    queue.set(id, { id, el, url: verdict.url, alt, key, check: true, priority: PRIORITY.check, order: nextId });
    scheduleFlush(FLUSH_DELAY_MS);
  }

  /** Whether a check item is still the element's current one (same image, same alt). */
  function checkCurrent(item, status) {
    const c = checks.get(item.el);
    return Boolean(c) && c.key === item.key && c.status === status;
  }

  /** A check's answer: kept (per image and alt), its note added when "suspect". An answer
   * without alt_check (a server that cannot check, or one that is not AltCap) stops the
   * checks on this page. */
  function onChecked(item, r) {
    if (r.alt_check) {
      const answer = { verdict: r.alt_check.verdict, caption: r.caption };
      if (typeof r.confident === "boolean") answer.confident = r.confident;
      checked.set(item.key, answer);
    } else {
      checked.set(item.key, { verdict: null });
      checksUnavailable = true;
    }
    if (!checkCurrent(item, "sent")) return; // the image or its alt changed meanwhile
    checks.get(item.el).status = "done";
    note(item.el, checked.get(item.key));
  }

  /** Add the note for a checked alt (only for "suspect"), unless the page wrote an
   * aria-description of its own. */
  function note(el, answer) {
    const text = globalThis.AltCapCaptionText.mismatchNote(answer);
    if (!text || !config.checkAlt || !started || !showing || !el.isConnected) return;
    const current = el.getAttribute(NOTE);
    if (current !== null && current !== noted.get(el)) return; // the page's own
    if (!noted.has(el)) {
      counts.suspect++;
      reportCountsSoon();
    }
    noted.set(el, text);
    el.setAttribute(NOTE, text);
    el.setAttribute(NOTE_MARK, "");
  }

  /** Take our note away, leaving an aria-description the page wrote since. */
  function unnote(el) {
    if (!noted.has(el)) return;
    if (el.getAttribute(NOTE) === noted.get(el)) el.removeAttribute(NOTE);
    el.removeAttribute(NOTE_MARK);
    noted.delete(el);
    counts.suspect--;
    reportCountsSoon();
  }

  function unnoteAll() {
    for (const el of deepQueryAll("[" + NOTE_MARK + "]")) unnote(el);
  }

  /** The image or its alt changed: its check (and note) no longer applies. */
  function forgetCheck(el) {
    unnote(el);
    checks.delete(el);
    for (const [id, item] of queue) if (item.el === el && item.check) queue.delete(id);
  }

  /** The check switched on or off in the options (the service worker tells every frame). */
  function setCheckAlt(on) {
    config.checkAlt = on;
    if (on) {
      for (const el of visible) if (D.isCandidate(el)) consider(el, PRIORITY.visible);
      return;
    }
    unnoteAll();
    for (const [id, item] of queue) {
      if (!item.check) continue;
      queue.delete(id);
      checks.delete(item.el);
    }
  }

  /** `node` (a document, element or shadow root) and every shadow root inside it,
   * nested ones included: the trees a selector has to be run in, since querySelectorAll
   * stops at shadow boundaries. Custom elements still waiting for their shadow root are
   * noted for a later look. */
  function trees(node) {
    return Array.from(treesOf(node, never));
  }

  /** trees(), one tree at a time, each yielded once every element in it has been looked at
   * for a shadow root of its own; between two elements, yields null when `pause()` says so
   * (the caller's time slice is used up). */
  function* treesOf(node, pause) {
    const found = [node];
    for (let i = 0; i < found.length; i++) {
      const tree = found[i];
      if (tree.nodeType === 1) hostOf(tree, found);
      if (typeof tree.querySelectorAll === "function") {
        for (const el of tree.querySelectorAll("*")) {
          hostOf(el, found);
          if (pause()) yield null;
        }
      }
      yield tree;
    }
  }

  function never() {
    return false;
  }

  function hostOf(el, found) {
    const root = shadowRootOf(el);
    if (root) found.push(root);
    else if (started && String(el.tagName).includes("-")) notePending(el);
  }

  /** The element's shadow root, closed ones included where the browser hands them to
   * extensions; null if it has none (or the browser does not). Closed roots are looked for
   * only on the elements allowed to host one: custom elements, and the built-in ones of
   * SHADOW_HOSTS when they are empty. A shadow host shows its shadow tree instead of its
   * own children, so a built-in host is made empty (a widget's <div>); asking the browser
   * about every div and span of a page was ~40 ms of the first scan of 20,000 elements. */
  function shadowRootOf(el) {
    if (el.shadowRoot) return el.shadowRoot;
    const tag = String(el.tagName).toLowerCase();
    if (!tag.includes("-") && (!SHADOW_HOSTS.has(tag) || !isEmpty(el))) return null;
    try {
      const dom = chrome.dom;
      if (dom && typeof dom.openOrClosedShadowRoot === "function") {
        return dom.openOrClosedShadowRoot(el) || null; // Chrome
      }
      return el.openOrClosedShadowRoot || null; // Firefox
    } catch {
      return null; // an element the browser will not open
    }
  }

  /** No child elements and no text but whitespace. */
  function isEmpty(el) {
    return !el.firstElementChild && !/\S/.test(String(el.textContent || ""));
  }

  /** querySelectorAll over the document and its shadow roots (watching any root not
   * seen before: one attached late to a plain element, found when the user asks). */
  function deepQueryAll(selector) {
    const out = [];
    for (const tree of trees(document)) {
      if (tree.nodeType === 11) watchRoot(tree);
      out.push(...tree.querySelectorAll(selector));
    }
    return out;
  }

  /** Watch a shadow root as the document is watched: DOM changes (same observer), and load
   * and focus events, which do not leave a shadow tree or arrive retargeted to its host. */
  function watchRoot(root) {
    if (!mutations || watchedRoots.has(root)) return;
    watchedRoots.add(root);
    mutations.observe(root, OBSERVE);
    if (!listenedRoots.has(root) && typeof root.addEventListener === "function") {
      listenedRoots.add(root);
      root.addEventListener("load", onLoad, true); // no-ops once stopped
      root.addEventListener("focusin", onFocus, true);
    }
  }

  function notePending(el) {
    if (!pending.has(el)) pending.set(el, Date.now() + PENDING_FOR_MS);
    if (!pendingTimer) pendingTimer = setTimeout(guard(checkPending), PENDING_CHECK_MS);
  }

  function checkPending() {
    pendingTimer = 0;
    if (!started) {
      pending.clear();
      return;
    }
    const now = Date.now();
    for (const [el, until] of pending) {
      if (shadowRootOf(el)) {
        pending.delete(el);
        scan(el, PRIORITY.other);
      } else if (!el.isConnected || now > until) {
        pending.delete(el);
      }
    }
    if (pending.size) pendingTimer = setTimeout(guard(checkPending), PENDING_CHECK_MS);
  }

  // --- scanning, in slices ------------------------------------------------------------------
  // A scan looks at every element (for shadow roots) and assesses every image: about 2 µs an
  // element in a content script, so 100,000 elements would hold the page's main thread for
  // ~200 ms at once. Scans run in slices of SLICE_MS instead, the page getting its turn in
  // between; a small scan (a few added nodes) still finishes at once, within its first slice.

  /** Look at `node` and everything in it (shadow roots included): queue what needs a caption. */
  function scan(node, priority) {
    if (!node || (node.nodeType !== 1 && node.nodeType !== 11)) return;
    scans.push(scanSteps(node, priority));
    if (!scanning && !scanTimer) runScans();
  }

  function* scanSteps(node, priority) {
    for (const tree of treesOf(node, sliceUsedUp)) {
      if (!tree) {
        yield;
        continue;
      }
      if (tree.nodeType === 11) watchRoot(tree);
      else if (D.isCandidate(tree)) consider(tree, priority);
      if (typeof tree.querySelectorAll === "function") {
        for (const el of tree.querySelectorAll(SELECTOR)) {
          consider(el, priority);
          if (sliceUsedUp()) yield;
        }
      }
    }
  }

  /** One slice: the waiting scans, oldest first, until they are done or the slice is over. */
  function runScans() {
    scanTimer = 0;
    scanning = true;
    sliceEnd = now() + SLICE_MS;
    try {
      while (scans.length) {
        if (!scans[0].next().done) break; // paused: the slice is over
        scans.shift();
      }
    } finally {
      scanning = false; // a scan that threw is done: the next slice drops it and goes on
      if (scans.length) scanTimer = setTimeout(guard(runScans), 0);
    }
  }

  /** Checked between elements; the clock is read every SLICE_CHECK_EVERY of them. */
  function sliceUsedUp() {
    return ++sliceTicks % SLICE_CHECK_EVERY === 0 && now() >= sliceEnd;
  }

  function now() {
    return typeof performance === "object" ? performance.now() : Date.now();
  }

  // --- writing and restoring ----------------------------------------------------------------

  function stillNeedsIt(el, url) {
    if (!el.isConnected || D.imageUrl(el) !== url) return false;
    if (el.hasAttribute(D.MARK)) return written.has(el); // ours: replace our own text only
    const verdict = D.classifyText(el);
    if (verdict === "decorative") return D.isEmptyLink(el); // alt="" naming nothing else
    return verdict === "missing" || verdict === "meaningless";
  }

  /** Write prefix + alt as el's description (alt, or an ARIA image's aria-label);
   * `described`: {caption, alt, alt_from, language?}. `explicit`: the user asked for this
   * one image (context menu), so it is written even where AltCap is not running on the page,
   * and even a thin banner's caption. A thin banner otherwise gets its own text only: with a
   * caption alone it is left as it was, counted nowhere (neither described nor failed). */
  function write(el, url, described, explicit = false) {
    const s = info(el);
    s.url = url;
    if (explicit) s.textOnly = false;
    const unwanted = s.textOnly && !globalThis.AltCapCaptionText.holdsText(described.alt_from);
    if (!showing || (!started && !explicit) || unwanted || !stillNeedsIt(el, url)) {
      setStatus(el, null);
      return false;
    }
    if (globalThis.AltCapCaptionText.withholds(described)) {
      // The server does not believe the caption this alt rests on: nothing is written (and
      // what we wrote before goes), so that nothing invented is read out.
      if (written.has(el)) {
        written.delete(el);
        D.restoreOriginal(el);
      }
      setStatus(el, "unsure");
      return false;
    }
    const text = spoken(described);
    written.set(el, text); // before the write, so the observer knows the change is ours
    D.applyCaption(el, text, described.language);
    setStatus(el, "described");
    return true;
  }

  /** Put every alt we wrote back as the page had it. */
  function restoreAll() {
    for (const el of deepQueryAll("[" + D.MARK + "]")) {
      if (!written.has(el)) continue;
      written.delete(el);
      D.restoreOriginal(el);
    }
  }

  function hideCaptions() {
    showing = false;
    restoreAll();
    unnoteAll();
    reportCountsSoon();
  }

  function showCaptions() {
    showing = true;
    if (!started) return;
    for (const el of deepQueryAll(SELECTOR)) {
      const s = state.get(el);
      if (s && s.status === "described") {
        const described = captions.get(s.url);
        if (!described || (!write(el, s.url, described) && s.status !== "unsure")) setStatus(el, null);
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
    if (item.check) return PRIORITY.check;
    const focused = document.activeElement;
    // The focused element, or an image inside it (through shadow roots: focus inside one is
    // reported on its host).
    for (let node = item.el; focused && node; node = node.parentNode || node.host) {
      if (node === focused) return PRIORITY.focused;
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
      if (item.check) checks.get(item.el).status = "sent";
      else setStatus(item.el, "sent");
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
    const images = batch.map((item) => {
      const image = { id: item.id, url: item.url };
      if (item.data) image.data = item.data;
      if (item.check) image.alt = item.alt; // the author's alt, to check (the opt-in)
      return image;
    });
    const answer = await send({ type: "describe", images });
    const results = answer && Array.isArray(answer.results) ? answer.results : null;
    const byId = new Map((results || []).map((r) => [r && r.id, r]));
    const asked = [];
    for (const item of batch) {
      const r = byId.get(item.id);
      if (item.check && r && typeof r.alt === "string" && r.alt) {
        onChecked(item, r);
      } else if (r && typeof r.alt === "string" && r.alt) {
        const described = answerOf(r);
        captions.set(item.url, described);
        write(item.el, item.url, described);
      } else if (r && r.error && mayRead(item, r.error.code)) {
        asked.push(sendBytes(item, r.error.code));
      } else {
        fail(item);
      }
    }
    await Promise.all(asked);
  }

  /** Whether to answer the worker's request for the image itself (`code`): once each. */
  function mayRead(item, code) {
    if (!P) return false; // page-image.js not injected: no bytes
    if (code === "needs_bytes") return !item.data;
    return code === "needs_canvas" && !item.snapshot;
  }

  /** Queue `item` again with the data the worker asked for, read as the page may read it; a
   * failure where the page may not. */
  async function sendBytes(item, code) {
    const data = await P.imageData(item, code);
    const s = info(item.el);
    const current = item.check ? checkCurrent(item, "sent") : s.status === "sent" && s.url === item.url;
    if (!current) return; // the page moved on meanwhile
    if (!data) {
      fail(item);
      return;
    }
    if (item.check) checks.get(item.el).status = "queued";
    else setStatus(item.el, "queued");
    queue.set(item.id, { ...item, data, snapshot: P.isSnapshot(data) });
    scheduleFlush(0);
  }

  function fail(item) {
    if (item.check) {
      if (checkCurrent(item, "sent")) checks.get(item.el).status = "failed"; // tried again later
      return;
    }
    const s = info(item.el);
    if (s.status !== "described") setStatus(item.el, s.textOnly ? "banner-failed" : "failed");
  }

  // --- announcements (screen readers) -------------------------------------------------------

  /** Say `text` through a polite live region; `language`: its language tag (AltCap's own
   * messages are English, whatever the page's language). */
  function announce(text, language = "en") {
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
        region.setAttribute("lang", language);
        region.textContent = text;
      }),
      150,
    );
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  /** ", 2 with no confident description, 1 could not be described" (the parts that apply). */
  function summaryTail() {
    const unsure = counts.unsure ? `, ${counts.unsure} with no confident description` : "";
    const failed = counts.failed ? `, ${counts.failed} could not be described` : "";
    return unsure + failed;
  }

  /** "1 description may not match" when the opt-in check noted any; "" otherwise. */
  function suspectPart() {
    if (!config.checkAlt || !counts.suspect) return "";
    return counts.suspect === 1 ? "1 description may not match" : `${counts.suspect} descriptions may not match`;
  }

  /** What "describe now" ends with: "AltCap: 3 images described, 1 with no confident
   * description, 1 description may not match." (the parts that apply). */
  function summary() {
    const suspect = suspectPart();
    if (!counts.found) {
      const none = "AltCap: no images without a description on this page";
      return suspect ? `${none}; ${suspect}.` : `${none}.`;
    }
    return `AltCap: ${plural(counts.described, "image")} described${summaryTail()}${suspect ? ", " + suspect : ""}.`;
  }

  /** The summary, once nothing is queued or in flight: the checks of authors' alts in view
   * included, so that the ones that may not match are counted in it. */
  function announceSummaryIfIdle() {
    if (!summaryPending || queue.size || inFlight) return;
    summaryPending = false;
    announce(summary());
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
      if (written.has(el)) {
        // No image any more (the page took its role="img" away): our description goes.
        written.delete(el);
        D.restoreOriginal(el);
        setStatus(el, null);
      }
      if (name === "aria-hidden") scan(el, PRIORITY.other); // a container was shown to AT
      return;
    }
    const s = info(el);
    const ours = written.get(el);
    if (name === D.textAttribute(el)) {
      if (ours !== undefined && el.getAttribute(name) === ours) return; // our own write
      forgetCheck(el); // a check of the author's alt was of the old one
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
      forgetCheck(el);
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
    // The element itself, not its shadow host (focusin is retargeted at shadow boundaries).
    const path = typeof event.composedPath === "function" ? event.composedPath() : [];
    const el = path[0] || event.target;
    if (!el || el.nodeType !== 1) return;
    if (D.isCandidate(el)) consider(el, PRIORITY.focused);
    else {
      for (const tree of trees(el)) {
        if (typeof tree.querySelectorAll !== "function") continue;
        for (const img of tree.querySelectorAll(SELECTOR)) consider(img, PRIORITY.focused);
      }
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
    started = true; // `showing` stays as it is: a frame may start hidden (see "hello")
    visibility = new IntersectionObserver(onVisibility, { rootMargin: "256px" });
    observed = new WeakSet();
    watchedRoots = new WeakSet();
    mutations = new MutationObserver(onMutations);
    mutations.observe(document.documentElement, OBSERVE);
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
    pending.clear();
    clearTimeout(pendingTimer);
    pendingTimer = 0;
    scans.length = 0; // the rest of an unfinished scan: start() scans again
    clearTimeout(scanTimer);
    scanTimer = 0;
    document.removeEventListener("load", onLoad, true);
    document.removeEventListener("focusin", onFocus, true);
    for (const item of queue.values()) {
      if (item.check) checks.delete(item.el);
      else setStatus(item.el, null);
    }
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
      unsure: counts.unsure,
      suspect: counts.suspect,
    };
  }

  /** `quiet`: another frame of the tab, asked along with the top frame, whose announcements
   * are the ones the user hears. */
  async function describeNow(quiet = false) {
    await ready;
    if (!config.consented) {
      if (quiet) return { ok: false, error: "no_consent" };
      announce("AltCap: nothing was sent. Agree to the privacy notice in AltCap's options first.");
      return { ok: false, error: "no_consent" };
    }
    const wasShowing = showing;
    start();
    if (!wasShowing) showCaptions();
    // Try the failures again: the server may be back.
    for (const el of deepQueryAll(SELECTOR)) {
      const s = state.get(el);
      if (s && (s.status === "failed" || s.status === "banner-failed")) setStatus(el, null);
      const c = checks.get(el);
      if (c && c.status === "failed") checks.delete(el);
      consider(el, visible.has(el) ? PRIORITY.visible : PRIORITY.other);
    }
    const waiting = [...queue.values()].filter((item) => !item.check).length; // checks go unsaid
    summaryPending = !quiet;
    if (quiet) return { ok: true, ...status() };
    if (waiting) announce(`AltCap: describing ${plural(waiting, "image")}.`);
    else announceSummaryIfIdle(); // now, or once the checks in view are answered
    return { ok: true, ...status() };
  }

  function findImage(srcUrl) {
    const matches = (el) => el && el.isConnected && (D.imageUrl(el) === srcUrl || el.src === srcUrl);
    if (matches(lastContextTarget)) return lastContextTarget;
    for (const el of deepQueryAll(SELECTOR)) if (matches(el)) return el;
    return null;
  }

  /** "Describe this image" from the context menu: caption it, write it if the image has no
   * author text, and announce it either way. */
  async function describeTarget(srcUrl) {
    await ready;
    const el = findImage(srcUrl);
    const url = el ? D.imageUrl(el) || srcUrl : srcUrl;
    let described = captions.get(url);
    let error = null;
    if (!described) {
      const item = { id: "t" + nextId++, url, el };
      let answer = await send({ type: "describe", images: [{ id: item.id, url }] });
      let r = answer && Array.isArray(answer.results) ? answer.results[0] : null;
      while (r && r.error && mayRead(item, r.error.code)) {
        const data = await P.imageData(item, r.error.code);
        if (!data) break;
        Object.assign(item, { data, snapshot: P.isSnapshot(data) });
        answer = await send({ type: "describe", images: [{ id: item.id, url, data }] });
        r = answer && Array.isArray(answer.results) ? answer.results[0] : null;
      }
      if (r && typeof r.alt === "string" && r.alt) {
        described = answerOf(r);
        captions.set(url, described);
      } else {
        error = (r && r.error) || (answer && answer.error) || { code: "no_answer" };
      }
    }
    if (!described) {
      const reason = FAILURES[error.code];
      announce(`AltCap could not describe this image${reason ? ": " + reason : ""}.`);
      return { ok: false, error };
    }
    if (el) write(el, url, described, true);
    if (globalThis.AltCapCaptionText.withholds(described)) {
      // Asked or not, nothing invented is read out.
      announce("AltCap has no confident description of this image.");
      return { ok: false, error: { code: "not_confident", message: "no confident description" } };
    }
    announce(spoken(described), described.language);
    return { ok: true, caption: described.caption, alt: described.alt };
  }

  /** What is kept of a caption answer, cleaned by caption-text.js: {caption, alt, alt_from,
   * confident?, language?} (alt: the words to write, the caption unless the server's alt says more;
   * language: a tag the server gave, checked by the service worker). */
  function answerOf(r) {
    const described = { caption: r.caption, alt: r.alt, alt_from: r.alt_from };
    if (typeof r.confident === "boolean") described.confident = r.confident; // false: withheld
    if (typeof r.language === "string" && r.language) described.language = r.language;
    return described;
  }

  /** What a screen reader gets for `described`: its alt after the mark that fits it,
   * "Appears to say: " for an image's own text, "Appears to be: " otherwise. */
  function spoken(described) {
    return D.captionText(globalThis.AltCapCaptionText.prefixFor(config, described.alt_from), described.alt);
  }

  /** The site was switched off: put the page back and stop (captions stay cached, so asking
   * again later is instant). */
  function restorePage() {
    hideCaptions();
    stop();
    for (const el of deepQueryAll(SELECTOR)) {
      const s = state.get(el);
      if (s && s.status) setStatus(el, null);
    }
    showing = true;
    summaryPending = false;
  }

  /** `want`: true/false switches to that state (the service worker keeps every frame of a
   * tab the same); anything else flips it. */
  function toggle(want) {
    const show = typeof want === "boolean" ? want : !showing;
    if (show === showing) return showing;
    if (show) showCaptions();
    else hideCaptions();
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
          return reply(describeNow(message.quiet === true));
        case "describe-target":
          if (typeof message.srcUrl !== "string") return false;
          return reply(describeTarget(message.srcUrl));
        case "toggle":
          sendResponse({ showing: toggle(message.showing), ...status() });
          return false;
        case "restore":
          restorePage();
          sendResponse(status());
          return false;
        case "check-alt":
          setCheckAlt(message.on === true);
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

  // A frame that is removed (or a page put in the back/forward cache) stops counting in the
  // tab's totals; a page taken back out of that cache counts again.
  if (typeof globalThis.addEventListener === "function") {
    globalThis.addEventListener(
      "pagehide",
      guard(() => send({ type: "counts", found: 0, described: 0, failed: 0, unsure: 0, suspect: 0 })),
    );
    globalThis.addEventListener(
      "pageshow",
      guard((event) => {
        if (event && event.persisted) send({ type: "counts", ...counts });
      }),
    );
  }

  const ready = send({ type: "hello" }).then(
    guard((answer) => {
      if (!answer || typeof answer !== "object" || answer.error) return;
      config = { ...config, ...answer };
      D.setMeaninglessWords(answer.words, answer.stopwords);
      if (answer.showing === false) showing = false; // hidden in this tab's other frames
      if (config.auto) start();
    }),
  );
})();
